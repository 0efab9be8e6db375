package ingest

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/schemas"
)

// CollectorConfig configures POST /v1/events.
type CollectorConfig struct {
	// MaxBodyBytes caps a request body, after gzip decompression. Default 5 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ProduceTimeout bounds the wait for Kafka's acknowledgement; past it the
	// request gets 503. Default 10s.
	ProduceTimeout time.Duration `yaml:"produce_timeout"`
	// RetryAfter is the Retry-After sent with 503. Default 5s.
	RetryAfter time.Duration `yaml:"retry_after"`
}

// WithDefaults fills unset fields with their defaults.
func (c CollectorConfig) WithDefaults() CollectorConfig {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 5 << 20
	}
	if c.ProduceTimeout == 0 {
		c.ProduceTimeout = 10 * time.Second
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = 5 * time.Second
	}
	return c
}

// Validate reports every invalid setting.
func (c CollectorConfig) Validate() error {
	var errs []error
	if c.MaxBodyBytes < 1024 || c.MaxBodyBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("collector.max_body_bytes: %d is out of range 1 KiB-1 GiB", c.MaxBodyBytes))
	}
	if c.ProduceTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("collector.produce_timeout: %s is shorter than 100ms", c.ProduceTimeout))
	}
	if c.RetryAfter < time.Second {
		errs = append(errs, fmt.Errorf("collector.retry_after: %s is shorter than 1s", c.RetryAfter))
	}
	return errors.Join(errs...)
}

// Producer writes messages to the events topic and returns once the brokers
// acknowledged every one of them. *kafka.Writer with RequiredAcks=RequireAll
// is the production implementation.
type Producer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// NewProducer returns the Kafka writer the collector uses: keyed by
// api_key_id with Java's default partitioner (murmur2), so a gateway that
// produces directly with a standard client lands each key on the same
// partition; acks from all in-sync replicas.
func NewProducer(c KafkaConfig) (*kafka.Writer, error) {
	tr, err := c.Transport()
	if err != nil {
		return nil, err
	}
	return &kafka.Writer{
		Addr:         kafka.TCP(c.Brokers...),
		Topic:        c.Topic,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		// Concurrent requests share broker round trips; a short timeout keeps
		// a lone small request from waiting (kafka-go's default is 1s).
		BatchSize:       1000,
		BatchTimeout:    2 * time.Millisecond,
		BatchBytes:      c.BatchBytes(), // within the topic's max.message.bytes
		MaxAttempts:     3,
		WriteBackoffMin: 50 * time.Millisecond,
		WriteBackoffMax: 500 * time.Millisecond,
		ReadTimeout:     10 * time.Second,
		WriteTimeout:    10 * time.Second,
		Transport:       tr,
	}, nil
}

// Collector serves POST /v1/events.
type Collector struct {
	cfg      CollectorConfig
	events   schemas.Options
	anon     Anonymizer
	tokens   *auth.Tokens
	producer Producer
	log      *slog.Logger
	now      func() time.Time
	m        collectorMetrics

	// owners and unknownKeys: see CheckOwners.
	owners      KeyOwners
	unknownKeys UnknownKeys
}

type collectorMetrics struct {
	requests        *prometheus.CounterVec
	accepted        prometheus.Counter
	rejected        *prometheus.CounterVec
	produceDuration prometheus.Histogram
	batchEvents     prometheus.Histogram
}

// NewCollector wires a collector. reg receives its metrics.
func NewCollector(cfg CollectorConfig, events schemas.Options, anon Anonymizer, tokens *auth.Tokens, p Producer, reg prometheus.Registerer, log *slog.Logger) *Collector {
	c := &Collector{cfg: cfg.WithDefaults(), events: events, anon: anon.WithDefaults(), tokens: tokens, producer: p, log: log, now: time.Now}
	c.m = collectorMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_collector_requests_total",
			Help: "POST /v1/events requests by HTTP status code.",
		}, []string{"code"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterline_collector_events_accepted_total",
			Help: "Events acknowledged by Kafka and answered with 202.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_collector_events_rejected_total",
			Help: "Events rejected one by one, by the first invalid field (\"other\" for unknown fields).",
		}, []string{"reason"}),
		produceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_collector_produce_duration_seconds",
			Help:    "Time from handing a request's events to Kafka until all were acknowledged.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		batchEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterline_collector_batch_events",
			Help:    "Events per POST /v1/events request.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
	}
	reg.MustRegister(c.m.requests, c.m.accepted, c.m.rejected, c.m.produceDuration, c.m.batchEvents)
	return c
}

// Rejection is one rejected event of a batch.
type Rejection struct {
	Index int    `json:"index"`
	Error string `json:"error"`
}

// Response is the body of a 202 answer.
type Response struct {
	Accepted int         `json:"accepted"`
	Rejected []Rejection `json:"rejected"`
}

func (c *Collector) fail(w http.ResponseWriter, code int, msg string) {
	c.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	httpx.WriteError(w, code, msg)
}

