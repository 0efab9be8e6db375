package ingest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/store"
)

// CanaryTable is where the sink inserts a known-good row before it blames
// the rows of a failed insert (schemas/sql 0006_sink_canary.sql).
const CanaryTable = "sink_canary"

// Headers added to a dead letter whose message was cut to fit the
// dead-letter topic's max.message.bytes: a public contract like the others.
const (
	HeaderTruncated    = "meterline-truncated"     // "true"
	HeaderOriginalSize = "meterline-original-size" // bytes of the original value
)

const (
	// insertAttemptsBeforeBlame is how many times an insert that fails for
	// a reason that is not known to be environmental is tried before the
	// canary decides whether the rows are at fault.
	insertAttemptsBeforeBlame = 3
	// deadLetterAttemptsBeforeStall is how many failed dead-letter writes
	// are retried quietly before the sink reports itself stalled (it keeps
	// retrying: an offset is never committed past a message that is
	// neither stored nor dead-lettered).
	deadLetterAttemptsBeforeStall = 5
	// maxErrorHeaderBytes caps the error text of a truncated dead letter.
	maxErrorHeaderBytes = 4 << 10
)

// stallState records why the sink cannot move its offsets, by operation
// (insert, dead_letter). Empty when the sink makes progress.
type stallState struct {
	mu    sync.Mutex
	ops   map[string]error
	since time.Time
	gauge prometheus.Gauge
}

func (s *stallState) set(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops == nil {
		s.ops = map[string]error{}
	}
	if len(s.ops) == 0 {
		s.since = time.Now()
	}
	s.ops[op] = err
	s.gauge.Set(1)
}

func (s *stallState) clear(op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ops[op]; !ok {
		return
	}
	delete(s.ops, op)
	if len(s.ops) == 0 {
		s.gauge.Set(0)
	}
}

func (s *stallState) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ops) == 0 {
		return nil
	}
	ops := make([]string, 0, len(s.ops))
	for op := range s.ops {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	parts := make([]string, len(ops))
	for i, op := range ops {
		parts[i] = op + ": " + retry.CleanText(s.ops[op].Error(), 300)
	}
	return fmt.Errorf("sink stalled for %s, offsets held (%s)", time.Since(s.since).Round(time.Second), strings.Join(parts, "; "))
}

// registerFaultMetrics creates and registers the stall gauge and the
// truncation counter.
func (s *Sink) registerFaultMetrics(reg prometheus.Registerer) {
	s.stall.gauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meterline_sink_stalled",
		Help: "1 while the sink cannot store or dead-letter a batch because of its environment (ClickHouse down, disk full or read-only, access denied, dead-letter topic unwritable) and holds its offsets; 0 otherwise.",
	})
	s.m.truncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meterline_sink_dead_letters_truncated_total",
		Help: "Dead letters whose value was cut to fit the dead-letter topic's max.message.bytes (original size in the meterline-original-size header).",
	})
	reg.MustRegister(s.stall.gauge, s.m.truncated)
}

// Ready returns nil while the sink makes progress, and the reason while it
// is stalled (then /readyz answers 503).
func (s *Sink) Ready(context.Context) error { return s.stall.err() }

// eventRef is the reference time of an event's time window. The Kafka
// timestamp is the producer's to set (a gateway producing straight to
// Kafka may stamp messages with the event's own time), so it is used only
// within [now - MaxPast, now]: a sink catching up on a backlog judges
// events by when they were produced, and no timestamp can widen the
// window to years of events (each month is a partition of the raw table,
// so one batch could touch hundreds and fail as a whole).
func (s *Sink) eventRef(kafkaTime, now time.Time) time.Time {
	past, _ := s.events.Window()
	switch {
	case kafkaTime.Year() < 2000: // Produce v0 carries no timestamp
		return now
	case kafkaTime.After(now):
		return now
	case kafkaTime.Before(now.Add(-past)):
		return now.Add(-past)
	}
	return kafkaTime
}

