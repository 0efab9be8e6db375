package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
)

// benchHTTP drives GET path on srv from 8 client goroutines for b.N
// requests and reports requests/s and the latency percentiles a gateway sees
// over loopback.
func benchHTTP(b *testing.B, srv *httptest.Server, path, token string) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	lat := make([]time.Duration, b.N)
	var next sync.Mutex
	i := 0
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			for {
				next.Lock()
				n := i
				i++
				next.Unlock()
				if n >= b.N {
					return
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
				lat[n] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(lat[b.N/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[b.N*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkLimitsHTTP measures GET /v1/limits/{key} with 1,000 customers
// and 10,000 keys in the catalogue, through a real HTTP server on loopback.
// Run with BenchmarkBaselineHTTP (the same server answering a constant) to
// read it as a ratio: go test ./api -run '^$' -bench HTTP -benchtime 50000x
func BenchmarkLimitsHTTP(b *testing.B) {
	db := requireDB(b)
	var sb strings.Builder
	sb.WriteString("plans:\n  - {id: p, included_units: 1000, hard_limit: 2000, alert_thresholds: [0.8]}\ncustomers:\n")
	for c := 0; c < 1000; c++ {
		fmt.Fprintf(&sb, "  - {id: bc%d, plan: p, keys: [", c)
		for k := 0; k < 10; k++ {
			if k > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "bk%d-%d", c, k)
		}
		sb.WriteString("]}\n")
	}
	cat, err := limits.ParseCatalogue([]byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	view := limits.NewView(limits.Config{DisableAlerts: true}, limits.NewRegistry(cat), aggregate.NewQuerier(db), db, prometheus.NewRegistry(), quiet())
	defer view.Close()
	if err := view.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/limits/{api_key_id}", NewLimitsHandler(view, tokens(b)))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	benchHTTP(b, srv, "/v1/limits/bk500-3", tokIngest)
}

// BenchmarkBaselineHTTP is the same server and client answering a constant
// JSON body after the same token check: the floor of any endpoint here.
func BenchmarkBaselineHTTP(b *testing.B) {
	tk := tokens(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := tk.Authenticate(r); err != nil {
			w.WriteHeader(401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer srv.Close()
	benchHTTP(b, srv, "/", tokIngest)
}
