package ship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/gateway/httpmeter"
	"github.com/meterline/meterline/schemas"
)

// maxLoggedSkips is how many skipped lines are logged one by one; after
// that one in every skipLogEvery is, with the count.
const (
	maxLoggedSkips = 20
	skipLogEvery   = 1000
)

// Shipper ships a Caddy access log to the collector. Create it with
// NewCaddyShipper and run it with Run.
type Shipper struct {
	cfg    CaddyConfig
	mapper *Mapper
	poster *httpmeter.Poster
	log    *slog.Logger
	m      shipMetrics
	skips  uint64
}

type shipMetrics struct {
	read     prometheus.Counter
	skipped  *prometheus.CounterVec
	sent     prometheus.Counter
	rejected prometheus.Counter
	failures prometheus.Counter
	dropped  prometheus.Counter
	position prometheus.Gauge
}

// NewCaddyShipper wires a shipper; cfg must be valid (LoadCaddyConfig
// validates it). reg receives the meterline_ship_* metrics (nil: none).
func NewCaddyShipper(cfg CaddyConfig, reg prometheus.Registerer, log *slog.Logger) (*Shipper, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	mapper, err := NewMapper(cfg)
	if err != nil {
		return nil, err
	}
	poster, err := httpmeter.NewPoster(httpmeter.Config{
		Endpoint:     cfg.Endpoint,
		Token:        cfg.Token,
		MaxRetryTime: cfg.MaxRetryTime,
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	s := &Shipper{cfg: cfg, mapper: mapper, poster: poster, log: log}
	s.m = shipMetrics{
		read: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_ship_lines_read_total",
			Help: "Access log lines read."}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_ship_lines_skipped_total",
			Help: "Access log lines that became no event: malformed, not_access, oversized, invalid, unmetered."}, []string{"reason"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_ship_events_sent_total",
			Help: "Events the collector accepted."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_ship_events_rejected_total",
			Help: "Events the collector refused one by one for an invalid field (logged with the reason)."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_ship_post_failures_total",
			Help: "Batches not answered within max_retry_time (file mode retries them; TCP mode drops them)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_ship_events_dropped_total",
			Help: "Events dropped unsent (TCP mode only, after max_retry_time)."}),
		position: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_ship_position_bytes",
			Help: "Offset in the followed file up to which every line was shipped."}),
	}
	for _, r := range []string{SkipMalformed, SkipNotAccess, SkipOversized, SkipInvalid, SkipUnmetered} {
		s.m.skipped.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.m.read, s.m.skipped, s.m.sent, s.m.rejected, s.m.failures, s.m.dropped, s.m.position} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Run ships until ctx ends, then sends what it holds (within
// ShutdownTimeout) and returns nil; it returns an error when it cannot go
// on: the collector refused a batch as a whole (a bad token), the file or
// position file cannot be read or written, the listener failed.
func (s *Shipper) Run(ctx context.Context) error {
	if s.cfg.File != "" {
		return s.runFile(ctx)
	}
	return s.runTCP(ctx)
}

// consume maps a line into the batch, or counts and logs why not. where
// names the line for the log (file offset or connection), never its
// content.
func (s *Shipper) consume(line []byte, oversized bool, where string, batch []schemas.Event) []schemas.Event {
	s.m.read.Inc()
	var err error
	if oversized {
		err = skip(SkipOversized, "longer than max_line_bytes (%d)", s.cfg.MaxLineBytes)
	} else {
		var ev schemas.Event
		if ev, err = s.mapper.Map(line); err == nil {
			return append(batch, ev)
		}
	}
	var se *SkipError
	reason := SkipMalformed
	if errors.As(err, &se) {
		reason = se.Reason
	}
	s.m.skipped.WithLabelValues(reason).Inc()
	if reason == SkipUnmetered {
		return batch
	}
	s.skips++
	if s.skips <= maxLoggedSkips || s.skips%skipLogEvery == 0 {
		s.log.Warn("access log line skipped", "at", where, "bytes", len(line), "reason", reason, "err", err.Error(), "skipped_so_far", s.skips)
	}
	return batch
}

// post sends a batch until the collector answered it, ctx ended, or (with
// giveUp) one Post failed. It returns an error only for a refusal and for
// ctx's end.
func (s *Shipper) post(ctx context.Context, batch []schemas.Event, giveUp bool) error {
	if len(batch) == 0 {
		return nil
	}
	for attempt := 0; ; attempt++ {
		res, err := s.poster.Post(ctx, batch)
		s.m.sent.Add(float64(res.Accepted))
		s.m.rejected.Add(float64(res.Rejected))
		switch {
		case err == nil:
			return nil
		case errors.Is(err, httpmeter.ErrRefused):
			return fmt.Errorf("the collector refused a batch (check endpoint and token): %w", err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		s.m.failures.Inc()
		if giveUp {
			s.m.dropped.Add(float64(len(batch) - res.Accepted - res.Rejected))
			s.log.Error("events dropped: the collector did not answer", "events", len(batch), "err", err)
			return nil
		}
		s.log.Error("the collector did not answer; retrying the batch (the position stays before it)", "events", len(batch), "attempt", attempt+1, "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// postContext returns the context of POSTs: it ends ShutdownTimeout after
// ctx does, so that what is held is still sent at a stop.
func (s *Shipper) postContext(ctx context.Context) (context.Context, context.CancelFunc) {
	pctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.ShutdownTimeout, cancel) })
	return pctx, func() { stop(); cancel() }
}
