package aggregate

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var levelNames = [numLevels]string{"raw", "minute", "hour", "day", "month"}

// describe renders a plan as "level [from, to)" lines, coarsest first.
func (p *plan) describe() []string {
	var out []string
	for l := levelMonth; l >= levelRaw; l-- {
		for _, s := range p[l] {
			out = append(out, fmt.Sprintf("%s [%s, %s)", levelNames[l], s.from.UTC().Format(time.RFC3339Nano), s.to.UTC().Format(time.RFC3339Nano)))
		}
	}
	return out
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func usagePlan(from, to time.Time, w Window, loc *time.Location, frontier time.Time) plan {
	return makePlan(windowBounds(from, to, w, loc), frontier, windowLevel[w])
}

// TestPlanChoosesTables pins down which table serves which range for a
// given frontier T, window and zone.
func TestPlanChoosesTables(t *testing.T) {
	berlin, kolkata := mustLoc(t, "Europe/Berlin"), mustLoc(t, "Asia/Kolkata")
	T := mustTime(t, "2026-03-30T12:34:00Z")
	cases := []struct {
		name     string
		from, to string
		w        Window
		loc      *time.Location
		frontier time.Time
		want     []string
	}{
		{"hourly, aligned: hours up to T's hour, minutes up to T, raw after",
			"2026-03-01T00:00:00Z", "2026-03-31T00:00:00Z", WindowHour, time.UTC, T, []string{
				"hour [2026-03-01T00:00:00Z, 2026-03-30T12:00:00Z)",
				"minute [2026-03-30T12:00:00Z, 2026-03-30T12:34:00Z)",
				"raw [2026-03-30T12:34:00Z, 2026-03-31T00:00:00Z)",
			}},
		{"hourly, cut edges: finer tables and raw seconds at both ends",
			"2026-03-01T10:30:15.5Z", "2026-03-02T08:20:30Z", WindowHour, time.UTC, T, []string{
				"hour [2026-03-01T11:00:00Z, 2026-03-02T08:00:00Z)",
				"minute [2026-03-01T10:31:00Z, 2026-03-01T11:00:00Z)",
				"minute [2026-03-02T08:00:00Z, 2026-03-02T08:20:00Z)",
				"raw [2026-03-01T10:30:15.5Z, 2026-03-01T10:31:00Z)",
				"raw [2026-03-02T08:20:00Z, 2026-03-02T08:20:30Z)",
			}},
		{"daily UTC: days, then the hours and minutes of T's day",
			"2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", WindowDay, time.UTC, T, []string{
				"day [2026-03-01T00:00:00Z, 2026-03-30T00:00:00Z)",
				"hour [2026-03-30T00:00:00Z, 2026-03-30T12:00:00Z)",
				"minute [2026-03-30T12:00:00Z, 2026-03-30T12:34:00Z)",
				"raw [2026-03-30T12:34:00Z, 2026-04-01T00:00:00Z)",
			}},
		{"monthly UTC: whole months from usage_month",
			"2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z", WindowMonth, time.UTC, T, []string{
				"month [2026-01-01T00:00:00Z, 2026-03-01T00:00:00Z)",
				"day [2026-03-01T00:00:00Z, 2026-03-30T00:00:00Z)",
				"hour [2026-03-30T00:00:00Z, 2026-03-30T12:00:00Z)",
				"minute [2026-03-30T12:00:00Z, 2026-03-30T12:34:00Z)",
				"raw [2026-03-30T12:34:00Z, 2026-04-01T00:00:00Z)",
			}},
		{"daily Berlin across the March 2026 DST switch: hours, never UTC days",
			"2026-03-25T00:00:00+01:00", "2026-03-31T00:00:00+02:00", WindowDay, berlin, T, []string{
				"hour [2026-03-24T23:00:00Z, 2026-03-30T12:00:00Z)",
				"minute [2026-03-30T12:00:00Z, 2026-03-30T12:34:00Z)",
				"raw [2026-03-30T12:34:00Z, 2026-03-30T22:00:00Z)",
			}},
		{"daily Kolkata, 2 days: hours inside each local day, minutes around local midnight",
			"2026-03-01T00:00:00+05:30", "2026-03-03T00:00:00+05:30", WindowDay, kolkata, T, []string{
				"hour [2026-02-28T19:00:00Z, 2026-03-01T18:00:00Z)",
				"hour [2026-03-01T19:00:00Z, 2026-03-02T18:00:00Z)",
				"minute [2026-02-28T18:30:00Z, 2026-02-28T19:00:00Z)",
				"minute [2026-03-01T18:00:00Z, 2026-03-01T19:00:00Z)",
				"minute [2026-03-02T18:00:00Z, 2026-03-02T18:30:00Z)",
			}},
		{"daily Kolkata, 29 days: too many pieces, minutes throughout",
			"2026-03-01T00:00:00+05:30", "2026-03-30T00:00:00+05:30", WindowDay, kolkata, T, []string{
				"minute [2026-02-28T18:30:00Z, 2026-03-29T18:30:00Z)",
			}},
		{"no watermark yet: everything from raw",
			"2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", WindowHour, time.UTC, time.Time{}, []string{
				"raw [2026-03-01T00:00:00Z, 2026-03-02T00:00:00Z)",
			}},
		{"range after T: raw only",
			"2026-03-30T13:00:00Z", "2026-03-30T14:00:00Z", WindowMinute, time.UTC, T, []string{
				"raw [2026-03-30T13:00:00Z, 2026-03-30T14:00:00Z)",
			}},
	}
	for _, c := range cases {
		p := usagePlan(mustTime(t, c.from), mustTime(t, c.to), c.w, c.loc, c.frontier)
		if got := p.describe(); !slices.Equal(got, c.want) {
			t.Errorf("%s:\n got  %s\n want %s", c.name, strings.Join(got, "\n      "), strings.Join(c.want, "\n      "))
		}
	}
}

// TestPlanCoversEachInstantOnce is the planner's property, over random
// ranges, frontiers, windows and zones: the ranges are disjoint, cover
// [from, to) exactly, never reach past the frontier with a rollup, are
// aligned to their level, and no rollup window straddles a window bucket
// boundary (so bucketing its start in SQL is right).
func TestPlanCoversEachInstantOnce(t *testing.T) {
	zones := []*time.Location{time.UTC, mustLoc(t, "Europe/Berlin"), mustLoc(t, "Asia/Kolkata"), mustLoc(t, "America/St_Johns"), mustLoc(t, "Asia/Kathmandu"), mustLoc(t, "Australia/Lord_Howe")}
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 1))
	base := mustTime(t, "2026-01-01T00:00:00Z")
	for i := range 3000 {
		w := []Window{WindowMinute, WindowHour, WindowDay, WindowMonth}[r.IntN(4)]
		loc := zones[r.IntN(len(zones))]
		maxLen := int64(MaxRange)
		if w == WindowMinute {
			maxLen = int64(MaxMinuteRange)
		}
		from := base.Add(time.Duration(r.Int64N(int64(300 * 24 * time.Hour))))
		if r.IntN(3) == 0 {
			from = from.Truncate(time.Hour)
		}
		to := from.Add(time.Duration(1 + r.Int64N(maxLen)))
		frontier := from.Add(time.Duration(r.Int64N(int64(to.Sub(from)) * 3 / 2))).Truncate(time.Minute)
		if r.IntN(10) == 0 {
			frontier = time.Time{}
		}
		bounds := windowBounds(from, to, w, loc)
		p := makePlan(bounds, frontier, windowLevel[w])
		ctx := fmt.Sprintf("seed %d case %d: %s in %s [%s, %s) T=%s", seed, i, w, loc, from, to, frontier)
		if p.count() > maxPlanSpans {
			t.Fatalf("%s: %d ranges", ctx, p.count())
		}
		var all []span
		for l := range p {
			for _, s := range p[l] {
				all = append(all, s)
				if level(l) == levelRaw {
					continue
				}
				if !s.from.Equal(floorUTC(level(l), s.from)) || !s.to.Equal(floorUTC(level(l), s.to)) {
					t.Fatalf("%s: %s range %v not aligned", ctx, levelNames[l], s)
				}
				if s.to.After(frontier) {
					t.Fatalf("%s: %s range %v reaches past the frontier", ctx, levelNames[l], s)
				}
				for _, b := range bounds {
					if b.After(s.from) && b.Before(s.to) && !b.Equal(floorUTC(level(l), b)) {
						t.Fatalf("%s: bucket boundary %s cuts a %s window of %v", ctx, b, levelNames[l], s)
					}
				}
			}
		}
		slices.SortFunc(all, func(a, b span) int { return a.from.Compare(b.from) })
		at := from
		for _, s := range all {
			if !s.from.Equal(at) || !s.from.Before(s.to) {
				t.Fatalf("%s: gap or overlap at %s: %s", ctx, at, strings.Join(p.describe(), "; "))
			}
			at = s.to
		}
		if !at.Equal(to) {
			t.Fatalf("%s: coverage ends at %s: %s", ctx, at, strings.Join(p.describe(), "; "))
		}
	}
}

