package aggregate

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// maxGroupsPerSlice bounds the dirty (customer, key, minute) groups one
// set of statements recomputes: each group holds a t-digest and a
// distinct-IP state while a statement runs, and the dirty set is held in
// memory. With this value the first tick over 10 million events kept the
// whole test process under 2.3 GB.
const maxGroupsPerSlice = 500_000

// Retry bounds of Run after a failed tick.
const (
	retryMin = time.Second
	retryMax = time.Minute
)

// TickStats describes one tick.
type TickStats struct {
	// DirtyGroups is the number of (customer, key, minute) groups that were
	// recomputed.
	DirtyGroups int
	// Watermark is the bound the tick saved: every event ingested at or
	// before it is in the rollups.
	Watermark time.Time
	// Duration is how long the tick took.
	Duration time.Duration
}

// Aggregator keeps the rollup tables up to date (see the package comment).
type Aggregator struct {
	cfg Config
	db  store.Conn
	log *slog.Logger
	m   aggregatorMetrics

	// mu serialises Tick: a second tick at once would be correct, only
	// wasted work.
	mu sync.Mutex

	// attr and am: see SetAttribution (nil: no attribution).
	attr *Attribution
	am   attributionMetrics

	// saved is the watermark this aggregator last saved (Unix ms; 0
	// before its first tick), for a Querier in the same process.
	saved atomic.Int64
}

type aggregatorMetrics struct {
	ticks     *prometheus.CounterVec
	duration  prometheus.Histogram
	dirty     prometheus.Gauge
	watermark prometheus.Gauge
}

// NewAggregator wires an aggregator; it does nothing until Run or Tick.
// cfg gets its defaults; reg may be nil (no metrics registered), log may
// be nil.
func NewAggregator(cfg Config, db store.Conn, reg prometheus.Registerer, log *slog.Logger) *Aggregator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Aggregator{cfg: cfg.WithDefaults(), db: db, log: log}
	a.m = aggregatorMetrics{
		ticks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_aggregate_ticks_total",
			Help: "Aggregator ticks by result (ok, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_aggregate_tick_duration_seconds",
			Help:    "Duration of successful aggregator ticks.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
		dirty: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_aggregate_dirty_groups",
			Help: "Dirty (customer, key, minute) groups recomputed by the last successful tick.",
		}),
		watermark: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_aggregate_watermark_timestamp_seconds",
			Help: "Unix time of the watermark: events ingested before it are in the rollups.",
		}),
	}
	// Both results exist from the start, so a rate over errors is 0, not absent.
	a.m.ticks.WithLabelValues("ok")
	a.m.ticks.WithLabelValues("error")
	if reg != nil {
		reg.MustRegister(a.m.ticks, a.m.duration, a.m.dirty, a.m.watermark)
	}
	return a
}

// Run ticks every Interval until ctx ends, then returns nil. A failed tick
// is logged and retried with backoff (jittered, 1s doubling to 1m); it is
// never fatal, since the next tick re-does the work.
func (a *Aggregator) Run(ctx context.Context) error {
	a.log.Info("aggregator started", "interval", a.cfg.Interval, "settle", a.cfg.Settle, "overlap", a.cfg.Overlap)
	defer a.log.Info("aggregator stopped")
	backoff := retryMin
	var wait time.Duration
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		start := time.Now()
		st, err := a.Tick(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// Jitter in [d/2, d]: several instances do not retry in step.
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, retryMax)
			a.log.Warn("aggregator tick failed; retrying", "err", err, "retry_in", wait)
			continue
		}
		backoff = retryMin
		elapsed := time.Since(start)
		wait = max(a.cfg.Interval-elapsed, 0)
		if elapsed > a.cfg.Interval {
			a.log.Warn("aggregator tick took longer than the interval", "duration", elapsed, "interval", a.cfg.Interval, "dirty_groups", st.DirtyGroups)
		}
	}
}

// Tick runs one pass: it recomputes the windows dirtied since the last
// saved watermark, then saves the new one. It is idempotent; after an error
// nothing needs undoing, the next tick re-does the work.
func (a *Aggregator) Tick(ctx context.Context) (TickStats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.attributeUnassigned(ctx)
	start := time.Now()
	st, err := a.tick(ctx, start)
	st.Duration = time.Since(start)
	if err != nil {
		a.m.ticks.WithLabelValues("error").Inc()
		return st, fmt.Errorf("aggregate: tick: %w", err)
	}
	a.m.ticks.WithLabelValues("ok").Inc()
	a.m.duration.Observe(st.Duration.Seconds())
	a.m.dirty.Set(float64(st.DirtyGroups))
	a.m.watermark.Set(float64(st.Watermark.UnixMilli()) / 1000)
	a.log.Debug("aggregator tick", "dirty_groups", st.DirtyGroups, "watermark", st.Watermark, "duration", st.Duration)
	return st, nil
}

