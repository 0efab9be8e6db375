package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// SinkConfig configures the Kafka → ClickHouse sink.
type SinkConfig struct {
	// GroupID is the Kafka consumer group; sink instances sharing it split the
	// topic's partitions. Default "meterline-sink".
	GroupID string `yaml:"group_id"`
	// BatchSize is the most events written in one insert. The embedded engine
	// pays ~14 ms per insert whatever its size, so batches should be large.
	// Default 10000.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest an event waits in a partial batch. Default 1s.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// RetryMin and RetryMax bound the exponential backoff (with jitter) of
	// retried fetches, inserts, dead-letter writes and commits. Defaults 100ms, 30s.
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// SessionTimeout is how long the group waits for a silent sink before
	// giving its partitions to another; after a crash, consumption resumes
	// within this time. The broker's bounds apply (6s-30m by default).
	// Default 30s.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// ShutdownTimeout bounds the final flush when the process is asked to stop.
	// Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// LagInterval is how often the consumer group's lag (end offsets minus
	// committed offsets) is measured for meterline_sink_consumer_lag_messages.
	// Default 15s.
	LagInterval time.Duration `yaml:"lag_interval"`
}

// WithDefaults fills unset fields with their defaults.
func (c SinkConfig) WithDefaults() SinkConfig {
	if c.GroupID == "" {
		c.GroupID = "meterline-sink"
	}
	if c.BatchSize == 0 {
		c.BatchSize = 10000
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 30 * time.Second
	}
	if c.LagInterval == 0 {
		c.LagInterval = 15 * time.Second
	}
	return c
}

// Validate reports every invalid setting.
func (c SinkConfig) Validate() error {
	var errs []error
	if c.BatchSize < 1 || c.BatchSize > 1_000_000 {
		errs = append(errs, fmt.Errorf("sink.batch_size: %d is out of range 1-1000000", c.BatchSize))
	}
	if c.FlushInterval < 10*time.Millisecond || c.FlushInterval > 10*time.Minute {
		errs = append(errs, fmt.Errorf("sink.flush_interval: %s is out of range 10ms-10m", c.FlushInterval))
	}
	if c.RetryMin <= 0 || c.RetryMax < c.RetryMin {
		errs = append(errs, fmt.Errorf("sink.retry_min (%s) must be positive and not above sink.retry_max (%s)", c.RetryMin, c.RetryMax))
	}
	if c.SessionTimeout < time.Second || c.SessionTimeout > 30*time.Minute {
		errs = append(errs, fmt.Errorf("sink.session_timeout: %s is out of range 1s-30m", c.SessionTimeout))
	}
	if c.ShutdownTimeout < time.Second {
		errs = append(errs, fmt.Errorf("sink.shutdown_timeout: %s is shorter than 1s", c.ShutdownTimeout))
	}
	if c.LagInterval < 100*time.Millisecond || c.LagInterval > time.Hour {
		errs = append(errs, fmt.Errorf("sink.lag_interval: %s is out of range 100ms-1h", c.LagInterval))
	}
	return errors.Join(errs...)
}

// EventsTable is the raw events table the sink writes.
const EventsTable = "events"

// EventColumns are the columns of EventsTable the sink writes, in the order of
// the values returned by eventRow.
var EventColumns = []string{
	"id", "time", "api_key_id", "customer_id", "gateway", "method", "route", "status",
	"latency_ms", "request_bytes", "response_bytes", "client_ip", "user_agent", "units",
	"properties", "kafka_partition", "kafka_offset", "ingested_at",
}

// ingestedAtColumn is the index of ingested_at in EventColumns.
const ingestedAtColumn = 17

// EventRow returns the values of one row of EventsTable in EventColumns
// order, exactly as the sink inserts the event read at (partition, offset).
// Benchmarks build their baseline rows with it.
func EventRow(e *schemas.Event, partition int, offset int64, ingestedAt time.Time) []any {
	return eventRow(e, &kafka.Message{Partition: partition, Offset: offset}, ingestedAt)
}

