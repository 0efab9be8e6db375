package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	return testenv.SelfSignedCert(t)
}

// TestServeHTTPSAndOperationalEndpoints runs the collector over HTTPS and
// checks the operational endpoints and the error for unknown paths.
func TestServeHTTPSAndOperationalEndpoints(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	certFile, keyFile, pool := selfSigned(t)
	topic := testenv.Unique("e2e-tls")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "")
	cfg, _ := os.ReadFile(cfgPath)
	cfg = bytes.Replace(cfg, []byte("http:\n"), []byte(fmt.Sprintf("http:\n  tls:\n    cert_file: %s\n    key_file: %s\n", certFile, keyFile)), 1)
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	cmd := startCmd(t, cfgPath, logs)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + addr
	testenv.Eventually(t, 60*time.Second, func() error {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("readyz %d: %s", resp.StatusCode, b)
		}
		return nil
	})
	// Plain HTTP to the TLS listener is refused (Go's server answers 400).
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served while TLS is configured")
		}
	}
	body, _ := json.Marshal([]any{event("tls-1", "key-tls")})
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 || !strings.Contains(string(b), `"accepted":1`) {
		t.Fatalf("POST over TLS: %d %s", resp.StatusCode, b)
	}
	// The query role serves the event's usage (from raw until the next
	// aggregation) to the admin token, and limits answer for keys only.
	testenv.Eventually(t, 30*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/usage?api_key_id=key-tls&from="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), nil)
		req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"requests":1`) {
			return fmt.Errorf("usage: %d %s", resp.StatusCode, b)
		}
		return nil
	})
	req, _ = http.NewRequest(http.MethodGet, base+"/v1/limits/key-tls", nil)
	req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("limits of a key outside the (empty) catalogue: %d", resp.StatusCode)
	}
	resp, err = client.Get(base + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), "no such endpoint") {
		t.Fatalf("unknown path: %d %s", resp.StatusCode, b)
	}
	resp, err = client.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"meterline_collector_events_accepted_total 1", "meterline_sink_events_stored_total", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(string(b), m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
	stopGracefully(t, cmd)
	if !strings.Contains(logs.String(), "url=https://") {
		t.Errorf("log does not announce the https URL:\n%s", logs.String())
	}
}
