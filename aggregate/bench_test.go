package aggregate_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
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
// 2 cores), waits for the engine's background merges, and measures usage of
// one customer over 30 days by hour three ways in the same run, one request
// at a time, b.N times each:
//
//   - floor-*: the same customer's hour rows summed per hour without FINAL
//     and without merging the latency and IP states: what reading the rows
//     costs, and the baseline of the ratios;
//   - p50-ms, p99-ms: Querier.Usage, the exact answer (FINAL, states merged,
//     the open edge from finer rollups and raw events);
//   - http-*: GET /v1/usage through a real HTTP server on loopback, JSON
//     encoding and token check included: what a dashboard sees.
//
// It is a benchmark only (never part of a test run) and is skipped with
// -short. Run:
//
//	go test ./aggregate -run '^$' -bench BenchmarkUsage30DaysHourly -benchtime 300x
func BenchmarkUsage30DaysHourly(b *testing.B) {
	if testing.Short() {
		b.Skip("loads 10 million events")
	}
	db := requireDB(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // loading and the full tick alone take minutes
	defer cancel()
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

	customer := prefix + "-c7"
	q := aggregate.NewQuerier(db)
	now := time.Now().UTC()
	uq := aggregate.UsageQuery{CustomerID: customer, From: t0.Add(-30*24*time.Hour - time.Minute), To: now, Window: aggregate.WindowHour}
	tk, err := auth.New([]auth.TokenConfig{{Name: "finance", SHA256: auth.Hash("bench-finance"), Scopes: []string{"finance"}}})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(api.NewUsageHandler(q, tk))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/v1/usage?"+url.Values{
		"customer_id": {customer}, "window": {"hour"},
		"from": {uq.From.Format(time.RFC3339Nano)}, "to": {uq.To.Format(time.RFC3339Nano)},
	}.Encode(), nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer bench-finance")
	floorSQL := `SELECT toStartOfHour(window_start) AS h, sum(requests) FROM usage_hour
WHERE customer_id = {c:String} AND window_start >= {from:DateTime('UTC')} AND window_start < {to:DateTime('UTC')}
GROUP BY h ORDER BY h`

	var floor, exact, overHTTP []time.Duration
	var requests uint64
	var bodyBytes int64
	for b.Loop() {
		start := time.Now()
		hours, err := scanFloor(ctx, db, floorSQL, store.P("c", customer), store.P("from", uq.From.Truncate(time.Second)), store.P("to", uq.To.Truncate(time.Second)))
		floor = append(floor, time.Since(start))
		if err != nil || hours < 24*30 {
			b.Fatalf("the floor query found %d hours: %v", hours, err)
		}

		start = time.Now()
		rows, err := q.Usage(ctx, uq)
		exact = append(exact, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		requests = 0
		for _, r := range rows {
			requests += r.Requests
		}

		start = time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		bodyBytes, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		overHTTP = append(overHTTP, time.Since(start))
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET /v1/usage: status %d, %v", resp.StatusCode, err)
		}
	}
	if requests != benchEvents/50 {
		b.Errorf("customer c7 has %d requests, want %d", requests, benchEvents/50)
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.Logf("GET /v1/usage answer: %d bytes", bodyBytes)
	b.ReportMetric(pct(floor, 0.50), "floor-p50-ms")
	b.ReportMetric(pct(floor, 0.99), "floor-p99-ms")
	b.ReportMetric(pct(exact, 0.50), "p50-ms")
	b.ReportMetric(pct(exact, 0.99), "p99-ms")
	b.ReportMetric(pct(overHTTP, 0.50), "http-p50-ms")
	b.ReportMetric(pct(overHTTP, 0.99), "http-p99-ms")
	b.ReportMetric(pct(overHTTP, 0.50)/pct(floor, 0.50), "http/floor-p50")
	b.ReportMetric(st.Duration.Seconds(), "tick-s")
	b.ReportMetric(load.Seconds(), "load-s")
	b.ReportMetric(0, "ns/op")
}

// scanFloor runs the floor query of BenchmarkUsage30DaysHourly and reads
// every row, as Usage does.
func scanFloor(ctx context.Context, db store.Conn, sql string, params ...store.Param) (int, error) {
	rows, err := db.Query(ctx, sql, params...)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var h time.Time
		var r uint64
		if err := rows.Scan(&h, &r); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}