func eventRow(e *schemas.Event, m *kafka.Message, now time.Time) []any {
	props := e.Properties
	if props == nil {
		props = map[string]string{}
	}
	return []any{
		e.ID, e.Time, e.APIKeyID, e.CustomerID, e.Gateway, e.Method, e.Route, uint16(e.Status),
		e.LatencyMS, e.RequestBytes, e.ResponseBytes, e.ClientIP, e.UserAgent, e.Units,
		props, int32(m.Partition), m.Offset, now,
	}
}

// Dead-letter headers: a public contract, documented in the README.
const (
	HeaderError       = "meterline-error"
	HeaderSource      = "meterline-source"
	HeaderDeadAt      = "meterline-dead-lettered-at"
	HeaderErrorReason = "meterline-error-class"
)

// CustomerResolver tells which customer owns an API key: the key registry
// of the plan catalogue. Events that carry no customer_id get it at ingest.
type CustomerResolver interface {
	CustomerOfKey(apiKeyID string) (string, bool)
}

// Sink consumes the events topic and writes batches to ClickHouse.
type Sink struct {
	customers CustomerResolver
	erased    ErasedCustomers
	cfg       SinkConfig
	kcfg      KafkaConfig
	events    schemas.Options
	anon      Anonymizer
	db        store.Conn
	reader    *kafka.Reader
	dlq       *kafka.Writer
	log       *slog.Logger
	m         sinkMetrics

	mu        sync.Mutex
	lastFlush time.Time

	seen map[dedupKey]struct{} // in-batch deduplication, reused by flush
}

// dedupKey identifies an event within a batch.
type dedupKey struct{ apiKeyID, id string }

type sinkMetrics struct {
	stored         prometheus.Counter
	duplicates     prometheus.Counter
	deadLettered   *prometheus.CounterVec
	batchEvents    prometheus.Histogram
	insertDuration prometheus.Histogram
	retries        *prometheus.CounterVec
	lag            *prometheus.GaugeVec
	lastFlush      prometheus.Gauge
	unknownKeys    prometheus.Counter
	erasedDropped  prometheus.Counter
}

