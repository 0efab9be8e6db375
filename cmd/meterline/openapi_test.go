package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
)

// TestOpenAPIConformance runs schemathesis (property-based fuzzing from
// api/openapi.yaml) against a real serve: generated valid and hostile
// requests for every operation must never get a 5xx, and every answer must
// have a documented status, content type and body shape. Events go through
// with the ingest token, every other operation with the admin token. The seed
// is fixed so a failure replays; METERLINE_TEST_SCHEMATHESIS_SEED picks
// another.
func TestOpenAPIConformance(t *testing.T) {
	st := testenv.Require(t, "METERLINE_TEST_SCHEMATHESIS")
	brokers := testenv.KafkaBrokers(t)
	dir := t.TempDir()
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(`plans:
  - {id: starter, included_units: 1000, hard_limit: 1200}
customers:
  - {id: acme, plan: starter, keys: [key_demo]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Unique("openapi")
	// Generated erasure requests run at once: keep each one short.
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf("limits:\n  catalogue_file: %s\n  refresh: 200ms\nprivacy:\n  erased_refresh: 50ms\n", catalogue))
	start(t, cfgPath, addr)

	seed := "20261123"
	if s := os.Getenv("METERLINE_TEST_SCHEMATHESIS_SEED"); s != "" {
		seed = s
	}
	spec := filepath.Join(testenv.RepoRoot(), "api", "openapi.yaml")
	run := func(name, token string, filter ...string) {
		t.Helper()
		args := append([]string{"run", spec, "--url", "http://" + addr,
			"-H", "Authorization: Bearer " + token,
			"--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
			"--max-examples", "40", "--seed", seed, "--no-color"}, filter...)
		cmd := exec.Command(st, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		summary := string(out)
		if i := strings.LastIndex(summary, "SUMMARY"); i >= 0 {
			summary = summary[i:]
		}
		if err != nil {
			t.Fatalf("schemathesis (%s, seed %s) found failures: %v\n%s", name, seed, err, out)
		}
		t.Logf("schemathesis (%s, seed %s):\n%s", name, seed, summary)
	}
	run("events", e2eIngestToken, "--include-path", "/v1/events")
	run("admin", e2eAdminToken, "--exclude-path", "/v1/events")
}