// insert writes rows, retrying failures with backoff. A failure of the
// environment (store.IsEnvironmental, or any failure while the canary
// fails too) stalls the sink: it keeps retrying, reports itself stalled and
// moves no offset, however long it lasts. Only when a known-good canary
// row can be inserted is a persistent failure blamed on the rows: the
// batch is split to find the rows that can never be stored, which are
// returned as dead letters.
func (s *Sink) insert(ctx context.Context, rows []pending, token string, now time.Time) ([]kafka.Message, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	vals := make([][]any, len(rows))
	for i := range rows {
		vals[i] = rows[i].row
	}
	bo := retry.NewBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		t0 := time.Now()
		// ingested_at is the time of this attempt: the aggregator finds new
		// rows by it, so a row must not carry a time older than its insert
		// by more than one attempt's duration.
		stamp := t0.UTC()
		for i := range vals {
			vals[i][ingestedAtColumn] = stamp
		}
		err := s.db.Insert(ctx, EventsTable, EventColumns, vals, store.InsertOptions{DedupToken: token})
		if err == nil {
			s.m.insertDuration.Observe(time.Since(t0).Seconds())
			s.m.stored.Add(float64(len(rows)))
			s.unstall("insert")
			return nil, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.m.retries.WithLabelValues("insert").Inc()
		env := store.IsEnvironmental(err)
		if !env && attempt >= insertAttemptsBeforeBlame {
			cerr := s.canary(ctx)
			if cerr == nil {
				// The engine stores a known-good row: these rows are at fault.
				if len(rows) == 1 {
					return []kafka.Message{deadLetter(rows[0].msg, "unstorable", err, now)}, nil
				}
				half := len(rows) / 2
				a, err := s.insert(ctx, rows[:half], token+"/a", now)
				if err != nil {
					return nil, err
				}
				b, err := s.insert(ctx, rows[half:], token+"/b", now)
				return append(a, b...), err
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			env = true
			err = fmt.Errorf("%w (the canary insert into %s failed too, so the rows are not blamed: %v)", err, CanaryTable, cerr)
		}
		d := bo.Next()
		if env {
			s.stallFor("insert", err)
			s.log.Error("insert into ClickHouse failed for a reason of the environment; the sink is stalled and holds its offsets until it succeeds", "events", len(rows), "attempt", attempt, "retry_in", d, "err", err)
		} else {
			s.log.Warn("insert into ClickHouse failed; retrying", "events", len(rows), "attempt", attempt, "retry_in", d, "err", err)
		}
		if !retry.Sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}

// canary inserts one known-good row into CanaryTable.
func (s *Sink) canary(ctx context.Context) error {
	return s.db.Insert(ctx, CanaryTable, []string{"sink", "checked_at"},
		[][]any{{s.cfg.GroupID, time.Now().UTC()}}, store.InsertOptions{})
}

func (s *Sink) stallFor(op string, err error) {
	if s.stall.err() == nil {
		s.log.Error("sink stalled", "operation", op, "err", err)
	}
	s.stall.set(op, err)
}

func (s *Sink) unstall(op string) {
	was := s.stall.err()
	s.stall.clear(op)
	if was != nil && s.stall.err() == nil {
		s.log.Info("sink resumed", "operation", op)
	}
}

// writeDeadLetters writes dead letters to the dead-letter topic, cutting any
// that exceed its max.message.bytes. It retries until every one is written
// or ctx ends (only the messages that failed are written again); after
// deadLetterAttemptsBeforeStall failures the sink reports itself stalled.
// It returns an error only when ctx ends: the batch is then not committed.
func (s *Sink) writeDeadLetters(ctx context.Context, dead []kafka.Message) error {
	limit := int(s.kcfg.BatchBytes())
	for i := range dead {
		var cut bool
		if dead[i], cut = fitDeadLetter(dead[i], limit); cut {
			s.m.truncated.Inc()
			s.log.Warn("dead letter truncated to fit the dead-letter topic", "source", headerValue(dead[i], HeaderSource),
				"original_bytes", headerValue(dead[i], HeaderOriginalSize), "limit_bytes", limit)
		}
	}
	todo := dead
	bo := retry.NewBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		err := s.dlq.WriteMessages(ctx, todo...)
		if err == nil {
			s.unstall("dead_letter")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(todo) {
			var left []kafka.Message
			for i, e := range werrs {
				if e != nil {
					left = append(left, todo[i])
				}
			}
			if len(left) > 0 {
				todo = left
			}
		}
		s.m.retries.WithLabelValues("dead_letter").Inc()
		d := bo.Next()
		if attempt >= deadLetterAttemptsBeforeStall {
			s.stallFor("dead_letter", err)
		}
		s.log.Warn("dead-letter write failed; retrying", "messages", len(todo), "attempt", attempt, "retry_in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// messageSize over-estimates what a message weighs in a Kafka batch
// (kafka-go's own estimate plus varint slack).
func messageSize(m kafka.Message) int {
	n := 64 + len(m.Key) + len(m.Value)
	for _, h := range m.Headers {
		n += 10 + len(h.Key) + len(h.Value)
	}
	return n
}

// fitDeadLetter cuts a dead letter that would not fit in limit bytes: the
// error text is shortened, then the producer's own headers are dropped if
// they alone are too large, then the value is cut. The original value's
// size goes in HeaderOriginalSize and HeaderTruncated is set; the source
// (topic/partition/offset) and the reason stay in their headers. It
// reports whether it cut anything.
func fitDeadLetter(m kafka.Message, limit int) (kafka.Message, bool) {
	if messageSize(m) <= limit {
		return m, false
	}
	orig := len(m.Value)
	hs := make([]kafka.Header, 0, len(m.Headers)+2)
	for _, h := range m.Headers {
		if h.Key == HeaderError && len(h.Value) > maxErrorHeaderBytes {
			h.Value = []byte(retry.CleanText(string(h.Value), maxErrorHeaderBytes))
		}
		hs = append(hs, h)
	}
	hs = append(hs,
		kafka.Header{Key: HeaderTruncated, Value: []byte("true")},
		kafka.Header{Key: HeaderOriginalSize, Value: []byte(strconv.Itoa(orig))})
	if messageSize(kafka.Message{Key: m.Key, Headers: hs}) > limit/2 {
		own := hs[:0:0]
		for _, h := range hs {
			if strings.HasPrefix(h.Key, "meterline-") {
				own = append(own, h)
			}
		}
		hs = own
	}
	if len(m.Key) > limit/4 {
		m.Key = m.Key[:limit/4]
	}
	m.Headers = hs
	room := max(0, limit-messageSize(kafka.Message{Key: m.Key, Headers: hs}))
	if len(m.Value) > room {
		m.Value = m.Value[:room]
	}
	return m, true
}

// retryStalling calls f until it succeeds or ctx ends: for storage work
// whose failure can never be the rows' fault (the id claims of a batch),
// so nothing is dead-lettered and no offset moves while it fails. An
// environmental failure, or the third failure of any kind, reports the
// sink stalled under op until f succeeds.
func (s *Sink) retryStalling(ctx context.Context, op string, f func() error) error {
	bo := retry.NewBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			s.unstall(op)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.m.retries.WithLabelValues(op).Inc()
		d := bo.Next()
		if store.IsEnvironmental(err) || attempt >= insertAttemptsBeforeBlame {
			s.stallFor(op, err)
		}
		s.log.Warn(op+" failed; retrying", "attempt", attempt, "retry_in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}