// NewSink wires a sink. It does not connect until Run.
func NewSink(cfg SinkConfig, kcfg KafkaConfig, events schemas.Options, anon Anonymizer, db store.Conn, reg prometheus.Registerer, log *slog.Logger) (*Sink, error) {
	cfg = cfg.WithDefaults()
	dialer, err := kcfg.Dialer()
	if err != nil {
		return nil, err
	}
	tr, err := kcfg.Transport()
	if err != nil {
		return nil, err
	}
	s := &Sink{cfg: cfg, kcfg: kcfg, events: events, anon: anon.WithDefaults(), db: db, log: log}
	s.reader = kafka.NewReader(kafka.ReaderConfig{
		Brokers:               kcfg.Brokers,
		GroupID:               cfg.GroupID,
		Topic:                 kcfg.Topic,
		Dialer:                dialer,
		QueueCapacity:         min(cfg.BatchSize, 10000),
		MinBytes:              1,
		MaxBytes:              16 << 20,
		MaxWait:               250 * time.Millisecond,
		CommitInterval:        0, // synchronous: offsets move only after the insert
		StartOffset:           kafka.FirstOffset,
		HeartbeatInterval:     3 * time.Second,
		SessionTimeout:        30 * time.Second,
		RebalanceTimeout:      cfg.SessionTimeout, // a dead member holds up a rebalance this long
		ReadBackoffMin:        100 * time.Millisecond,
		ReadBackoffMax:        2 * time.Second,
		WatchPartitionChanges: true,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Warn("kafka reader: " + fmt.Sprintf(msg, args...))
		}),
	})
	s.dlq = &kafka.Writer{
		Addr:         kafka.TCP(kcfg.Brokers...),
		Topic:        kcfg.DeadLetterTopic,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 2 * time.Millisecond,
		BatchBytes:   16 << 20,
		MaxAttempts:  3,
		Transport:    tr,
	}
	s.m = sinkMetrics{
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_sink_events_stored_total",
			Help: "Events written to the raw events table (after in-batch deduplication).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_sink_duplicates_dropped_total",
			Help: "Events dropped because the same api_key_id and id occurred earlier in the same batch.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_sink_events_dead_lettered_total",
			Help: "Messages sent to the dead-letter topic, by class (invalid, unstorable).",
		}, []string{"class"}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_sink_batch_events",
			Help:    "Kafka messages per flushed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		insertDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_sink_insert_duration_seconds",
			Help:    "Duration of successful batch inserts into ClickHouse.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_sink_retries_total",
			Help: "Failed attempts that were retried, by operation (fetch, insert, dead_letter, commit).",
		}, []string{"operation"}),
		lag: newLagGauge(),
		lastFlush: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterline_sink_last_flush_timestamp_seconds",
			Help: "Unix time of the last batch committed to Kafka after a successful insert.",
		}),
	}
	s.m.unknownKeys = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meterline_sink_events_without_customer_total",
		Help: "Events stored without a customer_id: the event had none and its api_key_id is not in the catalogue.",
	})
	s.m.erasedDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meterline_sink_erased_events_dropped_total",
		Help: "Events dropped because their customer's data was erased (privacy erasure).",
	})
	reg.MustRegister(s.m.unknownKeys, s.m.erasedDropped)
	reg.MustRegister(s.m.stored, s.m.duplicates, s.m.deadLettered, s.m.batchEvents, s.m.insertDuration, s.m.retries, s.m.lag, s.m.lastFlush)
	return s, nil
}

// Run consumes until ctx is cancelled, then flushes the batch in hand
// (within ShutdownTimeout) and leaves the consumer group.
func (s *Sink) Run(ctx context.Context) error {
	defer func() {
		if err := s.reader.Close(); err != nil {
			s.log.Warn("closing kafka reader", "err", err)
		}
		_ = s.dlq.Close()
	}()
	lctx, stopLag := context.WithCancel(ctx)
	lagDone := make(chan struct{})
	go func() { defer close(lagDone); s.watchLag(lctx, s.cfg.LagInterval) }()
	defer func() { stopLag(); <-lagDone }()
	s.log.Info("sink started", "topic", s.kcfg.Topic, "group", s.cfg.GroupID, "batch_size", s.cfg.BatchSize, "flush_interval", s.cfg.FlushInterval)
	batch := make([]kafka.Message, 0, s.cfg.BatchSize)
	var batchStart time.Time
	bo := retry.NewBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	flush := func(fctx context.Context) error {
		err := s.flush(fctx, batch)
		batch = batch[:0]
		return err
	}
	// One deadline per batch, not per message: creating a context and its
	// timer for every fetched message was a tenth of the sink's allocations.
	fctx, cancel := ctx, context.CancelFunc(func() {})
	defer func() { cancel() }()
	for {
		if len(batch) == 0 && fctx != ctx {
			cancel()
			fctx, cancel = ctx, func() {}
		}
		msg, err := s.reader.FetchMessage(fctx)
		switch {
		case err == nil:
			if len(batch) == 0 {
				batchStart = time.Now()
				fctx, cancel = s.batchDeadline(ctx, batchStart)
			}
			batch = append(batch, msg)
			bo.Reset()
			if len(batch) >= s.cfg.BatchSize {
				if err := flush(ctx); err != nil {
					return s.shutdown(ctx, batch, err)
				}
			}
		case ctx.Err() != nil:
			return s.shutdown(ctx, batch, nil)
		case errors.Is(err, context.DeadlineExceeded):
			if err := flush(ctx); err != nil {
				return s.shutdown(ctx, batch, err)
			}
		default:
			s.m.retries.WithLabelValues("fetch").Inc()
			d := bo.Next()
			s.log.Warn("kafka fetch failed; retrying", "err", err, "retry_in", d)
			if !retry.Sleep(ctx, d) {
				return s.shutdown(ctx, batch, nil)
			}
		}
	}
}

