package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
)

// TestServeWebInterface: `meterline serve` serves the web interface under
// /ui/ with its security headers, and portal links from
// POST /v1/portal/sessions that sign a browser in once.
func TestServeWebInterface(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	catalogue := filepath.Join(t.TempDir(), "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte("plans:\n  - {id: starter, included_units: 10}\ncustomers:\n  - {id: acme, plan: starter, keys: [key_demo]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), testenv.Unique("ui"), fmt.Sprintf("limits:\n  catalogue_file: %s\n", catalogue))
	start(t, cfgPath, addr)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	resp, err := noFollow.Get("http://" + addr + "/ui/signin")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != http.StatusOK || !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("GET /ui/signin: %d, CSP %q", resp.StatusCode, csp)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/portal/sessions", strings.NewReader(`{"customer_id":"acme","ttl":"5m"}`))
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var link struct {
		URL string `json:"url"`
	}
	err = json.NewDecoder(resp.Body).Decode(&link)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || err != nil || !strings.HasPrefix(link.URL, "http://"+addr+"/ui/portal/exchange?code=") {
		t.Fatalf("POST /v1/portal/sessions: %d %v %q", resp.StatusCode, err, link.URL)
	}
	for i, want := range []int{http.StatusSeeOther, http.StatusForbidden} {
		resp, err := noFollow.Get(link.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("exchange %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}
