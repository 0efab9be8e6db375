//go:build unix

package ingest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/ship"
)

// envCaddy is the caddy binary (2.6 or later) that deploy/test.sh exports.
const envCaddy = "METERLINE_TEST_CADDY"

// caddyGateway is caddy running deploy/caddy/Caddyfile in the foreground.
type caddyGateway struct {
	URL       string
	AccessLog string // the JSON access log (file output)
	cmd       *exec.Cmd
	exited    chan struct{}
	log       testenv.SyncBuffer
}

// startCaddyGateway runs the example Caddyfile; with shipListen set, its log
// output is `output net` to that address instead of the file, as the
// Caddyfile's comment says.
func startCaddyGateway(t *testing.T, bin, upstream, shipListen string) *caddyGateway {
	t.Helper()
	dir := t.TempDir()
	listen := "127.0.0.1:" + testenv.FreePort(t)
	g := &caddyGateway{URL: "http://" + listen, AccessLog: filepath.Join(dir, "access.log"), exited: make(chan struct{})}
	src, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "caddy", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(src)
	if shipListen != "" {
		const out = "output file {$METERLINE_ACCESS_LOG}"
		if strings.Count(conf, out) != 1 {
			t.Fatalf("Caddyfile: no single %q to replace by output net", out)
		}
		conf = strings.Replace(conf, out, "output net {$METERLINE_SHIP_LISTEN}", 1)
	}
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin, "run", "--config", cfg, "--adapter", "caddyfile")
	g.cmd.Env = append(os.Environ(),
		"METERLINE_LISTEN="+listen, "METERLINE_UPSTREAM="+upstream, "METERLINE_ACCESS_LOG="+g.AccessLog,
		"METERLINE_SHIP_LISTEN="+shipListen, "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	g.cmd.Stdout, g.cmd.Stderr = &g.log, &g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		if t.Failed() {
			t.Logf("caddy log:\n%s", g.log.String())
		}
	})
	testenv.Eventually(t, 30*time.Second, func() error {
		select {
		case <-g.exited:
			t.Fatalf("caddy exited at start-up:\n%s", g.log.String())
		default:
		}
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	return g
}

// caddyShipConfig is deploy/caddy/meterline-ship.yaml's mapping, pointed at
// the test's collector and log.
func caddyShipConfig(t *testing.T, collector, accessLog, gateway string) ship.CaddyConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "caddy", "meterline-ship.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ship.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ship.LoadCaddyConfig(path, func(string) string { return tokIngest })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoint, cfg.File, cfg.Gateway = collector, accessLog, gateway
	cfg.PositionFile = accessLog + ".meterline-pos"
	cfg.FlushInterval, cfg.PollInterval, cfg.BatchSize = 200*time.Millisecond, 50*time.Millisecond, 50
	return cfg
}

