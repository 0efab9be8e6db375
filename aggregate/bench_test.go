package aggregate_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// benchEvents is the number of raw events BenchmarkUsage30DaysHourly loads.
const benchEvents = 10_000_000

// benchLoadSQL generates benchEvents raw events inside the engine: 50
// customers with 2 keys each, times spread over the last 30 days, 8 routes,
// 4 methods, statuses with 4xx and 5xx, 3 gateways, a few thousand /24s.
// Every row is stamped as ingested now, so the first tick rolls up all of
// them. The id prefix keeps runs apart.
const benchLoadSQL = `INSERT INTO events (id, time, api_key_id, customer_id, gateway, method, route, status,
    latency_ms, request_bytes, response_bytes, client_ip, user_agent, units, properties, kafka_partition, kafka_offset, ingested_at)
SELECT
    concat({prefix:String}, '-', toString(number)),
    now64(3) - toIntervalMillisecond(cityHash64(number, 1) % (30 * 86400000)),
    concat({prefix:String}, '-c', toString(number % 50), '-k', toString(intDiv(number, 50) % 2)),
    concat({prefix:String}, '-c', toString(number % 50)),
    ['edge-eu', 'edge-us', 'edge-ap'][cityHash64(number, 2) % 3 + 1],
    ['GET', 'GET', 'POST', 'DELETE'][cityHash64(number, 3) % 4 + 1],
    concat('/v1/route', toString(cityHash64(number, 4) % 8)),
    [200, 200, 200, 201, 204, 304, 400, 404, 429, 500, 503][cityHash64(number, 5) % 11 + 1],
    (cityHash64(number, 6) % 200000) / 100,
    cityHash64(number, 7) % 4000,
    cityHash64(number, 8) % 100000,
    concat('10.', toString(cityHash64(number, 9) % 20), '.', toString(cityHash64(number, 10) % 250), '.0'),
    'bench',
    CAST((cityHash64(number, 11) % 5000000) / 1000000 AS Decimal(18, 6)),
    map(),
    0,
    toInt64(number),
    now64(3)
FROM numbers({n:UInt64})`

// BenchmarkUsage30DaysHourly loads 10 million raw events (about 30 s),
// rolls them up with one full tick (reported as tick-s; about 2 minutes on
// 2 cores), waits for the engine's background merges, and measures Usage
// for one customer over 30 days by hour: p50-ms and p99-ms over the
// iterations. It is a benchmark only (never part of a test run) and is
// skipped with -short. Run:
//
//	go test ./aggregate -run '^$' -bench BenchmarkUsage30DaysHourly -benchtime 300x
func BenchmarkUsage30DaysHourly(b *testing.B) {
	if testing.Short() {
		b.Skip("loads 10 million events")
	}
	db := requireDB(b)
	ctx := testCtx(b)
	prefix := testenv.Unique("bench")
	t0 := time.Now()
	if err := db.Exec(ctx, benchLoadSQL, store.P("prefix", prefix), store.P("n", uint64(benchEvents))); err != nil {
		b.Fatal(err)
	}
	load := time.Since(t0)
	st, err := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, nil, quietLog()).Tick(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d events in %s; full tick: %d dirty groups in %s", benchEvents, load, st.DirtyGroups, st.Duration)
	// The tick leaves the engine merging the parts it wrote for a while;
	// measure the steady state, not two cores shared with those merges.
	t1 := time.Now()
	testenv.Eventually(b, 5*time.Minute, func() error {
		if n := countRows(b, db, "SELECT count() FROM system.merges WHERE database = currentDatabase()"); n > 0 {
			return fmt.Errorf("%d merges still running", n)
		}
		return nil
	})
	b.Logf("background merges settled after %s", time.Since(t1))

	q := aggregate.NewQuerier(db)
	now := time.Now().UTC()
	uq := aggregate.UsageQuery{CustomerID: prefix + "-c7", From: t0.Add(-30*24*time.Hour - time.Minute), To: now, Window: aggregate.WindowHour}
	var durations []time.Duration
	var requests uint64
	for b.Loop() {
		start := time.Now()
		rows, err := q.Usage(ctx, uq)
		durations = append(durations, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		requests = 0
		for _, r := range rows {
			requests += r.Requests
		}
	}
	if requests != benchEvents/50 {
		b.Errorf("customer c7 has %d requests, want %d", requests, benchEvents/50)
	}
	slices.Sort(durations)
	pct := func(p float64) float64 {
		return float64(durations[int(p*float64(len(durations)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(st.Duration.Seconds(), "tick-s")
	b.ReportMetric(load.Seconds(), "load-s")
}