func (c *Collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		c.m.requests.WithLabelValues(strconv.Itoa(http.StatusMethodNotAllowed)).Inc()
		httpx.MethodNotAllowed(w, http.MethodPost)
		return
	}
	p, err := c.tokens.Authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meterline"`)
		c.fail(w, http.StatusUnauthorized, err.Error())
		return
	}
	if !p.Has(auth.ScopeIngest) {
		c.fail(w, http.StatusForbidden, fmt.Sprintf("token %q lacks the ingest scope", p.Name))
		return
	}
	if r.ContentLength > c.cfg.MaxBodyBytes {
		c.fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes is over the limit of %d bytes", r.ContentLength, c.cfg.MaxBodyBytes))
		return
	}
	bodyBuf := getBuf()
	defer putBuf(bodyBuf) // the decoder copies what it keeps
	body, code, err := c.readBody(w, r, (*bodyBuf)[:0])
	*bodyBuf = body
	if err != nil {
		c.fail(w, code, err.Error())
		return
	}
	results, err := c.events.DecodeBatch(r.Header.Get("Content-Type"), body, c.now())
	switch {
	case errors.Is(err, schemas.ErrUnsupportedMediaType):
		c.fail(w, http.StatusUnsupportedMediaType, err.Error())
		return
	case errors.Is(err, schemas.ErrTooManyEvents):
		c.fail(w, http.StatusRequestEntityTooLarge, err.Error())
		return
	case err != nil:
		c.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	c.m.batchEvents.Observe(float64(len(results)))

	resp := Response{Rejected: []Rejection{}}
	msgs := make([]kafka.Message, 0, len(results))
	// The messages' values point into one pooled buffer. It goes back to the
	// pool only after Kafka acknowledged them all: after a failure or a
	// timeout the writer may still hold messages in a batch.
	outBuf := getBuf()
	buf := (*outBuf)[:0]
	for _, res := range results {
		if res.Err != nil {
			resp.Rejected = append(resp.Rejected, Rejection{Index: res.Index, Error: res.Err.Error()})
			c.m.rejected.WithLabelValues(rejectReason(res.Err)).Inc()
			continue
		}
		ev := res.Event
		if ev.Gateway == "" {
			// The token names the gateway when the event does not.
			ev.Gateway = p.Name
		}
		if err := c.admit(&ev, p, res.Index); err != nil {
			resp.Rejected = append(resp.Rejected, Rejection{Index: res.Index, Error: err.Error()})
			c.m.rejected.WithLabelValues(rejectReason(err)).Inc()
			continue
		}
		if err := c.anon.Apply(&ev); err != nil {
			resp.Rejected = append(resp.Rejected, Rejection{Index: res.Index, Error: fmt.Sprintf("event %d: field \"client_ip\": %v", res.Index, err)})
			c.m.rejected.WithLabelValues("client_ip").Inc()
			continue
		}
		start := len(buf)
		buf = ev.AppendJSON(buf)
		msgs = append(msgs, kafka.Message{Key: []byte(ev.APIKeyID), Value: buf[start:len(buf):len(buf)]})
	}
	if len(msgs) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), c.cfg.ProduceTimeout)
		t0 := time.Now()
		err := c.producer.WriteMessages(ctx, msgs...)
		cancel()
		c.m.produceDuration.Observe(time.Since(t0).Seconds())
		if err == nil {
			*outBuf = buf[:0]
			putBuf(outBuf)
		}
		if err != nil {
			// Some messages may have been written: the gateway retries the
			// whole batch and the repeated ids are stored once.
			c.log.Warn("kafka produce failed; answering 503", "gateway", p.Name, "events", len(msgs), "err", err)
			w.Header().Set("Retry-After", strconv.Itoa(int(c.cfg.RetryAfter.Seconds())))
			c.fail(w, http.StatusServiceUnavailable, "event log unavailable, nothing was accepted; retry later: "+err.Error())
			return
		}
	}
	resp.Accepted = len(msgs)
	c.m.accepted.Add(float64(len(msgs)))
	c.m.requests.WithLabelValues("202").Inc()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(resp)
}

// bufPool recycles request bodies and encoded-message buffers (about half
// a megabyte each at 1,000 events a request): allocating and zeroing them per
// request was half of the collector's allocated bytes.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuf keeps a rare huge request from pinning its buffer.
const maxPooledBuf = 8 << 20

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) <= maxPooledBuf {
		bufPool.Put(b)
	}
}

// readAll appends everything src yields to dst, like io.ReadAll into a
// buffer that may be large enough already.
func readAll(dst []byte, src io.Reader) ([]byte, error) {
	for {
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, max(512, len(dst)))
		}
		n, err := src.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// readBody reads the body within the size limit, decompressing gzip, into
// dst (whose contents are replaced).
func (c *Collector) readBody(w http.ResponseWriter, r *http.Request, dst []byte) ([]byte, int, error) {
	limit := c.cfg.MaxBodyBytes
	var src io.Reader = http.MaxBytesReader(w, r.Body, limit)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("gzip body: %v", err)
		}
		defer zr.Close()
		// Decompressed size is capped too, so a small bomb cannot expand unbounded.
		src = io.LimitReader(zr, limit+1)
	default:
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("content-encoding %q is not supported (use gzip or none)", enc)
	}
	if n := r.ContentLength; n > 0 && n <= limit && cap(dst) < int(n)+1 {
		// Room for the whole body and the read that sees EOF.
		dst = make([]byte, 0, n+1)
	}
	body, err := readAll(dst[:0], src)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("body is over the limit of %d bytes", limit)
	case err != nil:
		return nil, http.StatusBadRequest, fmt.Errorf("reading body: %v", err)
	case int64(len(body)) > limit:
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("decompressed body is over the limit of %d bytes", limit)
	case len(body) == 0:
		return nil, http.StatusBadRequest, errors.New("empty body: send a JSON array, NDJSON or a CloudEvents batch")
	}
	return body, 0, nil
}

func rejectReason(err error) string {
	var ee *schemas.EventError
	if errors.As(err, &ee) && len(ee.Fields) > 0 {
		f := ee.Fields[0].Field
		if i := strings.IndexByte(f, '.'); i > 0 && f[:i] == "properties" {
			f = "properties"
		}
		if schemas.IsField(f) { // bounds the label's values
			return f
		}
	}
	return "other"
}
