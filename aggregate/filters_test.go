package aggregate_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// countingConn is the real engine with a count of the statements run
// through it, to show that a refused query runs nothing.
type countingConn struct {
	store.Conn
	queries atomic.Int64
}

func (c *countingConn) Query(ctx context.Context, q string, params ...store.Param) (store.Rows, error) {
	c.queries.Add(1)
	return c.Conn.Query(ctx, q, params...)
}

// TestFiltersTotalsAndAllCustomers compares filtered, whole-range and
// all-customer queries with the recount over raw events: rollups of every
// level (the range spans whole months, days and hours and cut edges) and
// raw events after the watermark.
func TestFiltersTotalsAndAllCustomers(t *testing.T) {
	db := requireDB(t)
	now := time.Now().UTC()
	gen := newGenerator(uint64(now.UnixNano()), testenv.Unique("flt"), 3, 7)
	start := now.AddDate(0, 0, -34)
	var evs []testEvent
	for range 4000 {
		evs = append(evs, gen.event(gen.between(start, now.Add(-time.Minute))))
	}
	insertEvents(t, db, evs)
	insertEvents(t, db, evs[:300]) // duplicates count once
	tick(t, aggregate.NewAggregator(testConfig, db, nil, quietLog()))
	// Events after the watermark are read from raw.
	var late []testEvent
	for range 200 {
		late = append(late, gen.event(now.Add(time.Duration(gen.r.IntN(50))*time.Second)))
	}
	insertEvents(t, db, late)
	stored := fetchStored(t, db, gen.customers)
	q := aggregate.NewQuerier(db)

	from := start.Add(-2 * time.Hour).Add(1234 * time.Millisecond) // cut edges
	to := now.Add(2 * time.Minute).Add(-777 * time.Millisecond)
	berlin := mustLoad(t, "Europe/Berlin")
	filterSets := []map[string][]string{
		nil,
		{"route": {"/v1/pets"}},
		{"method": {"GET", "POST"}},
		{"status_class": {"5xx"}},
		{"status_class": {"4xx", "5xx"}, "gateway": {"edge-eu"}},
		{"api_key_id": {gen.keys[0], gen.keys[3]}},
		{"route": {"/v1/orders", "/v1/search"}, "method": {"GET"}, "status_class": {"2xx"}, "gateway": {"edge-us", "edge-ap"}},
		{"gateway": {}}, // an empty list is no filter
	}
	groupSets := [][]string{nil, {"route"}, {"status_class", "gateway"}, {"api_key_id", "method"}}
	var queries []aggregate.UsageQuery
	for fi, f := range filterSets {
		for gi, g := range groupSets {
			for _, w := range []aggregate.Window{aggregate.WindowTotal, aggregate.WindowDay, aggregate.WindowHour} {
				if w == aggregate.WindowHour && (fi+gi)%3 != 0 {
					continue // hour rows of a third of the combinations keep the run short
				}
				c := gen.customers[(fi+gi)%len(gen.customers)]
				queries = append(queries, aggregate.UsageQuery{CustomerID: c, From: from, To: to, Window: w, GroupBy: g, Filters: f, TZ: berlin})
			}
		}
		queries = append(queries, aggregate.UsageQuery{APIKeyID: gen.keys[0], From: from, To: to, Window: aggregate.WindowTotal, Filters: f})
	}
	// All customers: this test's keys only (the engine is shared), as one
	// total and by customer.
	mine := map[string][]string{"api_key_id": gen.keys}
	queries = append(queries,
		aggregate.UsageQuery{AllCustomers: true, From: from, To: to, Window: aggregate.WindowTotal, Filters: mine},
		aggregate.UsageQuery{AllCustomers: true, From: from, To: to, Window: aggregate.WindowTotal, Filters: mine, GroupBy: []string{"customer_id"}},
		aggregate.UsageQuery{AllCustomers: true, From: from, To: to, Window: aggregate.WindowDay, Filters: map[string][]string{"api_key_id": gen.keys, "status_class": {"2xx"}},
			GroupBy: []string{"customer_id", "api_key_id"}},
	)
	for _, uq := range queries {
		rows, err := q.Usage(testCtx(t), uq)
		if err != nil {
			t.Fatalf("Usage(%+v): %v", uq, err)
		}
		want := recount(uq, stored, nil)
		if diffs := compareUsage(uq, rows, want); len(diffs) > 0 {
			if len(diffs) > 8 {
				diffs = append(diffs[:8], "...")
			}
			t.Errorf("customer=%q key=%q all=%v window=%s group_by=%v filters=%v: %d rows, want %d:\n  %s",
				uq.CustomerID, uq.APIKeyID, uq.AllCustomers, uq.Window, uq.GroupBy, uq.Filters, len(rows), len(want), strings.Join(diffs, "\n  "))
		}
		if uq.Window == aggregate.WindowTotal {
			for _, r := range rows {
				if !r.WindowStart.Equal(from) {
					t.Errorf("total row starts at %s, want from %s", r.WindowStart, from)
				}
			}
		}
	}
	t.Logf("%d filtered, total and all-customer queries compared with the recount", len(queries))

	// Without a key filter, the all-customer answer holds every other
	// customer's usage too; this test's customers' rows still equal the
	// recount, and a grand total is at least their sum.
	uq := aggregate.UsageQuery{AllCustomers: true, From: from, To: to, Window: aggregate.WindowTotal, GroupBy: []string{"customer_id"}}
	rows, err := q.Usage(testCtx(t), uq)
	if err != nil {
		t.Fatal(err)
	}
	var ours []aggregate.UsageRow
	for _, r := range rows {
		if slices.Contains(gen.customers, r.Group["customer_id"]) {
			ours = append(ours, r)
		}
	}
	if diffs := compareUsage(uq, ours, recount(uq, stored, nil)); len(diffs) > 0 {
		t.Errorf("all customers by customer_id:\n  %s", strings.Join(diffs, "\n  "))
	}
}

