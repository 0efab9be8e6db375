package aggregate_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// lastDSTSwitch returns the latest instant at least two days ago at which
// loc's UTC offset changed, searching back a year.
func lastDSTSwitch(t *testing.T, loc *time.Location, now time.Time) time.Time {
	t.Helper()
	for h := 48; h < 365*24; h++ {
		a := now.Add(-time.Duration(h+1) * time.Hour)
		b := now.Add(-time.Duration(h) * time.Hour)
		_, oa := a.In(loc).Zone()
		_, ob := b.In(loc).Zone()
		if oa != ob {
			return b.Truncate(time.Hour)
		}
	}
	t.Fatalf("%s has no offset change in the last year", loc)
	return time.Time{}
}

// TestTimeZonesAcrossDST checks day, month and hour windows in zones with
// a DST switch in the range (Europe/Berlin, America/St_Johns at -03:30)
// and with offsets that are not whole hours (Asia/Kolkata +05:30,
// Asia/Kathmandu +05:45), with events dense around the switch and around
// local midnights, against the recount bucketed by Go's calendar.
func TestTimeZonesAcrossDST(t *testing.T) {
	db := requireDB(t)
	berlin := mustLoad(t, "Europe/Berlin")
	zones := []*time.Location{berlin, mustLoad(t, "Asia/Kolkata"), mustLoad(t, "America/St_Johns"), mustLoad(t, "Asia/Kathmandu"), time.UTC}
	now := time.Now().UTC()
	sw := lastDSTSwitch(t, berlin, now)
	gen := newGenerator(uint64(now.UnixNano()), testenv.Unique("tz"), 2, 3)
	var evs []testEvent
	for range 3000 {
		evs = append(evs, gen.event(gen.between(sw.Add(-3*24*time.Hour), sw.Add(3*24*time.Hour))))
	}
	// Events right at and around local midnights and the switch itself.
	for _, loc := range zones {
		l := sw.In(loc)
		for d := -3; d <= 3; d++ {
			mid := time.Date(l.Year(), l.Month(), l.Day()+d, 0, 0, 0, 0, loc)
			for _, off := range []time.Duration{-time.Millisecond, 0, time.Millisecond, 30 * time.Minute, -30 * time.Minute} {
				evs = append(evs, gen.event(mid.Add(off)))
			}
		}
	}
	for _, off := range []time.Duration{-time.Hour - time.Millisecond, -time.Millisecond, 0, time.Millisecond, time.Hour} {
		evs = append(evs, gen.event(sw.Add(off)))
	}
	insertEvents(t, db, evs)
	tick(t, aggregate.NewAggregator(testConfig, db, nil, quietLog()))
	t.Logf("Europe/Berlin switched at %s; %d events around it", sw, len(evs))

	stored := fetchStored(t, db, gen.customers)
	q := aggregate.NewQuerier(db)
	ranges := [][2]time.Time{
		{sw.Add(-4 * 24 * time.Hour).Add(7 * time.Second), sw.Add(4 * 24 * time.Hour).Add(-3 * time.Second)}, // cut windows
		{sw.Add(-40 * 24 * time.Hour), sw.Add(40 * 24 * time.Hour)},                                          // whole windows
	}
	for _, loc := range zones {
		l := sw.In(loc)
		// Exactly the local day of the switch.
		ranges = append(ranges, [2]time.Time{time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc), time.Date(l.Year(), l.Month(), l.Day()+1, 0, 0, 0, 0, loc)})
	}
	n := 0
	for _, loc := range zones {
		for _, r := range ranges {
			for _, w := range []aggregate.Window{aggregate.WindowHour, aggregate.WindowDay, aggregate.WindowMonth} {
				for _, gs := range [][]string{nil, {"status_class"}} {
					uq := aggregate.UsageQuery{CustomerID: gen.customers[0], From: r[0], To: r[1], Window: w, GroupBy: gs, TZ: loc}
					rows, err := q.Usage(testCtx(t), uq)
					if err != nil {
						t.Fatal(err)
					}
					n++
					if diffs := compareUsage(uq, rows, recount(uq, stored, nil)); len(diffs) > 0 {
						t.Errorf("window=%s tz=%s [%s, %s) group_by=%v: %s", w, loc, r[0], r[1], gs, fmt.Sprint(diffs))
					}
					if w == aggregate.WindowDay && loc == berlin && len(gs) == 0 {
						checkDSTDayLength(t, rows, sw)
					}
				}
			}
		}
	}
	t.Logf("%d zone queries compared with the recount", n)
}