// TestUsageSQLBindsEveryValue checks that request values reach the
// statement only as parameters and group_by only as fixed columns.
func TestUsageSQLBindsEveryValue(t *testing.T) {
	hostile := "acme'); DROP TABLE events; --"
	uq := UsageQuery{CustomerID: hostile, APIKeyID: hostile + "k", From: mustTime(t, "2026-03-01T10:30:15Z"), To: mustTime(t, "2026-03-09T00:00:00Z"),
		Window: WindowDay, GroupBy: []string{"status_class", "route"}, TZ: mustLoc(t, "Europe/Berlin")}
	if err := uq.Validate(); err != nil {
		t.Fatal(err)
	}
	sql, params := buildUsageSQL(uq, mustTime(t, "2026-03-05T12:00:00Z"), false)
	for _, bad := range []string{hostile, "DROP", "Europe/Berlin"} {
		if strings.Contains(sql, bad) {
			t.Errorf("the statement contains %q:\n%s", bad, sql)
		}
	}
	got := map[string]any{}
	for _, p := range params {
		got[p.Name] = p.Value
		if !strings.Contains(sql, "{"+p.Name+":") {
			t.Errorf("parameter %s is not used", p.Name)
		}
	}
	if got["customer_id"] != hostile || got["api_key_id"] != hostile+"k" || got["tz"] != "Europe/Berlin" {
		t.Errorf("parameters: %v", got)
	}
	for _, want := range []string{"status_class AS g0", statusClassExpr + " AS g0", "route AS g1", "toStartOfDay(ws, {tz:String})", "FROM usage_hour FINAL", "FROM events FINAL"} {
		if !strings.Contains(sql, want) {
			t.Errorf("the statement lacks %q:\n%s", want, sql)
		}
	}
	if strings.Contains(sql, "usage_day") {
		t.Errorf("Berlin days must not read UTC day rows:\n%s", sql)
	}
}

