package httpmeter

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// benchHandler is a small JSON endpoint, the same with and without the
// middleware.
var benchHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"42","name":"rex"}`)
})

// discardWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the handler and the middleware, not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}
func (d *discardWriter) Flush()                      {}

// BenchmarkMiddleware compares the same handler without the middleware
// (baseline) and with it, in the same run. Run with -cpu 8 for 8 parallel
// handlers:
//
//	go test ./gateway/httpmeter -run '^$' -bench Middleware -cpu 8 -count 5
//
// "metered" is the request path alone: the meter has the default queue and,
// in place of its sender, a goroutine that takes the full batches off the
// queue and discards them. "queued/op" is the share of requests whose event
// was queued; it is below 1 because these handlers never block, so one can
// run for a whole scheduler time slice and fill the queue before the
// draining goroutine runs; the others took the full-queue path (lock, count,
// unlock), which costs less. "metered_sending" runs the real sender, posting
// to a stand-in collector that answers at once, on the same cores as the
// handlers; BenchmarkEncode is the sender's own cost per event.
func BenchmarkMiddleware(b *testing.B) {
	run := func(b *testing.B, h http.Handler) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := httptest.NewRequest("GET", "/v1/pets/42", nil)
			r.Header.Set("X-Api-Key-Id", "key_bench")
			r.Pattern = "GET /v1/pets/{id}"
			r.RemoteAddr = "203.0.113.7:51234"
			w := &discardWriter{h: http.Header{}}
			for pb.Next() {
				h.ServeHTTP(w, r)
			}
		})
	}
	report := func(b *testing.B, m *Meter) {
		st := m.Stats()
		b.ReportMetric(float64(st.Enqueued)/float64(st.Enqueued+st.DroppedQueueFull), "queued/op")
	}
	b.Run("baseline", func(b *testing.B) { run(b, benchHandler) })
	b.Run("metered", func(b *testing.B) {
		m, err := newMeter(Config{Endpoint: "http://127.0.0.1:1", KeyFunc: headerKey})
		if err != nil {
			b.Fatal(err)
		}
		stop := make(chan struct{})
		drained := make(chan struct{})
		go func() { // takes the batches off the queue as the sender would, and discards them
			defer close(drained)
			var batches [][]record
			for {
				select {
				case <-m.queue.ready:
				case <-stop:
					return
				}
				batches = m.queue.take(false, batches[:0])
				for _, bt := range batches {
					m.queue.done(bt)
				}
			}
		}()
		b.ResetTimer()
		run(b, m.Middleware(benchHandler))
		b.StopTimer()
		close(stop)
		<-drained
		report(b, m)
	})
	b.Run("metered_sending", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"accepted":0,"rejected":[]}`)
		}))
		defer srv.Close()
		m, err := New(Config{Endpoint: srv.URL, KeyFunc: headerKey, Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		run(b, m.Middleware(benchHandler))
		b.StopTimer()
		report(b, m)
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		_ = m.Close(ctx) // what is left is not the benchmark's
	})
}

// BenchmarkEncode is the sender's cost per event: the v1 JSON line and its
// share of the gzip of a 1,000-event batch (one op is one event).
func BenchmarkEncode(b *testing.B) {
	m := &Meter{cfg: Config{MaxBatchBytes: 1 << 20}.withDefaults(), stopCtx: context.Background()}
	batch := make([]record, 1000)
	for i := range batch {
		batch[i] = record{start: time.Now(), latency: 1234 * time.Microsecond, id: [2]uint64{uint64(i), 7},
			apiKeyID: "key_bench", customerID: "cust_bench", method: "GET", route: "/v1/pets/{id}",
			remoteAddr: "203.0.113.7:51234", requestBytes: 0, respBytes: 24, status: 200}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += len(batch) {
		e := &m.enc
		e.raw.Reset()
		e.hex = e.hex[:0]
		for i := range batch {
			e.hex = batch[i].appendID(e.hex)
		}
		ids := string(e.hex)
		for i := range batch {
			ev, _ := batch[i].event("", ids[32*i:32*i+32])
			e.line = ev.AppendJSON(e.line[:0])
			e.raw.Write(append(e.line, '\n'))
		}
		e.gz.Reset()
		if e.zw == nil {
			e.zw, _ = gzip.NewWriterLevel(&e.gz, gzip.BestSpeed)
		} else {
			e.zw.Reset(&e.gz)
		}
		_, _ = e.zw.Write(e.raw.Bytes())
		_ = e.zw.Close()
	}
}
