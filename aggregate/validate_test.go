package aggregate_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
)

// paramErrors returns the *ParamError values joined in err.
func paramErrors(err error) []*aggregate.ParamError {
	var out []*aggregate.ParamError
	var walk func(error)
	walk = func(e error) {
		var pe *aggregate.ParamError
		if errors.As(e, &pe) && e == error(pe) {
			out = append(out, pe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

func TestValidateNamesTheParameter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ok := aggregate.UsageQuery{CustomerID: "acme", From: now.Add(-time.Hour), To: now, Window: aggregate.WindowHour}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid query: %v", err)
	}
	unaligned := ok
	unaligned.From, unaligned.To = now.Add(-90*time.Minute-123*time.Millisecond), now.Add(17*time.Second)
	if err := unaligned.Validate(); err != nil {
		t.Errorf("unaligned from/to must be accepted: %v", err)
	}
	cases := []struct {
		name  string
		mut   func(*aggregate.UsageQuery)
		param string
		text  string
	}{
		{"reversed range", func(q *aggregate.UsageQuery) { q.From, q.To = q.To, q.From }, "to", "before from"},
		{"empty range", func(q *aggregate.UsageQuery) { q.To = q.From }, "to", "empty"},
		{"huge range", func(q *aggregate.UsageQuery) { q.From = q.To.Add(-401 * 24 * time.Hour) }, "to", "at most 400 days"},
		{"minute range over 7 days", func(q *aggregate.UsageQuery) { q.Window, q.From = aggregate.WindowMinute, q.To.Add(-8*24*time.Hour) }, "to", "7 days"},
		{"missing from", func(q *aggregate.UsageQuery) { q.From = time.Time{} }, "from", "required"},
		{"missing to", func(q *aggregate.UsageQuery) { q.To = time.Time{} }, "to", "required"},
		{"year 1900", func(q *aggregate.UsageQuery) { q.From = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC) }, "from", "1970"},
		{"far future", func(q *aggregate.UsageQuery) { q.To = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC) }, "to", "1970"},
		{"unknown window", func(q *aggregate.UsageQuery) { q.Window = "week" }, "window", `"week"`},
		{"no window", func(q *aggregate.UsageQuery) { q.Window = "" }, "window", "required"},
		{"injection in group_by", func(q *aggregate.UsageQuery) { q.GroupBy = []string{"route);DROP TABLE events"} }, "group_by", "unknown"},
		{"unknown group_by", func(q *aggregate.UsageQuery) { q.GroupBy = []string{"units"} }, "group_by", "unknown"},
		{"repeated group_by", func(q *aggregate.UsageQuery) { q.GroupBy = []string{"route", "method", "route"} }, "group_by", "repeated"},
		{"no customer or key", func(q *aggregate.UsageQuery) { q.CustomerID = "" }, "customer_id", "required"},
		{"long key", func(q *aggregate.UsageQuery) { q.APIKeyID = strings.Repeat("k", 129) }, "api_key_id", "128"},
		{"NUL in customer", func(q *aggregate.UsageQuery) { q.CustomerID = "a\x00b" }, "customer_id", "NUL"},
		{"fixed zone", func(q *aggregate.UsageQuery) { q.TZ = time.FixedZone("UTC+2", 7200) }, "tz", "IANA"},
		{"local zone", func(q *aggregate.UsageQuery) { q.TZ = time.Local }, "tz", "local"},
	}
	for _, c := range cases {
		q := ok
		c.mut(&q)
		err := q.Validate()
		pes := paramErrors(err)
		if len(pes) == 0 {
			t.Errorf("%s: Validate() = %v, want a *ParamError", c.name, err)
			continue
		}
		if pes[0].Param != c.param || !strings.Contains(pes[0].Message, c.text) {
			t.Errorf("%s: got %s=%q, want %s mentioning %q", c.name, pes[0].Param, pes[0].Message, c.param, c.text)
		}
	}
	// Every bad parameter is reported at once.
	all := aggregate.UsageQuery{Window: "fortnight", GroupBy: []string{"x", "x"}}
	names := map[string]bool{}
	for _, pe := range paramErrors(all.Validate()) {
		names[pe.Param] = true
	}
	for _, p := range []string{"customer_id", "from", "to", "window", "group_by"} {
		if !names[p] {
			t.Errorf("Validate of an all-bad query does not name %s: %v", p, all.Validate())
		}
	}
}

