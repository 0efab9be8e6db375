package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// runCLI runs the binary and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// postEvents sends events through the collector.
func postEvents(t *testing.T, addr string, evs []map[string]any) {
	t.Helper()
	body, _ := json.Marshal(evs)
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("POST /v1/events: %s", resp.Status)
	}
}

func customerEvents(prefix, customer string, n int) []map[string]any {
	var out []map[string]any
	for i := 0; i < n; i++ {
		e := event(fmt.Sprintf("%s-%d", prefix, i), customer+"-key")
		e["customer_id"] = customer
		out = append(out, e)
	}
	return out
}

// ndjsonCounts counts an export file's rows per table.
func ndjsonCounts(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct{ Table string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out[l.Table]++
	}
	return out
}

// TestPrivacyCLI drives export and erasure through the binary: over the API
// while serve runs, then directly on the engine once it is stopped, with
// bad flags on the way. Late events of the erased customer sent through the
// collector afterwards are not stored.
func TestPrivacyCLI(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("e2e-privacy")
	dir := t.TempDir()
	subject, other := testenv.Unique("subject"), testenv.Unique("other")
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 1000}
customers:
  - {id: %s, plan: starter, keys: [%s-key]}
  - {id: %s, plan: starter, keys: [%s-key]}
`, subject, subject, other, other)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`privacy:
  erased_refresh: 50ms
aggregate:
  interval: 200ms
  settle: 10ms
limits:
  catalogue_file: %s
  refresh: 100ms
