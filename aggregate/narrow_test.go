package aggregate_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// levelFloor buckets t as the rollup level of table i of
// aggregate.LevelTables does (minute, hour, day, month; UTC).
func levelFloor(i int, t time.Time) time.Time {
	t = t.UTC()
	switch i {
	case 0:
		return t.Truncate(time.Minute)
	case 1:
		return t.Truncate(time.Hour)
	case 2:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// cellRow is one (customer, key, window) cell of a rollup level.
type cellRow struct {
	requests, clientErrors, serverErrors uint64
	units                                string
	reqBytes, respBytes, ips             uint64
	p50, p95, p99                        float64
}

func (c cellRow) exact() string {
	return fmt.Sprintf("requests=%d client_errors=%d server_errors=%d units=%s request_bytes=%d response_bytes=%d ips=%d",
		c.requests, c.clientErrors, c.serverErrors, c.units, c.reqBytes, c.respBytes, c.ips)
}

// readCells reads the cells of customers with requests from sql, which
// selects customer_id, api_key_id, window_start, the six sums (units as
// text), the distinct IPs and the three quantiles.
func readCells(t *testing.T, db store.Conn, sql string, customers []string) map[string]cellRow {
	t.Helper()
	rows, err := db.Query(testCtx(t), sql, store.P("c", customers))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]cellRow{}
	for rows.Next() {
		var c, k string
		var ws time.Time
		var r cellRow
		if err := rows.Scan(&c, &k, &ws, &r.requests, &r.clientErrors, &r.serverErrors, &r.units, &r.reqBytes, &r.respBytes, &r.ips,
			&r.p50, &r.p95, &r.p99); err != nil {
			t.Fatal(err)
		}
		out[c+"|"+k+"|"+ws.UTC().Format(time.RFC3339)] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// narrowCellsSQL reads a narrow table's cells as they are stored.
func narrowCellsSQL(table string) string {
	return `SELECT customer_id, api_key_id, window_start, requests, client_errors, server_errors, toString(units),
    request_bytes, response_bytes, finalizeAggregation(client_ips_state),
    finalizeAggregation(latency_state)[1], finalizeAggregation(latency_state)[2], finalizeAggregation(latency_state)[3]
FROM ` + table + ` FINAL
WHERE customer_id IN {c:Array(String)} AND requests > 0`
}

// wideCellsSQL sums a wide table's rows over the dimensions the narrow
// tables do not have.
func wideCellsSQL(table string) string {
	return `SELECT customer_id, api_key_id, window_start, sum(requests), sum(client_errors), sum(server_errors), toString(sum(units)),
    sum(request_bytes), sum(response_bytes), uniqExactMerge(client_ips_state),
    quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_state)[1], quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_state)[2],
    quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_state)[3]
FROM ` + table + ` FINAL
WHERE customer_id IN {c:Array(String)}
GROUP BY customer_id, api_key_id, window_start
HAVING sum(requests) > 0`
}

// checkNarrowCells compares every narrow rollup level with the wide level
// summed and with a recount from the stored events: exact for requests,
// errors, units, bytes and distinct IPs, latency within the recount's
// tolerance.
func checkNarrowCells(t *testing.T, db store.Conn, gen *generator, when string) {
	t.Helper()
	stored := fetchStored(t, db, gen.customers)
	for i, wide := range aggregate.LevelTables {
		narrowTable := aggregate.NarrowTables[i]
		narrow := readCells(t, db, narrowCellsSQL(narrowTable), gen.customers)
		summed := readCells(t, db, wideCellsSQL(wide), gen.customers)
		want := map[string]*expectedRow{}
		for _, e := range stored {
			k := e.Customer + "|" + e.Key + "|" + levelFloor(i, e.Time).Format(time.RFC3339)
			r := want[k]
			if r == nil {
				r = &expectedRow{ips: map[string]bool{}}
				want[k] = r
			}
			r.requests++
			if e.Status >= 400 && e.Status < 500 {
				r.clientErrors++
			}
			if e.Status >= 500 {
				r.serverErrors++
			}
			r.micros += e.Micros
			r.reqBytes += e.ReqBytes
			r.respBytes += e.RespBytes
			if e.IP != "" {
				r.ips[e.IP] = true
			}
			r.latencies = append(r.latencies, e.LatencyMS)
		}
		var diffs []string
		for k, n := range narrow {
			if s, ok := summed[k]; !ok || s.exact() != n.exact() {
				diffs = append(diffs, fmt.Sprintf("%s %s: narrow %s, wide summed %s", narrowTable, k, n.exact(), s.exact()))
			}
			e := want[k]
			if e == nil {
				diffs = append(diffs, fmt.Sprintf("%s %s: %d requests, none recounted", narrowTable, k, n.requests))
				continue
			}
			micros, err := parseMicros(n.units)
			if err != nil {
				t.Fatal(err)
			}
			exp := fmt.Sprintf("requests=%d client_errors=%d server_errors=%d units=%d request_bytes=%d response_bytes=%d ips=%d",
				e.requests, e.clientErrors, e.serverErrors, e.micros, e.reqBytes, e.respBytes, len(e.ips))
			got := fmt.Sprintf("requests=%d client_errors=%d server_errors=%d units=%d request_bytes=%d response_bytes=%d ips=%d",
				n.requests, n.clientErrors, n.serverErrors, micros, n.reqBytes, n.respBytes, n.ips)
			if got != exp {
				diffs = append(diffs, fmt.Sprintf("%s %s:\n   got  %s\n   want %s (recount)", narrowTable, k, got, exp))
			}
			sorted := slices.Clone(e.latencies)
			sort.Float64s(sorted)
			for _, lq := range []struct{ q, est float64 }{{0.5, n.p50}, {0.95, n.p95}, {0.99, n.p99}} {
				if !latencyWithin(sorted, lq.q, lq.est) {
					diffs = append(diffs, fmt.Sprintf("%s %s: latency p%v = %v, exact %v", narrowTable, k, lq.q*100, lq.est, exactQuantile(sorted, lq.q)))
				}
			}
		}
		for k := range summed {
			if _, ok := narrow[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s %s: in %s, missing from the narrow table", narrowTable, k, wide))
			}
		}
		for k := range want {
			if _, ok := narrow[k]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s %s: recounted, missing from the narrow table", narrowTable, k))
			}
		}
		if len(narrow) == 0 {
			diffs = append(diffs, narrowTable+": no rows at all")
		}
		if n := len(diffs); n > 0 {
			sort.Strings(diffs)
			if n > 10 {
				diffs = append(diffs[:10], fmt.Sprintf("... %d more", n-10))
			}
			t.Errorf("%s: %s: %d differences:\n  %s", when, narrowTable, n, strings.Join(diffs, "\n  "))
		} else {
			t.Logf("%s: %s: %d cells equal to %s summed and to the recount", when, narrowTable, len(narrow), wide)
		}
	}
}

// narrowShapes are the queries the narrow rollups serve: no group, by
// customer, by key, by both, with a key filter; every window; three zones.
func narrowShapes(gen *generator, from, to time.Time) []aggregate.UsageQuery {
	var out []aggregate.UsageQuery
	zones := []string{"UTC", "Europe/Berlin", "Asia/Kolkata"}
	for _, zone := range zones {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			panic(err)
		}
		for _, w := range []aggregate.Window{aggregate.WindowMinute, aggregate.WindowHour, aggregate.WindowDay, aggregate.WindowMonth, aggregate.WindowTotal} {
			if w == aggregate.WindowMinute && zone != "UTC" {
				continue // minute windows are UTC windows whatever the zone
			}
			f := from
			if w == aggregate.WindowMinute {
				f = to.Add(-aggregate.MaxMinuteRange)
			}
			for _, gs := range [][]string{nil, {"api_key_id"}} {
				for _, c := range gen.customers[:2] {
					out = append(out, aggregate.UsageQuery{CustomerID: c, From: f, To: to, Window: w, GroupBy: gs, TZ: loc})
				}
				out = append(out, aggregate.UsageQuery{APIKeyID: gen.keys[0], From: f, To: to, Window: w, GroupBy: gs, TZ: loc})
				out = append(out, aggregate.UsageQuery{CustomerID: gen.customers[0], From: f, To: to, Window: w, GroupBy: gs, TZ: loc,
					Filters: map[string][]string{"api_key_id": {gen.keys[0], gen.keys[len(gen.customers)]}}})
			}
			// Every customer (the shared engine's other tests' too): the
			// narrow and the wide path must agree on all of them.
			out = append(out, aggregate.UsageQuery{AllCustomers: true, From: f, To: to, Window: w, GroupBy: []string{"customer_id"}, TZ: loc})
			if w == aggregate.WindowTotal || w == aggregate.WindowMonth {
				out = append(out, aggregate.UsageQuery{AllCustomers: true, From: f, To: to, Window: w, GroupBy: []string{"customer_id", "api_key_id"}, TZ: loc})
				out = append(out, aggregate.UsageQuery{AllCustomers: true, From: f, To: to, Window: w, TZ: loc})
			}
		}
	}
	return out
}

// checkNarrowShapes runs every narrow shape through the narrow path and
// the wide path, forced: the same rows, exactly equal but for latency,
// which must be within the recount's tolerance on both (the t-digest
// states merge in another order). The shapes of one customer or key are
// compared with the recount as well.
func checkNarrowShapes(t *testing.T, db store.Conn, gen *generator, from, to time.Time, when string) {
	t.Helper()
	stored := fetchStored(t, db, gen.customers)
	narrowQ := aggregate.NewQuerier(db)
	wideQ := aggregate.WideQuerier(narrowQ)
	var shapes []aggregate.UsageQuery
	for _, uq := range narrowShapes(gen, from, to) {
		// Without distinct IPs every shape reads the narrow rollups; with
		// them, window=total does.
		skip := uq
		skip.SkipDistinctIPs = true
		shapes = append(shapes, uq, skip)
	}
	failures := 0
	for _, uq := range shapes {
		desc := fmt.Sprintf("customer=%q key=%q all=%v window=%s group_by=%v filters=%v tz=%s skip_ips=%v", uq.CustomerID, uq.APIKeyID, uq.AllCustomers, uq.Window, uq.GroupBy, uq.Filters, uq.TZ, uq.SkipDistinctIPs)
		// Freshness is read by each call; the aggregator is idle, so both
		// read at the same watermark.
		nrows, err := narrowQ.Usage(testCtx(t), uq)
		if err != nil {
			t.Fatalf("%s: narrow %s: %v", when, desc, err)
		}
		wrows, err := wideQ.Usage(testCtx(t), uq)
		if err != nil {
			t.Fatalf("%s: wide %s: %v", when, desc, err)
		}
		var diffs []string
		if len(nrows) != len(wrows) {
			diffs = append(diffs, fmt.Sprintf("%d rows, wide path %d", len(nrows), len(wrows)))
		}
		for i := range min(len(nrows), len(wrows)) {
			n, w := nrows[i], wrows[i]
			lat := func(r *aggregate.UsageRow) {
				r.LatencyP50, r.LatencyP95, r.LatencyP99 = 0, 0, 0
			}
			nc, wc := n, w
			lat(&nc)
			lat(&wc)
			if fmt.Sprint(nc) != fmt.Sprint(wc) {
				diffs = append(diffs, fmt.Sprintf("row %d:\n   narrow %+v\n   wide   %+v", i, nc, wc))
			}
		}
		if uq.SkipDistinctIPs && len(diffs) == 0 {
			// The recount has the addresses: take them from the answer
			// with IPs, after checking the skipped ones are 0.
			full := uq
			full.SkipDistinctIPs = false
			frows, err := wideQ.Usage(testCtx(t), full)
			if err != nil || len(frows) != len(nrows) {
				t.Fatalf("%s: with IPs: %d rows, %v", desc, len(frows), err)
			}
			for i := range nrows {
				if nrows[i].DistinctClientIPs != 0 {
					diffs = append(diffs, fmt.Sprintf("row %d: %d distinct IPs, not skipped", i, nrows[i].DistinctClientIPs))
				}
				nrows[i].DistinctClientIPs, wrows[i].DistinctClientIPs = frows[i].DistinctClientIPs, frows[i].DistinctClientIPs
			}
		}
		if !uq.AllCustomers {
			want := recount(uq, stored, nil)
			diffs = append(diffs, compareUsage(uq, nrows, want)...)
			for _, d := range compareUsage(uq, wrows, want) {
				diffs = append(diffs, "wide path: "+d)
			}
		} else if len(nrows) == 0 {
			diffs = append(diffs, "no rows")
		}
		if len(diffs) > 0 {
			failures++
			if len(diffs) > 8 {
				diffs = append(diffs[:8], "...")
			}
			t.Errorf("%s: %s:\n  %s", when, desc, strings.Join(diffs, "\n  "))
			if failures > 5 {
				t.FailNow()
			}
		}
	}
	t.Logf("%s: %d query shapes answer the same on the narrow and the wide rollups", when, len(shapes))
}

// TestPropertyNarrowRollupsEqualWideAndRecount sends random streams
// (Zipf keys, 5-20 % duplicates in the same batch and re-sent later, late
// events into rolled-up windows, out of order) through Kafka and the real
// sink, and between waves restarts the aggregator, sometimes killing a
// tick half way (its context cancelled at a random instant, the watermark
// then not saved). After each wave, every narrow rollup level must equal
// the wide level summed over route, method, status class and gateway and
// a recount from the raw events, and every GET /v1/usage shape the narrow
// rollups serve must answer what the wide path answers.
func TestPropertyNarrowRollupsEqualWideAndRecount(t *testing.T) {
	db := requireDB(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", seedEnv, err)
		}
	}
	seedMsg := fmt.Sprintf("seed %d (rerun with %s=%d)", seed, seedEnv, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(seedMsg)
		}
	})
	p := newPipeline(t, db)
	gen := newGenerator(seed, testenv.Unique("narrow"), 3, 9)
	dupRate := 0.05 + gen.r.Float64()*0.15
	t.Logf("%s, duplicate rate %.0f %%", seedMsg, dupRate*100)
	start := time.Now().UTC()
	from, to := start.Add(-36*24*time.Hour-17*time.Second), start.Add(time.Hour+1234*time.Millisecond)

	var all []testEvent
	seen := map[string]bool{}
	killed := 0
	for i, w := range []wave{{fresh: 2000, dupRate: dupRate}, {fresh: 800, lateOld: 600, dupRate: dupRate}, {fresh: 500, lateOld: 500, dupRate: dupRate}} {
		evs := gen.wave(w, time.Now().UTC(), all)
		p.produce(t, evs)
		p.drain(t)
		for _, e := range evs {
			if !seen[e.ID] {
				all = append(all, e)
				seen[e.ID] = true
			}
		}
		// A restarted aggregator: nothing of the last one's memory. Its
		// first tick is killed at a random instant after wave 1.
		agg := aggregate.NewAggregator(testConfig, db, nil, quietLog())
		if i > 0 {
			ctx, cancel := context.WithTimeout(testCtx(t), time.Duration(20+gen.r.IntN(400))*time.Millisecond)
			if _, err := agg.Tick(ctx); err != nil {
				killed++
			}
			cancel()
			agg = aggregate.NewAggregator(testConfig, db, nil, quietLog())
		}
		st := tick(t, agg)
		t.Logf("wave %d: %d distinct events, %d messages produced, tick: %d dirty groups in %s", i+1, len(all), p.produced, st.DirtyGroups, st.Duration)
		when := fmt.Sprintf("%s, after wave %d", seedMsg, i+1)
		checkNarrowCells(t, db, gen, when)
		if i == 2 {
			checkNarrowShapes(t, db, gen, from, to, when)
		}
	}
	t.Logf("%d of 2 restarted aggregators' first ticks were killed half way", killed)
}
