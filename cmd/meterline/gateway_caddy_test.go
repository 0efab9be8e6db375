//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// TestCaddyShipperKilledMidStream runs the whole path as processes: Debian's
// caddy with deploy/caddy/Caddyfile in front of a test API, `meterline ship
// caddy` following its access log, and `meterline serve`. While requests
// flow, the shipper is killed with SIGKILL twice and started again on the
// same position file; at the end GET /v1/usage counts every request once.
func TestCaddyShipperKilledMidStream(t *testing.T) {
	caddy := testenv.Require(t, "METERLINE_TEST_CADDY")
	testenv.Require(t, testenv.EnvChdb)
	brokers := strings.Join(testenv.KafkaBrokers(t), ",")
	cfgPath, addr := writeConfig(t, brokers, testenv.Unique("caddy-e2e"), "aggregate:\n  interval: 200ms\n  settle: 10ms\n")
	start(t, cfgPath, addr)

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/pets/") {
			fmt.Fprint(w, `{"name":"rex"}`)
			return
		}
		http.NotFound(w, r)
	}))
	defer upstream.Close()

	dir := t.TempDir()
	listen := "127.0.0.1:" + testenv.FreePort(t)
	accessLog := filepath.Join(dir, "access.log")
	gw := exec.Command(caddy, "run", "--config", filepath.Join(testenv.RepoRoot(), "deploy", "caddy", "Caddyfile"), "--adapter", "caddyfile")
	gw.Env = append(os.Environ(), "METERLINE_LISTEN="+listen, "METERLINE_UPSTREAM="+strings.TrimPrefix(upstream.URL, "http://"),
		"METERLINE_ACCESS_LOG="+accessLog, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	var gwLog testenv.SyncBuffer
	gw.Stdout, gw.Stderr = &gwLog, &gwLog
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = gw.Process.Kill(); _ = gw.Wait() }()
	testenv.Eventually(t, 30*time.Second, func() error {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err
	})

	shipCfg := filepath.Join(dir, "ship.yaml")
	if err := os.WriteFile(shipCfg, []byte(fmt.Sprintf(`endpoint: http://%s
gateway: caddy-e2e
file: %s
key_header: X-Api-Key-Id
routes: ["/v1/pets/{id}"]
batch_size: 5
flush_interval: 100ms
poll_interval: 20ms
`, addr, accessLog)), 0o600); err != nil {
		t.Fatal(err)
	}
	metricsAddr := "127.0.0.1:" + testenv.FreePort(t)
	var shipLog testenv.SyncBuffer
	startShipper := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(binPath, "ship", "caddy", "--config", shipCfg, "--metrics-addr", metricsAddr)
		cmd.Env = append(os.Environ(), "METERLINE_INGEST_TOKEN="+e2eIngestToken)
		cmd.Stdout, cmd.Stderr = &shipLog, &shipLog
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		return cmd, done
	}
	defer func() {
		if t.Failed() {
			t.Logf("shipper log:\n%s\ncaddy log:\n%s", shipLog.String(), gwLog.String())
		}
	}()

	key := testenv.Unique("caddy-e2e-key")
	const total = 300
	var sent atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 10 * time.Second}
		for i := 0; i < total; i++ {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/v1/pets/%d", listen, i), nil)
			req.Header.Set("X-Api-Key-Id", key)
			resp, err := client.Do(req)
			if err != nil {
				sendDone <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			sent.Add(1)
		}
		sendDone <- nil
	}()

	// Kill the shipper twice, each time after it shipped more than before.
	last := 0.0
	for kill := 0; kill < 2; kill++ {
		cmd, done := startShipper()
		testenv.Eventually(t, 60*time.Second, func() error {
			select {
			case <-done:
				t.Fatalf("the shipper exited:\n%s", shipLog.String())
			default:
			}
			v, err := metric(metricsAddr, "meterline_ship_events_sent_total")
			if err != nil {
				return err
			}
			if v == 0 {
				return fmt.Errorf("nothing shipped by this shipper yet")
			}
			last = v
			return nil
		})
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		t.Logf("shipper %d killed after shipping %v events (%d requests sent so far)", kill+1, last, sent.Load())
	}
	cmd, done := startShipper()
	if err := <-sendDone; err != nil {
		t.Fatal(err)
	}

	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	testenv.Eventually(t, 90*time.Second, func() error {
		q := url.Values{"api_key_id": {key}, "from": {from}, "window": {"total"}, "group_by": {"route,status_class"}}
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/usage?"+q.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var u struct {
			Rows []struct {
				Group     map[string]string      `json:"group"`
				Requests  int                    `json:"requests"`
				LatencyMS *struct{ P50 float64 } `json:"latency_ms"`
			} `json:"rows"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
			return err
		}
		if len(u.Rows) != 1 || u.Rows[0].Requests != total || u.Rows[0].Group["route"] != "/v1/pets/{id}" ||
			u.Rows[0].Group["status_class"] != "2xx" || u.Rows[0].LatencyMS == nil {
			return fmt.Errorf("usage %+v, want one row of %d requests on /v1/pets/{id}, 2xx, with a latency", u.Rows, total)
		}
		return nil
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the shipper did not stop within 30s of SIGTERM")
	}
	if cmd.ProcessState.ExitCode() != 0 {
		t.Errorf("the shipper exited with %d after SIGTERM", cmd.ProcessState.ExitCode())
	}
}
