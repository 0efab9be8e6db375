package aggregate

import (
	"slices"
	"time"
)

// level is a source of usage rows: the raw table or a rollup table.
type level int

const (
	levelRaw level = iota
	levelMinute
	levelHour
	levelDay
	levelMonth
	numLevels
)

// levelTables names each level's table; fixed identifiers only.
var levelTables = [numLevels]string{
	levelRaw:    eventsTable,
	levelMinute: "usage_minute",
	levelHour:   "usage_hour",
	levelDay:    "usage_day",
	levelMonth:  "usage_month",
}

// narrowTables names each level's narrow table (customer, key and window
// only): the source of queries that neither group nor filter by a wide
// dimension. The raw level has no narrow table.
var narrowTables = [numLevels]string{
	levelRaw:    eventsTable,
	levelMinute: "usage_key_minute",
	levelHour:   "usage_key_hour",
	levelDay:    "usage_key_day",
	levelMonth:  "usage_key_month",
}

// windowLevel is the rollup level whose windows equal w's in UTC; for
// WindowTotal, the coarsest level that fits in the range.
var windowLevel = map[Window]level{
	WindowMinute: levelMinute,
	WindowHour:   levelHour,
	WindowDay:    levelDay,
	WindowMonth:  levelMonth,
	WindowTotal:  levelMonth,
}

// maxPlanSpans bounds the time ranges of one query (each is two bound
// parameters). A zone whose midnights fall between UTC hours cuts every day
// into hour and minute pieces; past this many, coarse levels are dropped
// and the plan reads minute rows throughout.
const maxPlanSpans = 32

// floorUTC returns the start of the level-l UTC window holding t.
func floorUTC(l level, t time.Time) time.Time {
	t = t.UTC()
	switch l {
	case levelMinute:
		return t.Truncate(time.Minute)
	case levelHour:
		return t.Truncate(time.Hour)
	case levelDay:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	case levelMonth:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	return t
}

// ceilUTC returns the first level-l UTC window start at or after t.
func ceilUTC(l level, t time.Time) time.Time {
	f := floorUTC(l, t)
	if f.Equal(t) {
		return f
	}
	switch l {
	case levelMinute:
		return f.Add(time.Minute)
	case levelHour:
		return f.Add(time.Hour)
	case levelDay:
		return f.AddDate(0, 0, 1)
	case levelMonth:
		return f.AddDate(0, 1, 0)
	}
	return t
}

// span is a half-open time range [from, to).
type span struct{ from, to time.Time }

// plan says which time ranges each level serves; the ranges of all levels
// are disjoint and together cover the query range exactly once.
type plan [numLevels][]span

// count returns the number of ranges in p.
func (p *plan) count() int {
	n := 0
	for _, s := range p {
		n += len(s)
	}
	return n
}

func (p *plan) add(l level, from, to time.Time) {
	if from.Before(to) {
		p[l] = append(p[l], span{from, to})
	}
}

// cover serves [s, e), which lies before the frontier, from the coarsest
// level up to top whose windows fit in it, and the rest from finer levels;
// what is finer than a minute comes from raw.
func (p *plan) cover(s, e time.Time, top level) {
	if !s.Before(e) {
		return
	}
	for l := top; l >= levelMinute; l-- {
		a, b := ceilUTC(l, s), floorUTC(l, e)
		if a.Before(b) {
			p.add(l, a, b)
			p.cover(s, a, l-1)
			p.cover(b, e, l-1)
			return
		}
	}
	p.add(levelRaw, s, e)
}

// merge sorts each level's ranges and joins adjacent ones.
func (p *plan) merge() {
	for l := range p {
		spans := p[l]
		slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
		out := spans[:0]
		for _, s := range spans {
			if n := len(out); n > 0 && out[n-1].to.Equal(s.from) {
				out[n-1].to = s.to
				continue
			}
			out = append(out, s)
		}
		p[l] = out
	}
}

// makePlan serves the buckets delimited by bounds (ascending; each bucket
// is one output window, cut to the query range) with rollups before the
// frontier and raw from it on. A rollup window is used only if it lies
// inside one bucket, so that bucketing its start in SQL puts all of it in
// the right output window. Levels above top are not used; if the plan
// needs more than maxPlanSpans ranges, top is lowered.
func makePlan(bounds []time.Time, frontier time.Time, top level) plan {
	for ; ; top-- {
		var p plan
		for i := 0; i+1 < len(bounds); i++ {
			s, e := bounds[i], bounds[i+1]
			if s.Before(frontier) {
				p.cover(s, minTimeOf(e, frontier), top)
			}
			if e.After(frontier) {
				p.add(levelRaw, maxTimeOf(s, frontier), e)
			}
		}
		p.merge()
		if p.count() <= maxPlanSpans || top <= levelMinute {
			return p
		}
	}
}

// windowBounds returns from, every window start of w in loc strictly
// between from and to, and to: the buckets of a query. WindowTotal has one
// bucket, [from, to).
func windowBounds(from, to time.Time, w Window, loc *time.Location) []time.Time {
	next := func(t time.Time) time.Time { return t }
	var start time.Time
	switch w {
	case WindowTotal:
		return []time.Time{from, to}
	case WindowMinute:
		start = floorUTC(levelMinute, from)
		next = func(t time.Time) time.Time { return t.Add(time.Minute) }
	case WindowHour:
		start = floorUTC(levelHour, from)
		next = func(t time.Time) time.Time { return t.Add(time.Hour) }
	case WindowDay:
		l := from.In(loc)
		start = time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
		// AddDate on the local date, not 24h: DST days last 23 or 25 hours.
		next = func(t time.Time) time.Time {
			l := t.In(loc)
			return time.Date(l.Year(), l.Month(), l.Day()+1, 0, 0, 0, 0, loc)
		}
	case WindowMonth:
		l := from.In(loc)
		start = time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, loc)
		next = func(t time.Time) time.Time {
			l := t.In(loc)
			return time.Date(l.Year(), l.Month()+1, 1, 0, 0, 0, 0, loc)
		}
	}
	bounds := []time.Time{from}
	for t := next(start); t.Before(to); t = next(t) {
		if t.After(from) {
			bounds = append(bounds, t)
		}
	}
	return append(bounds, to)
}

func minTimeOf(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTimeOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
