package aggregate_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// testConfig ticks with almost no settle time: tests wait until their
// inserts are visible before they tick.
var testConfig = aggregate.Config{Interval: time.Second, Settle: time.Millisecond}

// tick runs one tick and fails the test on error.
func tick(t testing.TB, a *aggregate.Aggregator) aggregate.TickStats {
	t.Helper()
	st, err := a.Tick(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkAll compares Usage with the recount for every window, for a few
// group_by sets, for each customer and for the busiest key of gen, over
// [from, to) in loc. visible filters the recount (nil: every event).
func checkAll(t *testing.T, db store.Conn, gen *generator, from, to time.Time, locs []*time.Location, visible func(storedEvent) bool, seedMsg string) {
	t.Helper()
	stored := fetchStored(t, db, gen.customers)
	q := aggregate.NewQuerier(db)
	groupSets := [][]string{nil, {"api_key_id"}, {"route"}, {"method"}, {"status_class"}, {"gateway"},
		{"route", "status_class"}, {"gateway", "method", "api_key_id"}, {"api_key_id", "route", "method", "status_class", "gateway"}}
	var queries []aggregate.UsageQuery
	for _, loc := range locs {
		for _, w := range []aggregate.Window{aggregate.WindowMinute, aggregate.WindowHour, aggregate.WindowDay, aggregate.WindowMonth} {
			f := from
			if w == aggregate.WindowMinute && to.Sub(f) > aggregate.MaxMinuteRange {
				f = to.Add(-aggregate.MaxMinuteRange)
			}
			for gi, gs := range groupSets {
				if w == aggregate.WindowMinute && len(gs) > 1 {
					continue // the single dimensions cover minute rows; keep the run short
				}
				for ci, c := range gen.customers {
					if (gi+ci)%2 == 1 && len(gs) > 0 {
						continue // every group set is checked for half the customers
					}
					queries = append(queries, aggregate.UsageQuery{CustomerID: c, From: f, To: to, Window: w, GroupBy: gs, TZ: loc})
				}
				if gi%3 == 0 {
					queries = append(queries, aggregate.UsageQuery{APIKeyID: gen.keys[0], From: f, To: to, Window: w, GroupBy: gs, TZ: loc})
					queries = append(queries, aggregate.UsageQuery{CustomerID: gen.customers[0], APIKeyID: gen.keys[0], From: f, To: to, Window: w, GroupBy: gs, TZ: loc})
				}
			}
		}
	}
	failures := 0
	for _, uq := range queries {
		rows, err := q.Usage(testCtx(t), uq)
		if err != nil {
			t.Fatalf("%s: Usage(%+v): %v", seedMsg, uq, err)
		}
		want := recount(uq, stored, visible)
		if diffs := compareUsage(uq, rows, want); len(diffs) > 0 {
			failures++
			if len(diffs) > 8 {
				diffs = append(diffs[:8], "...")
			}
			t.Errorf("%s: customer=%q key=%q window=%s group_by=%v tz=%s [%s, %s): %d rows, want %d:\n  %s", seedMsg,
				uq.CustomerID, uq.APIKeyID, uq.Window, uq.GroupBy, uq.TZ, uq.From.Format(time.RFC3339Nano), uq.To.Format(time.RFC3339Nano),
				len(rows), len(want), strings.Join(diffs, "\n  "))
			if failures > 5 {
				t.FailNow()
			}
		}
	}
	t.Logf("%d usage queries compared with the recount", len(queries))
}

// TestRecomputedWindowsNeverCountTwice rolls the same windows up again and
// again (ticks without new data, a late event into rolled-up windows, a
// duplicate of a rolled-up event) and checks the figures each time.
func TestRecomputedWindowsNeverCountTwice(t *testing.T) {
	db := requireDB(t)
	gen := newGenerator(uint64(time.Now().UnixNano()), testenv.Unique("twice"), 2, 4)
	now := time.Now().UTC()
	var evs []testEvent
	for range 300 {
		evs = append(evs, gen.event(gen.between(now.Add(-40*24*time.Hour), now.Add(-time.Minute))))
	}
	insertEvents(t, db, evs)
	a := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	from, to := now.Add(-45*24*time.Hour), now.Add(time.Hour)
	utc := []*time.Location{time.UTC}

	st := tick(t, a)
	if st.DirtyGroups < 1 {
		t.Fatalf("first tick found %d dirty groups", st.DirtyGroups)
	}
	checkAll(t, db, gen, from, to, utc, nil, "after the first tick")
	physical := countRows(t, db, "SELECT count() FROM usage_minute WHERE customer_id IN {c:Array(String)}", gen.customers)

	tick(t, a)
	tick(t, a)
	checkAll(t, db, gen, from, to, utc, nil, "after two more ticks")
	// The windows were written again (inside the overlap) and replaced.
	if again := countRows(t, db, "SELECT count() FROM usage_minute WHERE customer_id IN {c:Array(String)}", gen.customers); again <= physical {
		t.Logf("usage_minute rows: %d then %d (merges may have collapsed them)", physical, again)
	}
	final := countRows(t, db, "SELECT count() FROM usage_minute FINAL WHERE customer_id IN {c:Array(String)}", gen.customers)
	if final > physical {
		t.Errorf("usage_minute FINAL has %d rows after re-aggregation, %d before", final, physical)
	}

	// A late event in a rolled-up minute, and a re-sent copy of an event
	// that is already counted.
	late := gen.event(evs[0].Time.Add(time.Millisecond))
	late.Customer, late.Key = evs[0].Customer, evs[0].Key
	insertEvents(t, db, []testEvent{late, evs[1]})
	w, err := aggregate.NewQuerier(db).Freshness(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Before the next tick the late event is not counted (it lies before
	// the frontier); nothing else changed.
	checkAll(t, db, gen, from, to, utc, visibleAt(w), "before the tick after a late event")
	tick(t, a)
	checkAll(t, db, gen, from, to, utc, nil, "after the tick after a late event")
}

// TestTwoAggregatorsAtOnce runs two aggregators concurrently while events
// arrive; the rollups must still equal the recount.
func TestTwoAggregatorsAtOnce(t *testing.T) {
	db := requireDB(t)
	gen := newGenerator(uint64(time.Now().UnixNano()), testenv.Unique("two"), 2, 3)
	now := time.Now().UTC()
	a1 := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	a2 := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	for _, a := range []*aggregate.Aggregator{a1, a2} {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := a.Tick(ctx); err != nil && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 10 {
		var evs []testEvent
		for range 50 {
			evs = append(evs, gen.event(gen.between(now.Add(-3*24*time.Hour), now)))
		}
		insertEvents(t, db, evs)
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	tick(t, a1)
	checkAll(t, db, gen, now.Add(-4*24*time.Hour), now.Add(time.Minute), []*time.Location{time.UTC}, nil, "two aggregators")
}

// TestTickMetrics checks that a tick reports itself.
func TestTickMetrics(t *testing.T) {
	db := requireDB(t)
	reg := prometheus.NewRegistry()
	a := aggregate.NewAggregator(testConfig, db, reg, quietLog())
	st := tick(t, a)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				got[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil && m.GetLabel()[0].GetValue() == "ok":
				got[mf.GetName()] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"meterline_aggregate_ticks_total":                 1,
		"meterline_aggregate_tick_duration_seconds":       1,
		"meterline_aggregate_dirty_groups":                float64(st.DirtyGroups),
		"meterline_aggregate_watermark_timestamp_seconds": float64(st.Watermark.UnixMilli()) / 1000,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
}

// visibleAt says which events Usage counts when the watermark is w: all
// that the rollups hold (ingested by w) and all read from raw (at or after
// w's minute); a late event ingested after w is not counted yet.
func visibleAt(w time.Time) func(storedEvent) bool {
	frontier := w.Truncate(time.Minute)
	return func(e storedEvent) bool { return !e.Ingested.After(w) || !e.Time.Before(frontier) }
}

// countRows runs a count query over customers.
func countRows(t testing.TB, db store.Conn, sql string, customers []string) uint64 {
	t.Helper()
	rows, err := db.Query(testCtx(t), sql, store.P("c", customers))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var n uint64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
