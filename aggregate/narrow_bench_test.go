package aggregate_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// narrowBenchEventsEnv sets the raw events BenchmarkUsageNarrowVsWide
// loads (default 1 million).
const narrowBenchEventsEnv = "METERLINE_BENCH_EVENTS"

// BenchmarkUsageNarrowVsWide loads raw events generated in the engine
// (benchLoadSQL: 50 customers with 2 keys each over 30 days, 8 routes, 3
// methods, 4 status classes, 3 gateways), rolls them up with one full tick
// and waits for the engine's merges, then measures, in the same run and
// interleaved (alternating which goes first), each query shape through
// Querier.Usage ("narrow": the rollups it picks) and through the wide
// rollups forced (the path of every read before the narrow rollups), b.N
// times each, one at a time:
//
//   - day, hour: one customer, 30 days by day and by hour, with distinct
//     IPs (GET /v1/usage; Usage keeps these on the wide rollups);
//   - total: every customer, window=total, grouped by customer (the
//     overview's customer table), with distinct IPs;
//   - day-noips, hour-noips: the same without distinct IPs
//     (UsageQuery.SkipDistinctIPs, as the chart pages read).
//
// It reports each p50 and p99 in ms, the ratios wide/narrow, the ratios
// day-before/after and hour-before/after (the wide read with IPs every
// page made before, over the narrow read without them it makes now), and
// how many wide rows per narrow row the customer has. The answers of both
// paths are checked to agree. Skipped with -short. Run:
//
//	go test ./aggregate -run '^$' -bench BenchmarkUsageNarrowVsWide -benchtime 60x
//	METERLINE_BENCH_EVENTS=10000000 go test ./aggregate -run '^$' -bench BenchmarkUsageNarrowVsWide -benchtime 60x -timeout 60m
func BenchmarkUsageNarrowVsWide(b *testing.B) {
	if testing.Short() {
		b.Skip("loads a million events or more")
	}
	n := uint64(1_000_000)
	if s := os.Getenv(narrowBenchEventsEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v < 10_000 {
			b.Fatalf("%s=%q: want a number of events, at least 10000", narrowBenchEventsEnv, s)
		}
		n = v
	}
	db := requireDB(b)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	prefix := testenv.Unique("nbench")
	t0 := time.Now()
	if err := db.Exec(ctx, benchLoadSQL, store.P("prefix", prefix), store.P("n", n)); err != nil {
		b.Fatal(err)
	}
	load := time.Since(t0)
	st, err := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, nil, quietLog()).Tick(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d events in %s; full tick (wide and narrow rollups): %d dirty groups in %s", n, load, st.DirtyGroups, st.Duration)
	t1 := time.Now()
	testenv.Eventually(b, 10*time.Minute, func() error {
		if m := countRows(b, db, "SELECT count() FROM system.merges WHERE database = currentDatabase()"); m > 0 {
			return fmt.Errorf("%d merges still running", m)
		}
		return nil
	})
	b.Logf("background merges settled after %s", time.Since(t1))

	narrow := aggregate.NewQuerier(db)
	wide := aggregate.WideQuerier(narrow)
	customer := prefix + "-c7"
	now := time.Now().UTC()
	from := t0.Add(-30*24*time.Hour - time.Minute)
	shapes := []struct {
		name string
		uq   aggregate.UsageQuery
	}{
		{"day", aggregate.UsageQuery{CustomerID: customer, From: from, To: now, Window: aggregate.WindowDay}},
		{"hour", aggregate.UsageQuery{CustomerID: customer, From: from, To: now, Window: aggregate.WindowHour}},
		{"total", aggregate.UsageQuery{AllCustomers: true, From: from, To: now, Window: aggregate.WindowTotal, GroupBy: []string{"customer_id"}}},
	}
	for _, sh := range shapes[:2] {
		sh.name += "-noips"
		sh.uq.SkipDistinctIPs = true
		shapes = append(shapes, sh)
	}

	durations := map[string][]time.Duration{}
	run := func(name string, q *aggregate.Querier, uq aggregate.UsageQuery) uint64 {
		start := time.Now()
		rows, err := q.Usage(ctx, uq)
		durations[name] = append(durations[name], time.Since(start))
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		var req uint64
		for _, r := range rows {
			req += r.Requests
		}
		return req
	}
	// The rollup rows each path has for the customer's range: what the
	// engine reads, a figure the machine's load does not move.
	for i, lv := range []string{"hour", "day"} {
		w := countRows(b, db, "SELECT count() FROM "+aggregate.LevelTables[i+1]+" FINAL WHERE customer_id = {c:String} AND requests > 0", store.P("c", customer))
		nw := countRows(b, db, "SELECT count() FROM "+aggregate.NarrowTables[i+1]+" FINAL WHERE customer_id = {c:String} AND requests > 0", store.P("c", customer))
		b.Logf("customer c7, %s level: %d wide rows, %d narrow rows (%.0f:1)", lv, w, nw, float64(w)/float64(nw))
		b.ReportMetric(float64(w)/float64(nw), lv+"-rows-wide/narrow")
	}
	i := 0
	for b.Loop() {
		i++
		for _, s := range shapes {
			// Alternate which path goes first, so that neither always
			// reads after the other warmed the engine's caches.
			var nr, wr uint64
			if i%2 == 0 {
				nr = run(s.name+"-narrow", narrow, s.uq)
				wr = run(s.name+"-wide", wide, s.uq)
			} else {
				wr = run(s.name+"-wide", wide, s.uq)
				nr = run(s.name+"-narrow", narrow, s.uq)
			}
			if nr != wr {
				b.Fatalf("%s: %d requests on the narrow rollups, %d on the wide ones", s.name, nr, wr)
			}
			if s.name != "total" && nr != n/50 {
				b.Fatalf("%s: customer c7 has %d requests, want %d", s.name, nr, n/50)
			}
		}
	}
	pct := func(name string, p float64) float64 {
		d := slices.Clone(durations[name])
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	for _, s := range shapes {
		b.ReportMetric(pct(s.name+"-narrow", 0.5), s.name+"-narrow-p50-ms")
		b.ReportMetric(pct(s.name+"-wide", 0.5), s.name+"-wide-p50-ms")
		b.ReportMetric(pct(s.name+"-narrow", 0.99), s.name+"-narrow-p99-ms")
		b.ReportMetric(pct(s.name+"-wide", 0.99), s.name+"-wide-p99-ms")
		b.ReportMetric(pct(s.name+"-wide", 0.5)/pct(s.name+"-narrow", 0.5), s.name+"-wide/narrow-p50")
	}
	// What the chart pages read now (narrow, without IPs) against what
	// they read before (wide, with IPs).
	b.ReportMetric(pct("day-wide", 0.5)/pct("day-noips-narrow", 0.5), "day-before/after-p50")
	b.ReportMetric(pct("hour-wide", 0.5)/pct("hour-noips-narrow", 0.5), "hour-before/after-p50")
	b.ReportMetric(st.Duration.Seconds(), "tick-s")
	b.ReportMetric(load.Seconds(), "load-s")
	b.ReportMetric(0, "ns/op")
}