// checkDSTDayLength makes sure the Berlin day of the switch is a 23- or
// 25-hour window: the row after it starts that long after it.
func checkDSTDayLength(t *testing.T, rows []aggregate.UsageRow, sw time.Time) {
	t.Helper()
	for i := 0; i+1 < len(rows); i++ {
		a, b := rows[i].WindowStart, rows[i+1].WindowStart
		if !a.After(sw) && b.After(sw) && b.Sub(a) < 48*time.Hour {
			if d := b.Sub(a); d != 23*time.Hour && d != 25*time.Hour {
				t.Errorf("the Berlin day of the DST switch runs %s to %s (%s)", a, b, d)
			}
			return
		}
	}
}

// TestRetentionTTL stores raw events 13 months old and recent ones, rolls
// them up into every level, forces merges, and checks that the old rows are
// gone from raw and every rollup while the recent ones stay.
func TestRetentionTTL(t *testing.T) {
	db := requireDB(t)
	now := time.Now().UTC()
	gen := newGenerator(uint64(now.UnixNano()), testenv.Unique("ttl"), 1, 1)
	old := now.AddDate(0, -13, 0)
	var evs []testEvent
	for i := range 20 {
		evs = append(evs, gen.event(old.Add(time.Duration(i)*time.Minute)), gen.event(now.Add(-time.Duration(i+1)*time.Minute)))
	}
	tables := []struct{ table, col string }{
		{"events", "time"}, {"usage_minute", "window_start"}, {"usage_hour", "window_start"},
		{"usage_day", "window_start"}, {"usage_month", "window_start"},
	}
	// The engine schedules a TTL merge as soon as a part with expired rows
	// is written, which would delete them before the test sees them (and
	// before the tick rolls them up). Holding TTL merges back also keeps
	// OPTIMIZE from applying the TTL, which the test checks first.
	for _, tb := range tables {
		if err := db.Exec(testCtx(t), "SYSTEM STOP TTL MERGES "+tb.table); err != nil {
			t.Fatal(err)
		}
	}
	ttlStopped := true
	startTTL := func() {
		if !ttlStopped {
			return
		}
		ttlStopped = false
		for _, tb := range tables {
			if err := db.Exec(testCtx(t), "SYSTEM START TTL MERGES "+tb.table); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(startTTL)
	insertEvents(t, db, evs)
	tick(t, aggregate.NewAggregator(testConfig, db, nil, quietLog()))
	counts := func() (oldRows, recentRows map[string]uint64) {
		oldRows, recentRows = map[string]uint64{}, map[string]uint64{}
		for _, tb := range tables {
			// Fixed table and column names from the list above.
			oldRows[tb.table] = countRows(t, db, "SELECT count() FROM "+tb.table+" WHERE customer_id IN {c:Array(String)} AND "+tb.col+" < now() - INTERVAL 12 MONTH", store.P("c", gen.customers))
			recentRows[tb.table] = countRows(t, db, "SELECT count() FROM "+tb.table+" WHERE customer_id IN {c:Array(String)} AND "+tb.col+" >= now() - INTERVAL 12 MONTH", store.P("c", gen.customers))
		}
		return
	}
	before, _ := counts()
	t.Logf("rows older than 12 months before the merge: %v", before)
	for _, tb := range tables {
		if before[tb.table] == 0 {
			t.Errorf("%s: no old rows before the merge; the test would prove nothing", tb.table)
		}
	}
	optimize := func() {
		for _, tb := range tables {
			if err := db.Exec(testCtx(t), "OPTIMIZE TABLE "+tb.table+" FINAL"); err != nil {
				t.Fatal(err)
			}
		}
	}
	optimize()
	if held, _ := counts(); fmt.Sprint(held) != fmt.Sprint(before) {
		t.Fatalf("rows changed by a merge while TTL merges were stopped: %v, then %v", before, held)
	}
	startTTL()
	optimize()
	after, recent := counts()
	for _, tb := range tables {
		if after[tb.table] != 0 {
			t.Errorf("%s: %d rows older than 12 months remain after OPTIMIZE FINAL", tb.table, after[tb.table])
		}
		if recent[tb.table] == 0 {
			t.Errorf("%s: the recent rows are gone too", tb.table)
		}
	}
	rows, err := aggregate.NewQuerier(db).Usage(testCtx(t), aggregate.UsageQuery{CustomerID: gen.customers[0],
		From: now.Add(-24 * time.Hour), To: now.Add(time.Minute), Window: aggregate.WindowDay})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		n += r.Requests
	}
	if n != 20 {
		t.Errorf("after the merge, the recent day shows %d requests, want 20", n)
	}
}