// TestUsageSQLPicksTheNarrowRollups checks which tables a query reads: the
// narrow rollups exactly when it neither groups nor filters by a wide
// dimension, leaves distinct IPs out or has one window over the range (and
// the wide path is not forced), and the client-IP states only when they
// are asked for.
func TestUsageSQLPicksTheNarrowRollups(t *testing.T) {
	base := UsageQuery{CustomerID: "c", From: mustTime(t, "2026-01-03T10:30:15Z"), To: mustTime(t, "2026-03-09T00:00:00Z"), TZ: time.UTC}
	cases := []struct {
		name    string
		window  Window
		groupBy []string
		filters map[string][]string
		wide    bool
		narrow  bool
	}{
		{"no group", WindowDay, nil, nil, false, true},
		{"by key", WindowHour, []string{"api_key_id"}, nil, false, true},
		{"by customer and key", WindowTotal, []string{"customer_id", "api_key_id"}, nil, false, true},
		{"key filter", WindowMonth, nil, map[string][]string{"api_key_id": {"k"}}, false, true},
		{"forced wide", WindowDay, nil, nil, true, false},
		{"by route", WindowDay, []string{"route"}, nil, false, false},
		{"by key and gateway", WindowDay, []string{"api_key_id", "gateway"}, nil, false, false},
		{"method filter", WindowDay, nil, map[string][]string{"method": {"GET"}}, false, false},
		{"status filter", WindowTotal, []string{"api_key_id"}, map[string][]string{"status_class": {"5xx"}}, false, false},
	}
	for _, c := range cases {
		for _, skip := range []bool{false, true} {
			uq := base
			uq.Window, uq.GroupBy, uq.Filters, uq.SkipDistinctIPs = c.window, c.groupBy, c.filters, skip
			if err := uq.Validate(); err != nil {
				t.Fatal(err)
			}
			sql, _ := buildUsageSQL(uq, mustTime(t, "2026-03-05T12:34:00Z"), c.wide)
			// Per-window distinct IPs stay on the wide rollups.
			wantNarrow := c.narrow && (skip || c.window == WindowTotal)
			for l := levelMinute; l < numLevels; l++ {
				wide := strings.Contains(sql, "FROM "+levelTables[l]+" FINAL")
				narrow := strings.Contains(sql, "FROM "+narrowTables[l]+" FINAL")
				if wide && wantNarrow || narrow && !wantNarrow {
					t.Errorf("%s (skip IPs %v): reads %s (narrow %v, wide %v), want narrow %v:\n%s", c.name, skip, levelTables[l], narrow, wide, wantNarrow, sql)
				}
			}
			top := levelDay
			if c.window == WindowHour {
				top = levelHour
			}
			if !strings.Contains(sql, "FROM events FINAL") || !strings.Contains(sql, "FROM "+narrowTables[top]+" FINAL") && !strings.Contains(sql, "FROM "+levelTables[top]+" FINAL") {
				t.Errorf("%s: the plan should read raw and %s rows:\n%s", c.name, levelTables[top], sql)
			}
			if got := strings.Contains(sql, "client_ips_state") || strings.Contains(sql, "uniqExact"); got == skip {
				t.Errorf("%s: SkipDistinctIPs %v, statement reads client IPs %v:\n%s", c.name, skip, got, sql)
			}
		}
	}
}