`, catalogue))
	p, _ := start(t, cfgPath, addr)
	postEvents(t, addr, append(customerEvents("s", subject, 40), customerEvents("o", other, 25)...))
	testenv.Eventually(t, time.Minute, func() error {
		if n, err := metric(addr, "meterline_sink_events_stored_total"); err != nil || n < 65 {
			return fmt.Errorf("stored %v (%v)", n, err)
		}
		return nil
	})
	url := "http://" + addr
	limitUsed := func(key string) (float64, error) {
		req, _ := http.NewRequest("GET", url+"/v1/limits/"+key, nil)
		req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var l struct{ Used float64 }
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("limits: %s", resp.Status)
		}
		err = json.NewDecoder(resp.Body).Decode(&l)
		return l.Used, err
	}
	waitUsed := func(key string, want float64) {
		t.Helper()
		testenv.Eventually(t, time.Minute, func() error {
			if got, err := limitUsed(key); err != nil || got != want {
				return fmt.Errorf("%s used %v (%v), want %v", key, got, err, want)
			}
			return nil
		})
	}
	waitUsed(subject+"-key", 40)
	waitUsed(other+"-key", 25)
	out := filepath.Join(dir, "subject.ndjson")
	_, stderr, code := runCLI(t, "privacy", "export", "--url", url, "--token", e2eAdminToken, "--customer", subject, "--out", out)
	if code != 0 {
		t.Fatalf("remote export: exit %d: %s", code, stderr)
	}
	if got := ndjsonCounts(t, out); got["events"] != 40 || got["_summary"] != 1 {
		t.Fatalf("remote export: %v", got)
	}
	if !strings.Contains(stderr, "events") || !strings.Contains(stderr, "40") {
		t.Fatalf("remote export did not print the counts: %s", stderr)
	}
	// A zip through the API: its size, not a ROWS table of bytes.
	remoteZip := filepath.Join(dir, "subject.zip")
	_, stderr, code = runCLI(t, "privacy", "export", "--url", url, "--token", e2eAdminToken, "--customer", subject, "--out", remoteZip)
	if st, err := os.Stat(remoteZip); code != 0 || err != nil || strings.Contains(stderr, "ROWS") ||
		!strings.Contains(stderr, fmt.Sprintf("received %d bytes of zip", st.Size())) {
		t.Fatalf("remote zip export: exit %d: %s", code, stderr)
	}

	stdout, stderr, code := runCLI(t, "privacy", "erase", "--url", url, "--token", e2eAdminToken, "--customer", subject, "--reason", "ticket 1", "--yes")
	if code != 0 || !strings.Contains(stdout, ": done") || !strings.Contains(stdout, "events") {
		t.Fatalf("remote erase: exit %d\n%s%s", code, stdout, stderr)
	}
	// A gateway's late retry of the erased customer's events, beside new
	// traffic of the other customer.
	postEvents(t, addr, append(customerEvents("s", subject, 40), customerEvents("o2", other, 10)...))
	testenv.Eventually(t, time.Minute, func() error {
		if n, err := metric(addr, "meterline_sink_erased_events_dropped_total"); err != nil || n != 40 {
			return fmt.Errorf("dropped %v (%v)", n, err)
		}
		if n, err := metric(addr, "meterline_sink_events_stored_total"); err != nil || n < 75 {
			return fmt.Errorf("stored %v (%v)", n, err)
		}
		return nil
	})
	// The limits view no longer counts the erased customer's usage; the
	// other customer's is untouched.
	waitUsed(subject+"-key", 0)
	waitUsed(other+"-key", 35)
	stopGracefully(t, p)

	// Directly on the engine now that serve is stopped.
	if rows := sqlRows(t, cfgPath, "SELECT count() FROM events WHERE customer_id = '"+subject+"'"); rows[0] != "0" {
		t.Fatalf("erased customer has %s raw rows", rows[0])
	}
	zipOut := filepath.Join(dir, "other.zip")
	_, stderr, code = runCLI(t, "privacy", "export", "--config", cfgPath, "--customer", other, "--out", zipOut)
	if code != 0 || !strings.Contains(stderr, "100%") || !strings.Contains(stderr, "wrote "+zipOut) {
		t.Fatalf("local zip export: exit %d: %s", code, stderr)
	}
	zr, err := zip.OpenReader(zipOut)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range zr.File {
		if f.Name == "events.csv" {
			rc, _ := f.Open()
			var buf bytes.Buffer
			_, _ = buf.ReadFrom(rc)
			rc.Close()
			if lines := strings.Count(buf.String(), "\n"); lines != 36 {
				t.Fatalf("events.csv has %d lines, want header + 35", lines)
			}
		}
	}
	zr.Close()
	stdout, _, code = runCLI(t, "privacy", "erasures", "--config", cfgPath, "--customer", subject)
	if code != 0 || !strings.Contains(stdout, "done") || !strings.Contains(stdout, "e2e-admin") {
		t.Fatalf("erasures list: exit %d\n%s", code, stdout)
	}

	bad := []struct {
		args []string
		want string
	}{
		{[]string{"privacy"}, "Commands:"},
		{[]string{"privacy", "nosuch"}, "unknown command"},
		{[]string{"privacy", "export", "--config", cfgPath}, "customer_id"},
		{[]string{"privacy", "export", "--config", cfgPath, "--customer", other, "--format", "xml"}, "ndjson or zip"},
		{[]string{"privacy", "export", "--config", cfgPath, "--customer", "a\x01b"}, "control"},
		{[]string{"privacy", "export", "--config", cfgPath, "--customer", other, "--bogus"}, "flag provided but not defined"},
		{[]string{"privacy", "erase", "--config", cfgPath, "--customer", other}, "--yes"},
		{[]string{"privacy", "erase", "--config", cfgPath}, "--customer"},
		{[]string{"privacy", "cancel", "--config", cfgPath}, "erasure id"},
	}
	for _, b := range bad {
		_, stderr, code := runCLI(t, b.args...)
		if code != 2 || !strings.Contains(stderr, b.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 mentioning %q", b.args[1:], code, stderr, b.want)
		}
	}
	// An existing file is not overwritten.
	_, stderr, code = runCLI(t, "privacy", "export", "--config", cfgPath, "--customer", other, "--out", zipOut)
	if code != 1 || !strings.Contains(stderr, "never overwritten") {
		t.Errorf("export over an existing file: exit %d: %s", code, stderr)
	}
	// Nothing above erased the other customer.
	if rows := sqlRows(t, cfgPath, "SELECT count() FROM events FINAL WHERE customer_id = '"+other+"'"); rows[0] != "35" {
		t.Fatalf("other customer has %s raw rows, want 35", rows[0])
	}
}

// getErasure reads one erasure through the API.
func getErasure(t *testing.T, addr, id string) (map[string]any, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/v1/privacy/erasures/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var e map[string]any
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET erasure: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&e)
	return e, err
}

// TestPrivacyErasureSurvivesKill: the serving process is SIGKILLed in the
// middle of an erasure (after its first deletion pass, while it waits for
// the sinks to see the request); the restarted process finishes it, and the
// final report still counts the rows the first process removed.
func TestPrivacyErasureSurvivesKill(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("e2e-erase-kill")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, "privacy:\n  erased_refresh: 5s\n")
	subject, other := testenv.Unique("subject"), testenv.Unique("other")
	p, _ := start(t, cfgPath, addr)
	postEvents(t, addr, append(customerEvents("s", subject, 40), customerEvents("o", other, 10)...))
	testenv.Eventually(t, time.Minute, func() error {
		if n, err := metric(addr, "meterline_sink_events_stored_total"); err != nil || n < 50 {
			return fmt.Errorf("stored %v (%v)", n, err)
		}
		return nil
	})
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/privacy/erasures", strings.NewReader(`{"customer_id":"`+subject+`"}`))
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ ID string }
	_ = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != 202 || created.ID == "" {
		t.Fatalf("erasure request: %s", resp.Status)
	}
	// Wait for the first pass to have removed the raw events (the request
	// records its progress), then kill the process mid-erasure.
	testenv.Eventually(t, time.Minute, func() error {
		e, err := getErasure(t, addr, created.ID)
		if err != nil {
			return err
		}
		if e["status"] != "running" {
			if e["status"] == "done" {
				t.Fatalf("the erasure finished before it could be interrupted: %v", e)
			}
			return fmt.Errorf("status %v", e["status"])
		}
		removed, _ := e["removed"].(map[string]any)
		if removed["events"] == nil {
			return fmt.Errorf("raw events not removed yet: %v", removed)
		}
		return nil
	})
	p.kill()

	p, _ = start(t, cfgPath, addr)
	var final map[string]any
	testenv.Eventually(t, time.Minute, func() error {
		e, err := getErasure(t, addr, created.ID)
		if err != nil {
			return err
		}
		if e["status"] != "done" {
			return fmt.Errorf("status %v after the restart", e["status"])
		}
		final = e
		return nil
	})
	removed, _ := final["removed"].(map[string]any)
	if removed["events"] != float64(40) {
		t.Fatalf("final report after the kill: removed %v, want 40 raw events counted", removed)
	}
	stopGracefully(t, p)
	if rows := sqlRows(t, cfgPath, "SELECT count() FROM events WHERE customer_id = '"+subject+"'"); rows[0] != "0" {
		t.Fatalf("erased customer has %s raw rows", rows[0])
	}
	if rows := sqlRows(t, cfgPath, "SELECT count() FROM events FINAL WHERE customer_id = '"+other+"'"); rows[0] != "10" {
		t.Fatalf("other customer has %s raw rows, want 10", rows[0])
	}
	if rows := sqlRows(t, cfgPath, "SELECT groupArray(action) FROM (SELECT action FROM privacy_audit WHERE erasure_id = '"+created.ID+"' ORDER BY at)"); !strings.Contains(rows[0], "erasure_done") || strings.Count(rows[0], "erasure_started") != 2 {
		t.Fatalf("audit trail: %s", rows[0])
	}
}
