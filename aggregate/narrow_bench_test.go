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
// interleaved, each query shape on the narrow rollups (what Querier.Usage
// reads) and on the wide ones (forced: the path of every read before the
// narrow rollups existed), b.N times each, one at a time:
//
//   - day: one customer, 30 days by day (a customer page's chart);
//   - hour: one customer, 30 days by hour;
//   - total: every customer, window=total, grouped by customer (the
//     overview's customer table);
//   - day-noips: the day query without distinct client IPs
//     (UsageQuery.SkipDistinctIPs, as the pages that do not show them
//     read), on the narrow rollups.
//
// It reports the p50 and p99 of each in ms and the ratios wide/narrow (how
// many times faster the narrow path is) and day/day-noips. The answers of
// both paths are checked to agree. Skipped with -short. Run:
//
//	go test ./aggregate -run '^$' -bench BenchmarkUsageNarrowVsWide -benchtime 100x
//	METERLINE_BENCH_EVENTS=10000000 go test ./aggregate -run '^$' -bench BenchmarkUsageNarrowVsWide -benchtime 100x -timeout 60m
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
	noIPs := shapes[0].uq
	noIPs.SkipDistinctIPs = true

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
	for b.Loop() {
		for _, s := range shapes {
			nr := run(s.name+"-narrow", narrow, s.uq)
			wr := run(s.name+"-wide", wide, s.uq)
			if nr != wr {
				b.Fatalf("%s: %d requests on the narrow rollups, %d on the wide ones", s.name, nr, wr)
			}
			if s.name != "total" && nr != n/50 {
				b.Fatalf("%s: customer c7 has %d requests, want %d", s.name, nr, n/50)
			}
		}
		run("day-noips-narrow", narrow, noIPs)
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
	b.ReportMetric(pct("day-noips-narrow", 0.5), "day-noips-narrow-p50-ms")
	b.ReportMetric(pct("day-narrow", 0.5)/pct("day-noips-narrow", 0.5), "day/day-noips-p50")
	b.ReportMetric(st.Duration.Seconds(), "tick-s")
	b.ReportMetric(load.Seconds(), "load-s")
	b.ReportMetric(0, "ns/op")
}