func TestWindowBoundsFollowTheZone(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	from, to := mustTime(t, "2026-03-28T12:00:00+01:00"), mustTime(t, "2026-03-31T06:00:00+02:00")
	got := windowBounds(from, to, WindowDay, berlin)
	want := []string{"2026-03-28T11:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", "2026-03-30T22:00:00Z", "2026-03-31T04:00:00Z"}
	var gs []string
	for _, b := range got {
		gs = append(gs, b.UTC().Format(time.RFC3339))
	}
	if !slices.Equal(gs, want) {
		t.Errorf("Berlin day bounds %v, want %v (the 29th has 23 hours)", gs, want)
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := Config{}.WithDefaults()
	if c.Interval != 10*time.Second || c.Settle != 5*time.Second || c.Overlap != 2*time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	err := Config{Interval: time.Millisecond, Settle: -time.Second, Overlap: 48 * time.Hour}.Validate()
	for _, name := range []string{"aggregate.interval", "aggregate.settle", "aggregate.overlap"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("Validate does not report %s: %v", name, err)
		}
	}
}

func TestCutSlicesKeepsWholeDays(t *testing.T) {
	d := func(i int) time.Time { return time.Date(2026, 3, 1+i, 0, 0, 0, 0, time.UTC) }
	days := []dayGroups{{d(0), 100}, {d(1), 300}, {d(2), 250}, {d(5), 1200}, {d(6), 50}, {d(7), 60}}
	got := cutSlices(days, 500)
	var desc []string
	for _, s := range got {
		desc = append(desc, fmt.Sprintf("%s..%s %d/%d", s.from.Format("01-02"), s.to.Format("01-02"), s.part, s.mod))
	}
	want := []string{"03-01..03-03 0/1", "03-03..03-04 0/1", "03-06..03-07 0/3", "03-06..03-07 1/3", "03-06..03-07 2/3", "03-07..03-09 0/1"}
	if !slices.Equal(desc, want) {
		t.Errorf("slices %v, want %v", desc, want)
	}
	if got := cutSlices(nil, 500); len(got) != 0 {
		t.Errorf("no dirty days gave %v", got)
	}
}