func TestParseTZ(t *testing.T) {
	for _, name := range []string{"", "UTC", "Europe/Berlin", "Asia/Kolkata"} {
		if _, err := aggregate.ParseTZ(name); err != nil {
			t.Errorf("ParseTZ(%q): %v", name, err)
		}
	}
	for _, name := range []string{"Local", "Mars/Olympus", "../../etc/passwd", "Europe/Berlin'); DROP TABLE events; --", "/etc/localtime"} {
		_, err := aggregate.ParseTZ(name)
		var pe *aggregate.ParamError
		if !errors.As(err, &pe) || pe.Param != "tz" {
			t.Errorf("ParseTZ(%q) = %v, want a tz *ParamError", name, err)
		}
	}
}

// TestBadQueriesTouchNothing sends hostile and invalid queries through
// Usage: each fails with a *ParamError and the tables are intact after.
// It also checks tenant isolation: a key queried under another customer
// gets no rows.
func TestBadQueriesTouchNothing(t *testing.T) {
	db := requireDB(t)
	gen := newGenerator(uint64(time.Now().UnixNano()), testenv.Unique("hostile"), 2, 2)
	now := time.Now().UTC()
	evs := []testEvent{gen.event(now.Add(-time.Hour)), gen.event(now.Add(-2 * time.Hour))}
	evs[0].Key, evs[0].Customer = gen.keys[0], gen.customers[0]
	evs[1].Key, evs[1].Customer = gen.keys[1], gen.customers[1]
	insertEvents(t, db, evs)
	tick(t, aggregate.NewAggregator(testConfig, db, nil, quietLog()))
	tables := []string{"events", "usage_minute", "usage_hour", "usage_day", "usage_month", "aggregate_state"}
	before := map[string]uint64{}
	// FINAL: every table here is a ReplacingMergeTree, whose physical row
	// count drops whenever a background merge collapses versions.
	for _, tb := range tables {
		before[tb] = countRows(t, db, "SELECT count() FROM "+tb+" FINAL")
	}
	q := aggregate.NewQuerier(db)
	base := aggregate.UsageQuery{CustomerID: gen.customers[0], From: now.Add(-24 * time.Hour), To: now, Window: aggregate.WindowHour}
	bad := []func(*aggregate.UsageQuery){
		func(q *aggregate.UsageQuery) { q.GroupBy = []string{"route);DROP TABLE events"} },
		func(q *aggregate.UsageQuery) { q.GroupBy = []string{"route", "route"} },
		func(q *aggregate.UsageQuery) { q.Window = "hour') UNION ALL SELECT * FROM events --" },
		func(q *aggregate.UsageQuery) { q.From, q.To = q.To, q.From },
		func(q *aggregate.UsageQuery) { q.From = q.To.Add(-1000 * 24 * time.Hour) },
		func(q *aggregate.UsageQuery) { q.CustomerID = "" },
	}
	for i, mut := range bad {
		uq := base
		mut(&uq)
		rows, err := q.Usage(testCtx(t), uq)
		if len(paramErrors(err)) == 0 || rows != nil {
			t.Errorf("bad query %d: rows %v, err %v; want a *ParamError", i, rows, err)
		}
	}
	// Hostile values in bound parameters are just values: no rows.
	for _, id := range []string{"x' OR 1=1 --", `\N`, "acme\ttab\nnewline", "' UNION ALL SELECT 1 --"} {
		uq := base
		uq.CustomerID = id
		rows, err := q.Usage(testCtx(t), uq)
		if err != nil || len(rows) != 0 {
			t.Errorf("customer %q: %d rows, %v", id, len(rows), err)
		}
	}
	// Tenant isolation: customer 0 asking for customer 1's key sees nothing.
	uq := base
	uq.APIKeyID = gen.keys[1]
	if rows, err := q.Usage(testCtx(t), uq); err != nil || len(rows) != 0 {
		t.Errorf("another customer's key: %d rows, %v", len(rows), err)
	}
	uq.APIKeyID = gen.keys[0]
	if rows, err := q.Usage(testCtx(t), uq); err != nil || len(rows) != 1 || rows[0].Requests != 1 {
		t.Errorf("own key: %+v, %v", rows, err)
	}
	for _, tb := range tables {
		if n := countRows(t, db, "SELECT count() FROM "+tb+" FINAL"); n != before[tb] {
			t.Errorf("table %s: %d rows, %d before", tb, n, before[tb])
		}
	}
}
