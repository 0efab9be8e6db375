package aggregate

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/store"
)

// maxGroupsPerSlice bounds the dirty (customer, key, minute) groups one
// statement recomputes. Each group holds a t-digest and a distinct-IP state
// while the statement runs; about a million rows of raw input per statement
// kept the embedded engine well under a gigabyte.
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
			// Full jitter in [d/2, d]: several instances do not retry in step.
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
	bounds := []store.Param{store.P("lo", lo), store.P("hi", hi)}
	n, err := countDirty(ctx, a.db, bounds)
	if err != nil {
		return st, err
	}
	st.DirtyGroups = int(n)
	if n > 0 {
		slices := (n + maxGroupsPerSlice - 1) / maxGroupsPerSlice
		for slice := range slices {
			params := append(bounds[:len(bounds):len(bounds)], store.P("slices", slices), store.P("slice", slice))
			for _, lv := range tickLevels {
				if err := a.db.Exec(ctx, lv.sql, params...); err != nil {
					return st, fmt.Errorf("recompute %s rollups (slice %d of %d): %w", lv.name, slice+1, slices, err)
				}
			}
		}
	}
	// Only now: every level of every dirty window is recomputed, so the
	// watermark's promise holds.
	if err := a.db.Exec(ctx, writeWatermarkSQL, store.P("name", watermarkName), store.P("value", hi)); err != nil {
		return st, fmt.Errorf("save watermark: %w", err)
	}
	return st, nil
}

// countDirty counts the dirty (customer, key, minute) groups in bounds.
func countDirty(ctx context.Context, db store.Conn, bounds []store.Param) (uint64, error) {
	params := append(bounds[:len(bounds):len(bounds)], store.P("slices", uint64(1)), store.P("slice", uint64(0)))
	rows, err := db.Query(ctx, countDirtySQL, params...)
	if err != nil {
		return 0, fmt.Errorf("count dirty groups: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var n uint64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, fmt.Errorf("count dirty groups: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("count dirty groups: %w", err)
	}
	return n, nil
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
