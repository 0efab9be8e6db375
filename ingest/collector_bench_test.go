package ingest

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/schemas"
)

// discardProducer acknowledges every message at once, so the benchmark
// measures the collector's own work (read, decode, validate, anonymise,
// encode), not Kafka.
type discardProducer struct{ n int }

func (p *discardProducer) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	p.n += len(msgs)
	return nil
}

// BenchmarkCollectorServeHTTP is one POST /v1/events of 1,000 events
// through the handler, with Kafka replaced by a producer that acknowledges
// at once. Figures per event are what capacity planning uses:
//
//	go test ./ingest -run '^$' -bench CollectorServeHTTP -count 6
func BenchmarkCollectorServeHTTP(b *testing.B) {
	const n = 1000
	body := benchBatch("cust-bench", 0, n)
	p := &discardProducer{}
	c := NewCollector(CollectorConfig{}, schemas.Options{}, Anonymizer{}, testTokens(b), p, prometheus.NewRegistry(), quietLog())
	post := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokIngest)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		c.ServeHTTP(w, req)
		return w
	}
	if w := post(); w.Code != http.StatusAccepted || p.n != n {
		b.Fatalf("status %d, %d events produced: %s", w.Code, p.n, w.Body.String())
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		post()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	total := float64(b.N) * n
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/total, "ns/event")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/total, "allocs/event")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/total, "B/event")
}
