//go:build (linux || darwin) && !noembedded

package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkInsertUnderReadFlood measures the latency of the sink's kind of
// insert (1,000 event rows) on the embedded engine while eight goroutines
// run a heavy usage-like read (GROUP BY over the events table with FINAL)
// back to back, and reports it against the same inserts with no reads:
//
//	go test ./store -run '^$' -bench InsertUnderReadFlood -benchtime 20x
//
// idle: no reads. shared: the reads run as background statements, on the
// pool the inserts use, as every read did before interactive reads existed.
// interactive: the reads run as interactive reads (their own connections,
// max_threads 2), as the API's do. Each reports the insert's p50 and p95.
func BenchmarkInsertUnderReadFlood(b *testing.B) {
	c := embeddedConnForTest(b, Config{MaxOpenConns: 4, Interactive: InteractiveConfig{Conns: 4, MaxThreads: 2, MaxExecutionTime: time.Minute}})
	migrate(b, c)
	// Data for the reads: 200,000 events over 40 days.
	at := time.Now().UTC().Add(-40 * 24 * time.Hour).Truncate(time.Millisecond)
	seed := make([][]any, 20_000)
	for part := range 10 {
		for i := range seed {
			n := part*len(seed) + i
			seed[i] = eventRow(fmt.Sprintf("seed-%d", n), at.Add(time.Duration(n)*17*time.Second), n)
		}
		if err := c.Insert(testCtx(b), "events", eventColumns, seed, InsertOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	const read = `SELECT toStartOfHour(time) AS w, route, api_key_id, status, count(), sum(units), quantileTDigest(0.95)(latency_ms)
FROM events FINAL WHERE customer_id = {c:String} AND time >= now() - INTERVAL 400 DAY
GROUP BY w, route, api_key_id, status ORDER BY w`
	idle := map[string]time.Duration{}
	for _, mode := range []string{"idle", "shared", "interactive"} {
		b.Run(mode, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var reads int64
			var mu sync.Mutex
			if mode != "idle" {
				rctx := ctx
				if mode == "interactive" {
					rctx = Interactive(ctx)
				}
				for g := range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ctx.Err() == nil {
							rows, err := c.Query(rctx, read, P("c", fmt.Sprintf("cus_%d", g%10)))
							if err == nil {
								rows.Close()
								mu.Lock()
								reads++
								mu.Unlock()
							}
						}
					}()
				}
			}
			batch := make([][]any, 1000)
			lat := make([]time.Duration, 0, b.N)
			now := time.Now().UTC()
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				for i := range batch {
					batch[i] = eventRow(fmt.Sprintf("%s-%d-%d", mode, n, i), now.Add(time.Duration(i)*time.Millisecond), i)
				}
				t0 := time.Now()
				if err := c.Insert(testCtx(b), "events", eventColumns, batch, InsertOptions{}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			cancel()
			wg.Wait()
			slices.Sort(lat)
			p50, p95 := lat[len(lat)/2], lat[len(lat)*95/100]
			b.ReportMetric(float64(p50.Microseconds())/1000, "ms-p50")
			b.ReportMetric(float64(p95.Microseconds())/1000, "ms-p95")
			b.ReportMetric(float64(reads)/b.Elapsed().Seconds(), "reads/s")
			if mode == "idle" {
				idle["p50"], idle["p95"] = p50, p95
			} else if idle["p50"] > 0 {
				b.ReportMetric(float64(p50)/float64(idle["p50"]), "p50/idle")
				b.ReportMetric(float64(p95)/float64(idle["p95"]), "p95/idle")
			}
		})
	}
}
