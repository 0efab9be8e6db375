package api

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/privacy"
)

type privacyFixture struct {
	srv                *httptest.Server
	mux                *http.ServeMux
	svc                *privacy.Service
	subject, bystander string
}

func newPrivacyFixture(t *testing.T) *privacyFixture {
	t.Helper()
	db := requireDB(t)
	subject, bystander := testenv.Unique("subject"), testenv.Unique("bystander")
	at := time.Now().UTC().Add(-time.Hour)
	var evs []ev
	for i := 0; i < 30; i++ {
		evs = append(evs,
			ev{fmt.Sprintf("s-%d", i), subject + "-key", subject, "/v1/a", at.Add(time.Duration(i) * time.Second), 200, 1, 10, "203.0.113.0"},
			ev{fmt.Sprintf("b-%d", i), bystander + "-key", bystander, "/v1/a", at.Add(time.Duration(i) * time.Second), 200, 1, 10, "203.0.113.0"})
	}
	insertRaw(t, db, evs)
	svc := privacy.NewService(privacy.Config{ErasedRefresh: 10 * time.Millisecond, ErasureCheckInterval: time.Hour}, db, prometheus.NewRegistry(), quiet())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	p := &Privacy{DB: db, Service: svc, Tokens: tokens(t), AccountDeletionDelay: 90 * 24 * time.Hour, Log: quiet(),
		Records: func(s privacy.Subject) []privacy.Record {
			return []privacy.Record{{Table: "catalogue", Row: map[string]string{"id": s.CustomerID}}}
		}}
	mux := http.NewServeMux()
	p.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &privacyFixture{srv: srv, mux: mux, svc: svc, subject: subject, bystander: bystander}
}

func (f *privacyFixture) do(t testing.TB, method, token, path, ctype, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// ndjsonTables counts an NDJSON export's rows per table.
func ndjsonTables(t testing.TB, body string) map[string]int {
	t.Helper()
	out := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Table string `json:"table"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out[line.Table]++
	}
	return out
}

// TestPrivacyExportAndErasureOverHTTP: an admin exports a customer, asks
// for its erasure, follows it to done, and the export is then empty while
// another customer's export is unchanged.
func TestPrivacyExportAndErasureOverHTTP(t *testing.T) {
	f := newPrivacyFixture(t)
	resp, body := f.do(t, "GET", tokAdmin, "/v1/privacy/export?customer_id="+f.subject, "", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if got := ndjsonTables(t, body); got["events"] != 30 || got["catalogue"] != 1 || got["_summary"] != 1 {
		t.Fatalf("export tables: %v", got)
	}
	if resp.Header.Get("Meterline-Export-Rows") != "30" {
		t.Fatalf("planned rows header %q", resp.Header.Get("Meterline-Export-Rows"))
	}
	resp, body = f.do(t, "GET", tokAdmin, "/v1/privacy/export?format=zip&customer_id="+f.subject, "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("zip export: %d %s", resp.StatusCode, body)
	}
	if zr, err := zip.NewReader(bytes.NewReader([]byte(body)), int64(len(body))); err != nil || len(zr.File) < 3 {
		t.Fatalf("zip export: %v", err)
	}

	resp, body = f.do(t, "POST", tokAdmin, "/v1/privacy/erasures", "application/json",
		`{"customer_id":"`+f.subject+`","reason":"ticket 4711"}`)
	if resp.StatusCode != 202 {
		t.Fatalf("erasure request: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	var e privacy.Erasure
	testenv.Eventually(t, time.Minute, func() error {
		resp, body := f.do(t, "GET", tokAdmin, loc, "", "")
		if resp.StatusCode != 200 {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			return err
		}
		if e.Status != privacy.StatusDone {
			return fmt.Errorf("status %s", e.Status)
		}
		return nil
	})
	if e.Removed["events"] != 30 || e.RequestedBy != "admin" || e.Reason != "ticket 4711" {
		t.Fatalf("erasure: %+v", e)
	}
	_, body = f.do(t, "GET", tokAdmin, "/v1/privacy/export?customer_id="+f.subject, "", "")
	if got := ndjsonTables(t, body); got["events"] != 0 {
		t.Fatalf("export after erasure: %v", got)
	}
	_, body = f.do(t, "GET", tokAdmin, "/v1/privacy/export?customer_id="+f.bystander, "", "")
	if got := ndjsonTables(t, body); got["events"] != 30 {
		t.Fatalf("the other customer's export after the erasure: %v", got)
	}
	resp, body = f.do(t, "GET", tokAdmin, "/v1/privacy/erasures?customer_id="+f.subject, "", "")
	if resp.StatusCode != 200 || !strings.Contains(body, e.ID) {
		t.Fatalf("list: %d %s", resp.StatusCode, body)
	}
	resp, body = f.do(t, "DELETE", tokAdmin, loc, "", "")
	if resp.StatusCode != 409 {
		t.Fatalf("cancelling a done erasure: %d %s", resp.StatusCode, body)
	}

	// An account deletion is scheduled, then cancelled.
	resp, body = f.do(t, "POST", tokAdmin, "/v1/privacy/erasures", "application/json",
		`{"customer_id":"`+f.bystander+`","account_deletion":true}`)
	if resp.StatusCode != 202 || !strings.Contains(body, `"status":"scheduled"`) {
		t.Fatalf("account deletion: %d %s", resp.StatusCode, body)
	}
	resp, body = f.do(t, "DELETE", tokAdmin, resp.Header.Get("Location"), "", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"status":"cancelled"`) {
		t.Fatalf("cancel: %d %s", resp.StatusCode, body)
	}
}