func (a *Aggregator) tick(ctx context.Context, now time.Time) (TickStats, error) {
	w, err := readWatermark(ctx, a.db)
	if err != nil {
		return TickStats{}, err
	}
	// ingested_at has millisecond precision: truncating keeps the saved
	// bound equal to what the statements compared against.
	hi := now.Add(-a.cfg.Settle).UTC().Truncate(time.Millisecond)
	lo := time.Unix(0, 0).UTC()
	if !w.IsZero() {
		lo = maxTimeOf(w.Add(-a.cfg.Overlap), lo)
	}
	st := TickStats{Watermark: hi}
	days, err := dirtyDays(ctx, a.db, lo, hi)
	if err != nil {
		return st, err
	}
	for _, d := range days {
		st.DirtyGroups += int(d.groups)
	}
	parts := cutSlices(days, maxGroupsPerSlice)
	for i, sl := range parts {
		params := []store.Param{
			store.P("lo", lo), store.P("hi", hi),
			store.P("from", sl.from), store.P("to", sl.to),
			store.P("mfrom", floorUTC(levelMonth, sl.from)), store.P("mto", ceilUTC(levelMonth, sl.to)),
			store.P("mod", sl.mod), store.P("part", sl.part),
		}
		for _, lv := range tickLevels {
			t0 := time.Now()
			if err := a.db.Exec(ctx, lv.sql, params...); err != nil {
				return st, fmt.Errorf("recompute %s rollups (slice %d of %d): %w", lv.name, i+1, len(parts), err)
			}
			a.log.Debug("recomputed rollups", "level", lv.name, "slice", i+1, "slices", len(parts), "duration", time.Since(t0))
		}
	}
	// Only now: every level of every dirty window is recomputed, so the
	// watermark's promise holds.
	if err := a.db.Exec(ctx, writeWatermarkSQL, store.P("name", watermarkName), store.P("value", hi)); err != nil {
		return st, fmt.Errorf("save watermark: %w", err)
	}
	a.saved.Store(hi.UnixMilli())
	return st, nil
}

// savedWatermark returns the watermark this aggregator last saved, and
// false before it saved one.
func (a *Aggregator) savedWatermark() (time.Time, bool) {
	ms := a.saved.Load()
	if ms == 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms).UTC(), true
}

// dayGroups is the number of dirty (customer, key, minute) groups of one
// UTC day.
type dayGroups struct {
	day    time.Time
	groups uint64
}

// dirtyDays returns the dirty groups of rows ingested in (lo, hi] per UTC
// day, in day order.
func dirtyDays(ctx context.Context, db store.Conn, lo, hi time.Time) ([]dayGroups, error) {
	rows, err := db.Query(ctx, dirtyDaysSQL, store.P("lo", lo), store.P("hi", hi))
	if err != nil {
		return nil, fmt.Errorf("find dirty groups: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []dayGroups
	for rows.Next() {
		var d dayGroups
		if err := rows.Scan(&d.day, &d.groups); err != nil {
			return nil, fmt.Errorf("find dirty groups: %w", err)
		}
		d.day = d.day.UTC()
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find dirty groups: %w", err)
	}
	return out, nil
}

// tickSlice is the part of a tick one set of statements recomputes: the
// dirty groups with event times in [from, to) (whole UTC days) whose
// (customer, key) hash is part modulo mod.
type tickSlice struct {
	from, to  time.Time
	mod, part uint64
}

// cutSlices packs consecutive dirty days into slices of at most limit
// groups; a day with more is split by (customer, key) hash. A slice covers
// whole days of a key, which keeps the levels above the minute consistent.
func cutSlices(days []dayGroups, limit uint64) []tickSlice {
	var out []tickSlice
	open := false
	var n uint64
	for _, d := range days {
		next := d.day.AddDate(0, 0, 1)
		if d.groups > limit {
			open = false
			mod := (d.groups + limit - 1) / limit
			for p := range mod {
				out = append(out, tickSlice{from: d.day, to: next, mod: mod, part: p})
			}
			continue
		}
		if !open || n+d.groups > limit {
			out = append(out, tickSlice{from: d.day, mod: 1})
			open, n = true, 0
		}
		out[len(out)-1].to = next
		n += d.groups
	}
	return out
}

// readWatermark returns the saved watermark, or the zero time before the
// first tick.
func readWatermark(ctx context.Context, db store.Conn) (time.Time, error) {
	rows, err := db.Query(ctx, readWatermarkSQL, store.P("name", watermarkName))
	if err != nil {
		return time.Time{}, fmt.Errorf("read watermark: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var w time.Time
	for rows.Next() {
		if err := rows.Scan(&w); err != nil {
			return time.Time{}, fmt.Errorf("read watermark: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return time.Time{}, fmt.Errorf("read watermark: %w", err)
	}
	if w.Equal(time.Unix(0, 0)) {
		return time.Time{}, nil
	}
	return w.UTC(), nil
}
