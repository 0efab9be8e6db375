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
	// within this time. It is also the rebalance timeout: how long a
	// rebalance waits for a member to rejoin. The sink heartbeats every
	// third of it, at most every 3s. The broker's bounds apply
	// (group.min.session.timeout.ms and group.max.session.timeout.ms, 6s-30m
	// by default); a value outside them keeps the sink from joining the
	// group. Default 30s.
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
		measure(e, schemas.MeasureLatency, e.LatencyMS), measure(e, schemas.MeasureRequestBytes, e.RequestBytes),
		measure(e, schemas.MeasureResponseBytes, e.ResponseBytes), e.ClientIP, e.UserAgent, e.Units,
		props, int32(m.Partition), m.Offset, now,
	}
}

// measure is the stored value of an optional measurement: nil (NULL) when
// the event did not carry it.
func measure[T float64 | uint64](e *schemas.Event, m schemas.Measures, v T) any {
	if !e.Has(m) {
		return nil
	}
	return v
}

// Dead-letter headers: a public contract, documented in docs/kafka.md.
const (
	HeaderError       = "meterline-error"
	HeaderSource      = "meterline-source"
	HeaderDeadAt      = "meterline-dead-lettered-at"
	HeaderErrorReason = "meterline-error-class"
)

// CustomerResolver tells which customer owns an API key at an event's
// time: the key registry of the plan catalogue. See ResolveCustomers.
type CustomerResolver = KeyOwners

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

	// unknownKeys is the policy for keys the catalogue does not know.
	unknownKeys UnknownKeys

	stall stallState // why offsets are held, if they are (sink_faults.go)
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
	truncated      prometheus.Counter

	storedDuplicates prometheus.Counter
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
		HeartbeatInterval:     min(3*time.Second, cfg.SessionTimeout/3),
		SessionTimeout:        cfg.SessionTimeout,
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
		BatchBytes:   kcfg.BatchBytes(), // fitDeadLetter keeps each message within it
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
			Help: "Messages sent to the dead-letter topic, by class (invalid, unstorable, ownership).",
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
		Help: "Events stored unassigned (no customer_id): the catalogue gives their api_key_id to no customer at the event's time (events.unknown_keys: accept).",
	})
	s.m.erasedDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meterline_sink_erased_events_dropped_total",
		Help: "Events dropped because their customer's data was erased (privacy erasure).",
	})
	reg.MustRegister(s.m.unknownKeys, s.m.erasedDropped)
	s.m.storedDuplicates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meterline_sink_duplicates_stored_total",
		Help: "Events dropped because their api_key_id and id were already stored with another time (the first stored copy wins).",
	})
	reg.MustRegister(s.m.storedDuplicates)
	// Known label values start at zero, so that a rule on their rate sees
	// the first dead letter or retry as an increase.
	for _, class := range []string{"invalid", "unstorable", DeadLetterOwnership} {
		s.m.deadLettered.WithLabelValues(class)
	}
	for _, op := range []string{"fetch", "insert", "dead_letter", "commit"} {
		s.m.retries.WithLabelValues(op)
	}
	reg.MustRegister(s.m.stored, s.m.duplicates, s.m.deadLettered, s.m.batchEvents, s.m.insertDuration, s.m.retries, s.m.lag, s.m.lastFlush)
	s.registerFaultMetrics(reg)
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

// ResolveCustomers makes the catalogue r decide each event's customer:
// the key's owner at the event's time. An event that names another
// customer is dead-lettered (class ownership); an event of a key r gives
// to nobody follows SetUnknownKeys. Without r, customer_id is stored as
// the event carries it. Call before Run.
func (s *Sink) ResolveCustomers(r CustomerResolver) { s.customers = r }

// SetUnknownKeys sets the policy for keys the catalogue gives to nobody
// (default accept: stored unassigned). Call before Run.
func (s *Sink) SetUnknownKeys(p UnknownKeys) { s.unknownKeys = p }

// resolveCustomer is the customer-resolution step of a batch: it sets
// ev's customer from the catalogue, or returns why the event is refused.
func (s *Sink) resolveCustomer(ev *schemas.Event) error {
	unknown, err := resolveOwner(ev, s.customers, s.unknownKeys)
	if unknown && err == nil {
		s.m.unknownKeys.Inc()
	}
	return err
}

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
		ev, err := s.events.DecodeEvent(m.Value, s.eventRef(m.Time, now))
		if err == nil {
			err = s.anon.Apply(&ev)
		}
		if err != nil {
			dead = append(dead, deadLetter(m, "invalid", err, now))
			continue
		}
		// An erased customer's event (by the customer it names, then by
		// the owner it resolves to, or by its key when it has none) is
		// dropped, the first before the ownership check could dead-letter
		// it: a redelivered or late event must not bring the customer back,
		// not even into the dead-letter topic. Its offset is committed with
		// the batch.
		if ev.CustomerID != "" && s.erasedEvent(&ev) {
			s.m.erasedDropped.Inc()
			continue
		}
		if err := s.resolveCustomer(&ev); err != nil {
			dead = append(dead, deadLetter(m, DeadLetterOwnership, err, now))
			continue
		}
		if s.erasedEvent(&ev) {
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
	token := batchToken(batch)
	rows, fresh, err := s.claimStored(ctx, rows, token, now)
	if err != nil {
		return err
	}
	more, err := s.insert(ctx, rows, token, now)
	if err != nil {
		return err
	}
	if err := s.withdrawClaims(ctx, rows, fresh, more); err != nil {
		return err
	}
	dead = append(dead, more...)
	if len(dead) > 0 {
		s.anon.AnonymizeDeadLetters(dead, now) // before anything else touches the value: it is written at rest
		if err := s.writeDeadLetters(ctx, dead); err != nil {
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