// runShipper runs a shipper until the test ends (or stop is called).
func runShipper(t *testing.T, cfg ship.CaddyConfig, reg *prometheus.Registry) (stop func() error) {
	t.Helper()
	s, err := ship.NewCaddyShipper(cfg, reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	var result error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case result = <-done:
			case <-time.After(30 * time.Second):
				result = fmt.Errorf("the shipper did not stop within 30s")
			}
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// caddyRequests are gwRequests with the units header passed on: Caddy logs
// the response headers the client got, so it cannot hide X-Units.
func caddyRequests(n int, keys []string, tag string) []*gwRequest {
	reqs := gwRequests(n, keys, tag)
	for _, r := range reqs {
		r.unitsShown = true
	}
	return reqs
}

// checkStoredLikeSent compares the stored events with the responses.
func checkStoredLikeSent(t *testing.T, stored []storedGatewayEvent, reqs []*gwRequest, gwName string, start, end time.Time) {
	t.Helper()
	byID := map[string]*gwRequest{}
	for _, r := range reqs {
		byID[r.id] = r
	}
	for _, e := range stored {
		r := byID[e.id]
		if r == nil || r.key == "" {
			t.Errorf("stored event %s matches no metered response", e.id)
			continue
		}
		route, units := r.want()
		wantUA := r.userAgent
		if len(wantUA) > 512 {
			wantUA = "a" + strings.Repeat("é", 255)
		}
		switch {
		case e.key != r.key || int(e.status) != r.status || e.method != r.method:
			t.Errorf("%s: stored %s %s %d, the client sent %s %s and saw %d", e.id, e.key, e.method, e.status, r.key, r.method, r.status)
		case e.route != route || e.units != units:
			t.Errorf("%s %s: stored route %q units %v, want %q %v", e.id, r.path, e.route, e.units, route, units)
		case e.gateway != gwName:
			t.Errorf("%s: gateway %q, want %q", e.id, e.gateway, gwName)
		case e.clientIP != "127.0.0.0":
			t.Errorf("%s: stored client_ip %q, want 127.0.0.0 (anonymised)", e.id, e.clientIP)
		case e.userAgent != wantUA:
			t.Errorf("%s: stored user agent of %d bytes, want %d", e.id, len(e.userAgent), len(wantUA))
		case e.reqBytes != uint64(r.body):
			t.Errorf("%s: request_bytes %d for a body of %d bytes", e.id, e.reqBytes, r.body)
		case e.respBytes != uint64(r.respBody) || e.latency < 0:
			t.Errorf("%s: response_bytes %d for a response body of %d bytes, latency_ms %v", e.id, e.respBytes, r.respBody, e.latency)
		case e.time.Before(start.Add(-2*time.Second)) || e.time.After(end.Add(2*time.Second)):
			t.Errorf("%s: time %s is not within the run (%s to %s)", e.id, e.time, start, end)
		}
	}
}

func meteredCount(reqs []*gwRequest) int {
	n := 0
	for _, r := range reqs {
		if r.key != "" {
			n++
		}
	}
	return n
}

// TestGatewayCaddyShipsEveryRequestOnce runs Debian's caddy with the
// example Caddyfile in front of a test API and the shipper following its
// access log with the example configuration: every metered request is
// stored exactly once, with the route its rules name, and counted by
// GET /v1/usage. Hostile requests: a key with quotes and backslashes is
// stored as sent; a key over 128 bytes is rejected by the collector and
// counted; units that are not a number and a header too large for a log
// line (over max_line_bytes) make lines that are counted and skipped.
func TestGatewayCaddyShipsEveryRequestOnce(t *testing.T) {
	bin := testenv.Require(t, envCaddy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	g := startCaddyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), "")
	gwName := testenv.Unique("caddy")
	reg := prometheus.NewRegistry()
	runShipper(t, caddyShipConfig(t, p.Collector, g.AccessLog, gwName), reg)

	prefix := testenv.Unique("cakey")
	keys := []string{prefix + "-a", prefix + "-b", prefix + "-c"}
	start := time.Now()
	reqs := caddyRequests(200, keys, "c")
	quoted := &gwRequest{key: prefix + `-"q\`, method: http.MethodGet, path: "/v1/pets/q", userAgent: `say "hi" \ {}`, unitsShown: true}
	hostile := []*gwRequest{
		{key: prefix + "-" + strings.Repeat("k", 140), method: http.MethodGet, path: "/v1/pets/long", userAgent: "t", unitsShown: true},
		{key: prefix + "-a", method: http.MethodGet, path: "/v1/weird", userAgent: "t", unitsShown: true},
		{key: prefix + "-a", method: http.MethodGet, path: "/v1/pets/huge-ua", userAgent: strings.Repeat("u", 80<<10), unitsShown: true},
	}
	sendThrough(t, g.URL, append(append(reqs, quoted), hostile...), 8)
	end := time.Now()

	metered := meteredCount(reqs) + 1
	waitGatewayStored(t, p.db, prefix, metered)
	stored := storedGatewayEvents(t, p.db, prefix)
	distinct := queryUint64(t, p.db, "SELECT uniqExact(id) FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	if len(stored) != metered || distinct != uint64(metered) {
		t.Fatalf("stored %d (FINAL) with %d distinct ids, want %d", len(stored), distinct, metered)
	}
	checkStoredLikeSent(t, stored, append(reqs, quoted), gwName, start, end)
	p.waitUsage(t, start.Add(-time.Minute), wantUsage(reqs))
	waitFor(t, 30*time.Second, func() error {
		if n := gathered(t, reg, "meterline_ship_events_rejected_total", ""); n != 1 {
			return fmt.Errorf("%v events rejected by the collector, want 1 (the long key)", n)
		}
		return nil
	})
	skipped := map[string]float64{}
	for _, r := range []string{"malformed", "not_access", "invalid", "oversized", "unmetered"} {
		skipped[r] = gathered(t, reg, "meterline_ship_lines_skipped_total", r)
	}
	want := map[string]float64{"malformed": 0, "not_access": 0, "invalid": 1, "oversized": 1, "unmetered": float64(len(reqs) + 1 - metered)}
	if fmt.Sprint(skipped) != fmt.Sprint(want) {
		t.Errorf("skipped lines by reason %v, want %v", skipped, want)
	}
	t.Logf("%d requests, %d metered, stored once each and counted by /v1/usage; skipped %v", len(reqs)+4, metered, skipped)
}

// TestGatewayCaddyShipperSkipsMalformedLines ships a log of Caddy's own
// entries with hostile lines between them (not JSON, cut short, another
// logger's, values out of range, a line over max_line_bytes, deep
// nesting): each is counted under its reason and skipped, and every entry
// around them is stored once.
func TestGatewayCaddyShipperSkipsMalformedLines(t *testing.T) {
	bin := testenv.Require(t, envCaddy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	g := startCaddyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), "")
	prefix := testenv.Unique("camal")
	reqs := caddyRequests(30, []string{prefix + "-a"}, "m")
	sendThrough(t, g.URL, reqs, 2)
	var entries []string
	waitFor(t, 30*time.Second, func() error {
		b, err := os.ReadFile(g.AccessLog)
		if err != nil {
			return err
		}
		entries = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(entries) != len(reqs) {
			return fmt.Errorf("%d entries in the access log, want %d", len(entries), len(reqs))
		}
		return nil
	})
	k := `"X-Api-Key-Id":["` + prefix + `-a"]`
	garbage := []string{
		"not json at all",
		`{"level":"info","msg":"a log line of another logger"}`,
		`{"request":{"headers":{` + k + `}},"status":"two hundred","ts":1,"duration":0.1}`,
		`{"request":{"headers":{` + k + `}},"status":700,"ts":1796660000,"duration":0.1}`,
		`{"request":{"headers":{` + k + `}},"status":200,"ts":-5,"duration":0.1}`,
		`{"request":{"headers":{` + k + `}},"status":200,"ts":1e300,"duration":0.1}`,
		`{"request":{"headers":{` + k + `}},"status":200,"ts":1796660000,"duration":-3}`,
		`{"request":` + strings.Repeat(`{"a":`, 5000) + `1` + strings.Repeat("}", 5000) + `,"status":200}`,
		`{"truncated": "`,
		strings.Repeat("x", 100<<10),
		"\x00\xff\xfe{}",
	}
	var mixed strings.Builder
	for i, e := range entries {
		mixed.WriteString(e + "\n")
		if i < len(garbage) {
			mixed.WriteString(garbage[i] + "\n")
		}
	}
	logFile := filepath.Join(t.TempDir(), "mixed.log")
	if err := os.WriteFile(logFile, []byte(mixed.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	runShipper(t, caddyShipConfig(t, p.Collector, logFile, "edge-mixed"), reg)
	metered := meteredCount(reqs)
	waitGatewayStored(t, p.db, prefix, metered)
	waitFor(t, 30*time.Second, func() error {
		if n := gathered(t, reg, "meterline_ship_lines_read_total", ""); n != float64(len(entries)+len(garbage)) {
			return fmt.Errorf("%v lines read, want %d", n, len(entries)+len(garbage))
		}
		return nil
	})
	skipped := map[string]float64{}
	for _, r := range []string{"malformed", "not_access", "invalid", "oversized", "unmetered"} {
		skipped[r] = gathered(t, reg, "meterline_ship_lines_skipped_total", r)
	}
	// The deeply nested line is an entry without the key header: unmetered.
	want := map[string]float64{"malformed": 3, "not_access": 1, "invalid": 5, "oversized": 1, "unmetered": float64(len(reqs) - metered + 1)}
	if fmt.Sprint(skipped) != fmt.Sprint(want) {
		t.Errorf("skipped lines by reason %v, want %v", skipped, want)
	}
	if n := queryUint64(t, p.db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix); n != uint64(metered) {
		t.Errorf("%d events stored, want %d", n, metered)
	}
}

// TestGatewayCaddyShipperRestartsWithoutLossOrRepeat stops the shipper
// while the log grows and starts it again on the same position file,
// twice, and once corrupts the position file: it refuses to start, naming
// the file, until the file is removed, after which the log is shipped from
// its start again. Every request is stored once.
func TestGatewayCaddyShipperRestartsWithoutLossOrRepeat(t *testing.T) {
	bin := testenv.Require(t, envCaddy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	g := startCaddyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), "")
	cfg := caddyShipConfig(t, p.Collector, g.AccessLog, "edge-restart")
	cfg.BatchSize = 7

	prefix := testenv.Unique("carestart")
	keys := []string{prefix + "-a", prefix + "-b"}
	var all []*gwRequest
	for round := 0; round < 3; round++ {
		stop := runShipper(t, cfg, prometheus.NewRegistry())
		reqs := caddyRequests(60, keys, fmt.Sprintf("r%d", round))
		sendThrough(t, g.URL, reqs, 4)
		all = append(all, reqs...)
		// Stop while the shipper is mid-way: some batches are sent.
		waitFor(t, 30*time.Second, func() error {
			if n := queryUint64(t, p.db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix); n == 0 {
				return fmt.Errorf("nothing stored yet")
			}
			return nil
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	runShipper(t, cfg, prometheus.NewRegistry())
	metered := meteredCount(all)
	waitGatewayStored(t, p.db, prefix, metered)

	// A corrupt position file: a clear error, nothing shipped.
	if err := os.WriteFile(cfg.PositionFile, []byte("{\"inode\": garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ship.NewCaddyShipper(cfg, nil, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "is corrupt") || !strings.Contains(err.Error(), cfg.PositionFile) {
		t.Fatalf("Run with a corrupt position file: %v", err)
	}
	// Removed: the whole log is read again, and stored once.
	if err := os.Remove(cfg.PositionFile); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	stop := runShipper(t, cfg, reg)
	waitFor(t, 30*time.Second, func() error {
		if n := gathered(t, reg, "meterline_ship_events_sent_total", ""); n < float64(metered) {
			return fmt.Errorf("%v of %d events shipped again", n, metered)
		}
		return nil
	})
	_ = stop()
	rows := queryUint64(t, p.db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix)
	distinct := queryUint64(t, p.db, "SELECT uniqExact(id) FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	if rows != uint64(metered) || distinct != uint64(metered) {
		t.Fatalf("%d stored (FINAL), %d distinct ids, want %d each", rows, distinct, metered)
	}
	t.Logf("%d metered requests over 3 shipper restarts and a re-read of the whole log: stored once each", metered)
}

// TestGatewayCaddyShipsOverTCP: Caddy's `output net` to the shipper's
// listener; every request is stored once.
func TestGatewayCaddyShipsOverTCP(t *testing.T) {
	bin := testenv.Require(t, envCaddy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	listen := "127.0.0.1:" + testenv.FreePort(t)
	cfg := caddyShipConfig(t, p.Collector, "unused", "edge-tcp")
	cfg.File, cfg.PositionFile, cfg.Listen = "", "", listen
	reg := prometheus.NewRegistry()
	runShipper(t, cfg, reg)
	waitFor(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err
	})
	g := startCaddyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), listen)

	prefix := testenv.Unique("catcp")
	start := time.Now()
	reqs := caddyRequests(80, []string{prefix + "-a"}, "t")
	sendThrough(t, g.URL, reqs, 4)
	metered := meteredCount(reqs)
	waitGatewayStored(t, p.db, prefix, metered)
	checkStoredLikeSent(t, storedGatewayEvents(t, p.db, prefix), reqs, "edge-tcp", start, time.Now())
	if n := gathered(t, reg, "meterline_ship_events_sent_total", ""); n != float64(metered) {
		t.Errorf("%v events sent, want %d", n, metered)
	}
}

// gathered returns the value of a counter of reg, by name and (for a
// labelled one) the value of its one label.
func gathered(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mf, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mf {
		if m.GetName() != name {
			continue
		}
		for _, s := range m.GetMetric() {
			if label == "" || (len(s.GetLabel()) == 1 && s.GetLabel()[0].GetValue() == label) {
				return s.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestGatewayCaddyShipperRefusedToken: a token the collector does not
// know stops the shipper with an error that says so, and the position does
// not move: with the right token, every request is then shipped.
func TestGatewayCaddyShipperRefusedToken(t *testing.T) {
	bin := testenv.Require(t, envCaddy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	g := startCaddyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), "")
	prefix := testenv.Unique("catoken")
	reqs := caddyRequests(20, []string{prefix + "-a"}, "k")
	sendThrough(t, g.URL, reqs, 2)

	cfg := caddyShipConfig(t, p.Collector, g.AccessLog, "edge-token")
	cfg.Token = "not-a-token"
	s, err := ship.NewCaddyShipper(cfg, nil, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "401") {
		t.Fatalf("Run with an unknown token: %v", err)
	}
	if _, err := os.Stat(cfg.PositionFile); !os.IsNotExist(err) {
		t.Fatalf("a position was saved after the refusal: %v", err)
	}
	cfg.Token = tokIngest
	runShipper(t, cfg, prometheus.NewRegistry())
	waitGatewayStored(t, p.db, prefix, meteredCount(reqs))
}
