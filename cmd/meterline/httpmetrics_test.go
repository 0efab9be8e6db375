package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestInstrumentHTTPLabelsByPatternAndClass checks that requests are counted
// by the pattern that served them (never the raw path, so hostile paths add
// no series) and by status class, and that streaming handlers can flush.
func TestInstrumentHTTPLabelsByPatternAndClass(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/limits/{api_key_id}", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/v1/usage", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusTooManyRequests) })
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush through the instrumented writer: %v", err)
		}
	})
	mux.HandleFunc("/boom", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503); w.WriteHeader(200) })
	reg := prometheus.NewPedanticRegistry()
	h := instrumentHTTP(mux, reg)
	for _, path := range []string{"/v1/limits/a", "/v1/limits/b", "/v1/limits/" + strings.Repeat("x", 5000), "/v1/usage", "/stream", "/boom", "/nope/../etc/passwd", "/v1/limits/a/b"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/v1/limits/a", nil))

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "meterline_http_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var route, class string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "route":
					route = l.GetValue()
				case "class":
					class = l.GetValue()
				}
			}
			got[route+" "+class] = m.GetHistogram().GetSampleCount()
		}
	}
	want := map[string]uint64{
		"GET /v1/limits/{api_key_id} 2xx": 3,
		"/v1/usage 4xx":                   1,
		"/stream 2xx":                     1,
		"/boom 5xx":                       1,
		// Unknown paths, a cleaned path's redirect and a wrong method
		// have no pattern: one series for all of them.
		"unmatched 4xx": 2,
		"unmatched 3xx": 1,
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d requests, want %d (all: %v)", k, got[k], n, got)
		}
	}
}