// batchDeadline bounds the fetches of a batch that started at start.
func (s *Sink) batchDeadline(ctx context.Context, start time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadline(ctx, start.Add(s.cfg.FlushInterval))
}

// shutdown flushes what is in hand with a fresh deadline: a stop request must
// not throw away a batch that is already read (it would only be re-read, but
// a clean stop should leave nothing behind).
func (s *Sink) shutdown(ctx context.Context, batch []kafka.Message, cause error) error {
	if len(batch) > 0 && cause == nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := s.flush(sctx, batch); err != nil {
			s.log.Warn("final flush failed; the batch will be re-read on the next start", "events", len(batch), "err", err)
		}
	}
	s.log.Info("sink stopped")
	if errors.Is(cause, context.Canceled) {
		return nil
	}
	return cause
}

// ResolveCustomers makes the sink fill a missing customer_id from r.
// Call before Run.
func (s *Sink) ResolveCustomers(r CustomerResolver) { s.customers = r }

// ErasedCustomers tells whether a customer's data was erased (a privacy
// erasure ran or is running): the sink drops such a customer's events.
type ErasedCustomers interface {
	Erased(customerID string) bool
}

// DropErased makes the sink drop the events of the customers e reports as
// erased, counting them in meterline_sink_erased_events_dropped_total.
// Call before Run.
func (s *Sink) DropErased(e ErasedCustomers) { s.erased = e }

// LastFlush is when the sink last committed a batch (zero before the first).
func (s *Sink) LastFlush() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastFlush
}

type pending struct {
	row []any
	msg *kafka.Message
}

// flush validates, inserts, dead-letters and commits one batch. It retries
// each step until it succeeds or ctx ends; it returns an error only then, and
// the uncommitted batch is re-read by whoever owns the partitions next.
func (s *Sink) flush(ctx context.Context, batch []kafka.Message) error {
	if len(batch) == 0 {
		return nil
	}
	s.m.batchEvents.Observe(float64(len(batch)))
	now := time.Now().UTC()
	rows := make([]pending, 0, len(batch))
	var dead []kafka.Message
	if s.seen == nil {
		s.seen = make(map[dedupKey]struct{}, len(batch))
	}
	seen := s.seen
	defer clear(seen)
	for i := range batch {
		m := &batch[i]
		ref := m.Time
		if ref.Year() < 2000 {
			// Produce v0 carries no timestamp: judge the event time by arrival.
			ref = now
		}
		ev, err := s.events.DecodeEvent(m.Value, ref)
		if err == nil {
			err = s.anon.Apply(&ev)
		}
		if err != nil {
			dead = append(dead, deadLetter(m, "invalid", err, now))
			continue
		}
		if ev.CustomerID == "" && s.customers != nil {
			if c, ok := s.customers.CustomerOfKey(ev.APIKeyID); ok {
				ev.CustomerID = c
			} else {
				s.m.unknownKeys.Inc()
			}
		}
		if s.erasedEvent(&ev) {
			// The customer's data was erased: a redelivered or late event
			// must not bring it back. Its offset is committed with the batch.
			s.m.erasedDropped.Inc()
			continue
		}
		k := dedupKey{ev.APIKeyID, ev.ID}
		if _, dup := seen[k]; dup {
			s.m.duplicates.Inc()
			continue
		}
		seen[k] = struct{}{}
		rows = append(rows, pending{row: eventRow(&ev, m, now), msg: m})
	}
	more, err := s.insert(ctx, rows, batchToken(batch), now)
	if err != nil {
		return err
	}
	dead = append(dead, more...)
	if len(dead) > 0 {
		s.anon.AnonymizeDeadLetters(dead, now) // before anything else touches the value: it is written at rest
		if err := s.retry(ctx, "dead_letter", func() error { return s.dlq.WriteMessages(ctx, dead...) }); err != nil {
			return err
		}
		for _, d := range dead {
			s.m.deadLettered.WithLabelValues(headerValue(d, HeaderErrorReason)).Inc()
			s.log.Warn("event dead-lettered", "source", headerValue(d, HeaderSource), "reason", headerValue(d, HeaderError))
		}
	}
	// A commit that fails because the group rebalanced cannot succeed later:
	// the new owner re-reads the batch, and its ids are stored once.
	if err := s.retryN(ctx, "commit", 5, func() error { return s.reader.CommitMessages(ctx, batch...) }); err != nil {
		s.log.Warn("offset commit failed; the batch will be re-read", "events", len(batch), "err", err)
		return nil
	}
	s.mu.Lock()
	s.lastFlush = time.Now()
	s.mu.Unlock()
	s.m.lastFlush.SetToCurrentTime()
	return nil
}

