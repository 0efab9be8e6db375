package aggregate_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
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
			if w == aggregate.WindowMonth && loc == time.UTC {
				// A whole UTC month in the range: usage_month serves it.
				f = time.Date(from.Year(), from.Month(), 1, 0, 0, 0, 0, time.UTC)
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

	// UnitsByCustomer, the limits view's read path, over the same range and
	// over one starting at a UTC month (so that usage_month serves a part).
	monthStart := time.Date(from.Year(), from.Month(), 1, 0, 0, 0, 0, time.UTC)
	for _, r := range [][2]time.Time{{from, to}, {monthStart, to}} {
		got, err := q.UnitsByCustomer(testCtx(t), r[0], r[1])
		if err != nil {
			t.Fatalf("%s: UnitsByCustomer: %v", seedMsg, err)
		}
		for _, c := range gen.customers {
			var want int64
			n := 0
			for _, e := range stored {
				if e.Customer == c && !e.Time.Before(r[0]) && e.Time.Before(r[1]) && (visible == nil || visible(e)) {
					want += e.Micros
					n++
				}
			}
			if _, ok := got[c]; ok != (n > 0) || math.Abs(got[c]-float64(want)/1e6) > 1e-6 {
				t.Errorf("%s: UnitsByCustomer [%s, %s) for %s = %v (present %v), want %d micro-units from %d events", seedMsg, r[0], r[1], c, got[c], ok, want, n)
			}
		}
	}
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
	physical := countRows(t, db, "SELECT count() FROM usage_minute WHERE customer_id IN {c:Array(String)}", store.P("c", gen.customers))

	tick(t, a)
	tick(t, a)
	checkAll(t, db, gen, from, to, utc, nil, "after two more ticks")
	// The windows were written again (inside the overlap) and replaced.
	if again := countRows(t, db, "SELECT count() FROM usage_minute WHERE customer_id IN {c:Array(String)}", store.P("c", gen.customers)); again <= physical {
		t.Logf("usage_minute rows: %d then %d (merges may have collapsed them)", physical, again)
	}
	final := countRows(t, db, "SELECT count() FROM usage_minute FINAL WHERE customer_id IN {c:Array(String)}", store.P("c", gen.customers))
	if final > physical {
		t.Errorf("usage_minute FINAL has %d rows after re-aggregation, %d before", final, physical)
	}

	// A late event in a rolled-up minute, and a re-sent copy of an event
	// that is already counted. The late event goes to the latest event of
	// the previous UTC month, so the tick recomputes that month from a day
	// in its middle, with earlier days of the month already rolled up.
	thisMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	target := evs[0]
	for _, e := range evs {
		if e.Time.Before(thisMonth) && (target.Time.After(thisMonth) || e.Time.After(target.Time)) {
			target = e
		}
	}
	late := gen.event(target.Time.Add(time.Millisecond))
	late.Customer, late.Key = target.Customer, target.Key
	insertEvents(t, db, []testEvent{late, target})
	w, err := aggregate.NewQuerier(db).Freshness(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	// Before the next tick the late event is not counted (it lies before
	// the frontier); nothing else changed.
	checkAll(t, db, gen, from, to, utc, visibleAt(w, idSet(evs)), "before the tick after a late event")
	// Without the overlap this tick sees only the two new rows: it
	// recomputes one minute, hour and day, and their month from rows that
	// earlier ticks wrote.
	tick(t, aggregate.NewAggregator(aggregate.Config{Interval: time.Second, Settle: time.Millisecond, Overlap: time.Millisecond}, db, nil, quietLog()))
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

// visibleAt says which events Usage counts when the watermark is w and
// rolledUp holds the ids stored before the tick that saved it: those, and
// every event read from raw (at or after w's minute); a late event stored
// after the tick is not counted yet. The ids come from the test, not from
// ingested_at: once the copies of a re-sent event merge, the row kept is
// the last one, stamped when the re-sent copy was stored.
func visibleAt(w time.Time, rolledUp map[string]bool) func(storedEvent) bool {
	frontier := w.Truncate(time.Minute)
	return func(e storedEvent) bool { return rolledUp[e.ID] || !e.Time.Before(frontier) }
}

// idSet returns the ids of evs.
func idSet(evs []testEvent) map[string]bool {
	m := make(map[string]bool, len(evs))
	for _, e := range evs {
		m[e.ID] = true
	}
	return m
}

// countRows runs a query that returns one count.
func countRows(t testing.TB, db store.Conn, sql string, params ...store.Param) uint64 {
	t.Helper()
	return testenv.Count(t, db, sql, params...)
}

// TestReplacedEventLeavesItsOldGroup re-sends an event (same customer, key,
// time and id, so the raw table keeps only the last copy) with another
// route: after the next tick its old route must not keep the count.
func TestReplacedEventLeavesItsOldGroup(t *testing.T) {
	db := requireDB(t)
	gen := newGenerator(uint64(time.Now().UnixNano()), testenv.Unique("moved"), 1, 1)
	e := gen.event(time.Now().UTC().Add(-2 * time.Hour))
	e.Route = "/v1/before"
	other := gen.event(e.Time.Add(time.Second))
	other.Key, other.Route = e.Key, "/v1/other"
	insertEvents(t, db, []testEvent{e, other})
	a := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	tick(t, a)
	moved := e
	moved.Route = "/v1/after"
	insertEvents(t, db, []testEvent{moved})
	tick(t, a)
	q := aggregate.NewQuerier(db)
	for _, w := range []aggregate.Window{aggregate.WindowMinute, aggregate.WindowHour, aggregate.WindowDay, aggregate.WindowMonth} {
		rows, err := q.Usage(testCtx(t), aggregate.UsageQuery{CustomerID: e.Customer, From: e.Time.Add(-time.Hour), To: e.Time.Add(time.Hour),
			Window: w, GroupBy: []string{"route"}})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint64{}
		for _, r := range rows {
			got[r.Group["route"]] += r.Requests
		}
		if fmt.Sprint(got) != "map[/v1/after:1 /v1/other:1]" {
			t.Errorf("window %s: requests by route %v, want /v1/after and /v1/other once each", w, got)
		}
	}
}

// failingConn is an engine that refuses every statement.
type failingConn struct{ store.Conn }

func (failingConn) Exec(context.Context, string, ...store.Param) error {
	return errors.New("injected failure")
}

func (failingConn) Query(context.Context, string, ...store.Param) (store.Rows, error) {
	return nil, errors.New("injected failure")
}

// ticks returns meterline_aggregate_ticks_total{result} from reg.
func ticks(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meterline_aggregate_ticks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestRunTicksUntilStoppedAndOutlivesErrors runs the loop against the
// engine and against one that fails every statement: Run keeps ticking
// (retrying with backoff) and returns nil when its context ends.
func TestRunTicksUntilStoppedAndOutlivesErrors(t *testing.T) {
	db := requireDB(t)
	for _, c := range []struct {
		name   string
		db     store.Conn
		result string
	}{{"working engine", db, "ok"}, {"failing engine", failingConn{db}, "error"}} {
		reg := prometheus.NewRegistry()
		a := aggregate.NewAggregator(aggregate.Config{Interval: 100 * time.Millisecond, Settle: time.Millisecond}, c.db, reg, quietLog())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		testenv.Eventually(t, 30*time.Second, func() error {
			if n := ticks(t, reg, c.result); n < 2 {
				return fmt.Errorf("%s: %v ticks with result %s", c.name, n, c.result)
			}
			return nil
		})
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run returned %v after its context ended", c.name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: Run did not return after its context ended", c.name)
		}
	}
}

// TestRollupRetentionIsConfigurable migrates a second database with a
// 3-month rollup retention and checks that every rollup table got it.
func TestRollupRetentionIsConfigurable(t *testing.T) {
	requireDB(t)
	if os.Getenv(testenv.EnvClickHouse) != "" {
		t.Skip("opens a second database on the embedded engine")
	}
	db, err := store.Open(testCtx(t), store.Config{DataDir: engine.DataDir, Database: "retention_3"}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := store.Migrate(testCtx(t), db, store.MigrateOptions{RollupRetentionMonths: 3}, quietLog()); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"usage_minute", "usage_hour", "usage_day", "usage_month"} {
		rows, err := db.Query(testCtx(t), "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}", store.P("t", table))
		if err != nil {
			t.Fatal(err)
		}
		var ddl string
		for rows.Next() {
			if err := rows.Scan(&ddl); err != nil {
				t.Fatal(err)
			}
		}
		rows.Close()
		if !strings.Contains(ddl, "TTL window_start + toIntervalMonth(3)") {
			t.Errorf("%s: %s", table, ddl)
		}
	}
}