// TestFilterValuesHostile: bad filter values and dimensions are refused
// with a *ParamError naming the dimension before any statement runs; a
// value with quotes is bound as a parameter and matches nothing.
func TestFilterValuesHostile(t *testing.T) {
	db := &countingConn{Conn: requireDB(t)}
	q := aggregate.NewQuerier(db)
	now := time.Now().UTC()
	base := aggregate.UsageQuery{CustomerID: testenv.Unique("hostile"), From: now.Add(-time.Hour), To: now, Window: aggregate.WindowTotal}
	many := make([]string, aggregate.MaxFilterValues+1)
	for i := range many {
		many[i] = strings.Repeat("r", i+1)
	}
	cases := []struct {
		name    string
		filters map[string][]string
		param   string
	}{
		{"NUL", map[string][]string{"route": {"/v1/x\x00' OR 1=1"}}, "route"},
		{"10 KB", map[string][]string{"gateway": {strings.Repeat("g", 10<<10)}}, "gateway"},
		{"not UTF-8", map[string][]string{"method": {"GE\xffT"}}, "method"},
		{"empty value", map[string][]string{"status_class": {""}}, "status_class"},
		{"repeated value", map[string][]string{"method": {"GET", "GET"}}, "method"},
		{"too many values", map[string][]string{"route": many}, "route"},
		{"unknown dimension", map[string][]string{"customer_id); DROP TABLE events; --": {"x"}}, "filter"},
		{"not a filter", map[string][]string{"units": {"1"}}, "filter"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			uq := base
			uq.Filters = c.filters
			before := db.queries.Load()
			_, err := q.Usage(testCtx(t), uq)
			var pe *aggregate.ParamError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *ParamError", err)
			}
			if names := paramNames(err); !slices.Contains(names, c.param) {
				t.Fatalf("error %q names %v, want %q", err, names, c.param)
			}
			if len(err.Error()) > 400 {
				t.Errorf("message repeats the input: %d bytes", len(err.Error()))
			}
			if n := db.queries.Load() - before; n != 0 {
				t.Errorf("%d statements ran for a refused query", n)
			}
		})
	}
	// Every bad dimension is named at once.
	uq := base
	uq.Filters = map[string][]string{"route": {"\x00"}, "gateway": {strings.Repeat("g", 200)}}
	uq.Window = "week"
	if names := paramNames(uq.Validate()); !slices.Equal(names, []string{"window", "route", "gateway"}) {
		t.Errorf("names %v, want window, route, gateway", names)
	}
	// All customers only when asked for.
	if names := paramNames(aggregate.UsageQuery{From: base.From, To: base.To, Window: aggregate.WindowTotal}.Validate()); !slices.Equal(names, []string{"customer_id"}) {
		t.Errorf("no subject and no AllCustomers: names %v, want customer_id", names)
	}
	// Quotes and SQL are values like any other.
	uq = base
	uq.AllCustomers, uq.CustomerID = true, ""
	uq.Filters = map[string][]string{"route": {"' OR '1'='1", `") OR 1=1 --`}, "method": {"GET'; DROP TABLE events; --"}}
	rows, err := q.Usage(testCtx(t), uq)
	if err != nil || len(rows) != 0 {
		t.Fatalf("quoted values: %d rows, %v; want none and no error", len(rows), err)
	}
}

func paramNames(err error) []string {
	var names []string
	for _, pe := range paramErrors(err) {
		names = append(names, pe.Param)
	}
	return names
}