// insert writes rows, retrying transient failures. When a failure persists
// and is not one of reaching ClickHouse, the batch is split to find the rows
// that can never be stored; those are returned as dead letters.
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
			return nil, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.m.retries.WithLabelValues("insert").Inc()
		if attempt >= 3 && !errors.Is(err, store.ErrUnavailable) && s.tableHealthy(ctx) {
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
		d := bo.Next()
		s.log.Warn("insert into ClickHouse failed; retrying", "events", len(rows), "attempt", attempt, "retry_in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}

// tableHealthy tells a failure of the rows apart from a failure of the
// table or the engine: only with a healthy table is a row blamed.
func (s *Sink) tableHealthy(ctx context.Context) bool {
	rows, err := s.db.Query(ctx, "SELECT count() FROM "+EventsTable+" WHERE 0")
	if err != nil {
		return false
	}
	for rows.Next() {
	}
	err = rows.Err()
	_ = rows.Close()
	return err == nil
}

func (s *Sink) retry(ctx context.Context, op string, f func() error) error {
	return s.retryN(ctx, op, 0, f)
}

// retryN calls f until it succeeds, ctx ends, or (when n > 0) n attempts failed.
func (s *Sink) retryN(ctx context.Context, op string, n int, f func() error) error {
	bo := retry.NewBackoff(s.cfg.RetryMin, s.cfg.RetryMax)
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if n > 0 && attempt >= n {
			return err
		}
		s.m.retries.WithLabelValues(op).Inc()
		d := bo.Next()
		s.log.Warn(op+" failed; retrying", "attempt", attempt, "retry_in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// batchToken identifies a batch by the Kafka positions it holds, so the same
// batch retried after a failed insert is stored once (insert_deduplication_token).
func batchToken(batch []kafka.Message) string {
	h := sha256.New()
	var b [16]byte
	for i := range batch {
		binary.BigEndian.PutUint64(b[:8], uint64(batch[i].Partition))
		binary.BigEndian.PutUint64(b[8:], uint64(batch[i].Offset))
		h.Write([]byte(batch[i].Topic))
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func deadLetter(m *kafka.Message, class string, err error, now time.Time) kafka.Message {
	return kafka.Message{
		Key:   m.Key,
		Value: m.Value,
		Headers: append(append([]kafka.Header(nil), m.Headers...),
			kafka.Header{Key: HeaderError, Value: []byte(err.Error())},
			kafka.Header{Key: HeaderErrorReason, Value: []byte(class)},
			kafka.Header{Key: HeaderSource, Value: []byte(m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10))},
			kafka.Header{Key: HeaderDeadAt, Value: []byte(now.Format(time.RFC3339Nano))},
		),
	}
}

func headerValue(m kafka.Message, key string) string {
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == key {
			return string(m.Headers[i].Value)
		}
	}
	return ""
}