// TestPrivacyEndpointsRejectBadInput: every bad request gets a clear 4xx
// and records nothing.
func TestPrivacyEndpointsRejectBadInput(t *testing.T) {
	f := newPrivacyFixture(t)
	exp := "/v1/privacy/export?customer_id=" + f.subject
	ok := `{"customer_id":"` + f.subject + `"}`
	cases := []struct {
		name, method, token, path, ctype, body string
		code                                   int
		want                                   string
	}{
		{"no token", "GET", "", exp, "", "", 401, "token"},
		{"bad token", "GET", "nope", exp, "", "", 401, "token"},
		{"finance", "GET", tokFinance, exp, "", "", 403, "admin"},
		{"customer token, own data", "GET", tokAcme, exp, "", "", 403, "admin"},
		{"ingest", "POST", tokIngest, "/v1/privacy/erasures", "application/json", ok, 403, "admin"},
		{"no subject", "GET", tokAdmin, "/v1/privacy/export", "", "", 400, "customer_id"},
		{"unknown param", "GET", tokAdmin, exp + "&limit=5", "", "", 400, "limit"},
		{"repeated param", "GET", tokAdmin, exp + "&customer_id=x", "", "", 400, "customer_id"},
		{"bad format", "GET", tokAdmin, exp + "&format=xml", "", "", 400, "format"},
		{"control char", "GET", tokAdmin, "/v1/privacy/export?customer_id=a%00b", "", "", 400, "customer_id"},
		{"long id", "GET", tokAdmin, "/v1/privacy/export?customer_id=" + strings.Repeat("x", 200), "", "", 400, "customer_id"},
		{"export POST", "POST", tokAdmin, exp, "", "", 405, "GET"},
		{"wrong content type", "POST", tokAdmin, "/v1/privacy/erasures", "text/plain", ok, 415, "json"},
		{"not json", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", "{", 400, "body"},
		{"unknown field", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", `{"customer_id":"x","hard":true}`, 400, "hard"},
		{"two objects", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", ok + ok, 400, "one JSON object"},
		{"oversized", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", `{"customer_id":"x","reason":"` + strings.Repeat("r", 20000) + `"}`, 413, "larger"},
		{"no customer", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", `{"reason":"x"}`, 400, "customer_id"},
		{"long reason", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", `{"customer_id":"x","reason":"` + strings.Repeat("r", 1200) + `"}`, 400, "reason"},
		{"wrong type", "POST", tokAdmin, "/v1/privacy/erasures", "application/json", `{"customer_id":7}`, 400, "customer_id"},
		{"unknown erasure", "GET", tokAdmin, "/v1/privacy/erasures/er_0000", "", "", 404, "no such erasure"},
		{"cancel unknown", "DELETE", tokAdmin, "/v1/privacy/erasures/er_0000", "", "", 404, "no such erasure"},
		{"PUT erasures", "PUT", tokAdmin, "/v1/privacy/erasures", "application/json", ok, 405, "POST"},
		{"list bad customer", "GET", tokAdmin, "/v1/privacy/erasures?customer_id=%07", "", "", 400, "customer_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := f.do(t, c.method, c.token, c.path, c.ctype, c.body)
			if resp.StatusCode != c.code || !strings.Contains(strings.ToLower(body), strings.ToLower(c.want)) {
				t.Fatalf("%d %s, want %d mentioning %q", resp.StatusCode, body, c.code, c.want)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("error content type %q", resp.Header.Get("Content-Type"))
			}
		})
	}
	if es, err := f.svc.List(context.Background(), f.subject); err != nil || len(es) != 0 {
		t.Fatalf("bad requests recorded erasures: %v %v", es, err)
	}
	if es, err := f.svc.List(context.Background(), "x"); err != nil || len(es) != 0 {
		t.Fatalf("bad requests recorded erasures: %v %v", es, err)
	}
	_, body := f.do(t, "GET", tokAdmin, exp, "", "")
	if got := ndjsonTables(t, body); got["events"] != 30 {
		t.Fatalf("data changed by bad requests: %v", got)
	}
}

// TestPrivacyExportOutlastsWriteTimeout: serve bounds every response with a
// write timeout; an export, which can take minutes, extends it slice by
// slice. With a 1 ms timeout any export would be cut without that.
func TestPrivacyExportOutlastsWriteTimeout(t *testing.T) {
	f := newPrivacyFixture(t)
	srv := httptest.NewUnstartedServer(f.mux)
	srv.Config.WriteTimeout = time.Millisecond
	srv.Start()
	defer srv.Close()
	f.srv = srv
	for _, format := range []string{"ndjson", "zip"} {
		resp, body := f.do(t, "GET", tokAdmin, "/v1/privacy/export?format="+format+"&customer_id="+f.subject, "", "")
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", format, resp.StatusCode, body)
		}
		if format == "ndjson" {
			if got := ndjsonTables(t, body); got["events"] != 30 || got["_summary"] != 1 {
				t.Fatalf("ndjson export under a 1 ms write timeout: %v", got)
			}
		} else if _, err := zip.NewReader(bytes.NewReader([]byte(body)), int64(len(body))); err != nil {
			t.Fatalf("zip export under a 1 ms write timeout: %v", err)
		}
	}
}
