package httpmeter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Meter meters the requests of the handlers it wraps and sends one event per
// request to the collector, in batches, from a goroutine of its own. Create
// it with New and stop it with Close. Its methods are safe for concurrent
// use.
type Meter struct {
	cfg   Config
	url   string
	queue *queue

	closed    atomic.Bool
	closeOnce sync.Once
	closing   chan struct{} // closed by Close: flush and stop
	done      chan struct{} // closed when the sender returned
	stopCtx   context.Context
	stop      context.CancelFunc // Close's deadline passed: abandon what is left

	stats counters
	enc   encoder // the sender's
}

// record is what the middleware captures of one request. It is copied into
// the queue's buffers, so metering a request allocates nothing beyond the
// response writer's wrapper.
type record struct {
	start        time.Time
	latency      time.Duration
	id           [2]uint64
	apiKeyID     string
	customerID   string
	method       string
	route        string
	remoteAddr   string
	userAgent    string
	units        float64
	props        [maxSetProperties][2]string
	nprops       uint8
	requestBytes int64
	respBytes    int64
	status       int
	hasUnits     bool
}

// counters back Stats and the Prometheus metrics.
type counters struct {
	sent, rejected, retries                    atomic.Uint64
	droppedRefused, droppedGave, droppedUnsent atomic.Uint64
	droppedClosed                              atomic.Uint64
}

// Stats are the meter's counts since New.
type Stats struct {
	// Enqueued counts events queued for sending.
	Enqueued uint64
	// Sent counts events the collector accepted.
	Sent uint64
	// Rejected counts events the collector refused one by one (an invalid
	// field), and events the meter could not encode faithfully (invalid
	// UTF-8 in an id). They are logged with the reason and not retried.
	Rejected uint64
	// Retries counts repeated POSTs of a batch.
	Retries uint64
	// DroppedQueueFull counts requests not metered because the queue was full.
	DroppedQueueFull uint64
	// DroppedRefused counts events of batches the collector refused as a
	// whole with a 4xx other than 429 (bad token, body too large).
	DroppedRefused uint64
	// DroppedRetriesExhausted counts events of batches that still failed
	// after Config.MaxRetryTime.
	DroppedRetriesExhausted uint64
	// DroppedUnsent counts events still held when Close's context ended.
	DroppedUnsent uint64
	// DroppedClosed counts requests that ended after Close began.
	DroppedClosed uint64
	// QueueDepth is the number of events held now: queued, or in a batch
	// being sent. It is at most Config.QueueSize.
	QueueDepth int
}

// New returns a Meter that sends to cfg.Endpoint. It reports every invalid
// setting at once, and an error when the metrics cannot be registered.
func New(cfg Config) (*Meter, error) {
	m, err := newMeter(cfg)
	if err != nil {
		return nil, err
	}
	go m.run()
	return m, nil
}

// newMeter is New without the sender.
func newMeter(cfg Config) (*Meter, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("httpmeter: %w", err)
	}
	m := &Meter{
		cfg:     cfg,
		url:     strings.TrimSuffix(cfg.Endpoint, "/") + "/v1/events",
		queue:   newQueue(cfg.QueueSize, cfg.BatchSize),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	m.stopCtx, m.stop = context.WithCancel(context.Background())
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(&metrics{m: m}); err != nil {
			return nil, fmt.Errorf("httpmeter: registering metrics: %w", err)
		}
	}
	return m, nil
}

// Middleware returns next wrapped: every request it answers becomes one
// event, queued without blocking. The request is never slowed by the
// collector nor failed by the meter: when the queue is full the event is
// dropped and counted. A handler that panics is not metered. As net/http
// requires, the handler must not use its ResponseWriter (nor call SetRoute
// or SetUnits on it) after it returned: the meter reuses it.
func (m *Meter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var body *countingBody
		if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
			body = &countingBody{ReadCloser: r.Body}
			r.Body = body
		}
		ww, rec := wrap(w)
		next.ServeHTTP(ww, r)
		latency := time.Since(start)
		m.record(r, rec, body, start, latency)
		release(ww, rec)
	})
}

func (m *Meter) record(r *http.Request, rec *recorder, body *countingBody, start time.Time, latency time.Duration) {
	key, customer := m.cfg.KeyFunc(r)
	if key == "" {
		return
	}
	if m.closed.Load() {
		m.stats.droppedClosed.Add(1)
		return
	}
	ev := record{
		start:      start,
		latency:    latency,
		id:         [2]uint64{rand.Uint64(), rand.Uint64()},
		apiKeyID:   key,
		customerID: customer,
		method:     r.Method,
		remoteAddr: r.RemoteAddr,
		units:      rec.units,
		hasUnits:   rec.hasUnits,
		respBytes:  rec.bytes,
		status:     rec.status,
		props:      rec.props,
		nprops:     rec.nprops,
	}
	switch {
	case rec.route != "":
		ev.route = rec.route
	case m.cfg.RouteFunc != nil:
		ev.route = m.cfg.RouteFunc(r)
	default:
		ev.route = patternPath(r.Pattern)
	}
	if !rec.wroteFinal {
		ev.status = http.StatusOK // what net/http sends for a handler that wrote nothing
		if rec.hijacked {
			ev.status = http.StatusSwitchingProtocols
		}
	}
	if body != nil {
		ev.requestBytes = body.n
	} else if r.ContentLength > 0 {
		ev.requestBytes = r.ContentLength
	}
	if m.cfg.SendUserAgent {
		ev.userAgent = r.UserAgent()
	}
	m.queue.put(&ev)
}

// patternPath returns the path of a ServeMux pattern ("GET example.com/a/{id}"
// gives "/a/{id}"): neither a method nor a host contains a slash.
func patternPath(p string) string {
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[i:]
	}
	return ""
}

// Stats returns the meter's counts.
func (m *Meter) Stats() Stats {
	enqueued, dropped, held := m.queue.counts()
	return Stats{
		Enqueued:                enqueued,
		Sent:                    m.stats.sent.Load(),
		Rejected:                m.stats.rejected.Load(),
		Retries:                 m.stats.retries.Load(),
		DroppedQueueFull:        dropped,
		DroppedRefused:          m.stats.droppedRefused.Load(),
		DroppedRetriesExhausted: m.stats.droppedGave.Load(),
		DroppedUnsent:           m.stats.droppedUnsent.Load(),
		DroppedClosed:           m.stats.droppedClosed.Load(),
		QueueDepth:              held,
	}
}

// Close stops metering, sends every event the meter holds and waits for the
// collector's answers, until ctx ends. Requests that end after Close began
// are not metered (counted in Stats.DroppedClosed). When ctx ends first, the
// batch in flight is abandoned and Close returns an error naming how many
// events were not sent (also counted in Stats.DroppedUnsent). Calling Close
// again waits for the first call's work and returns nil.
func (m *Meter) Close(ctx context.Context) error {
	first := false
	m.closeOnce.Do(func() {
		first = true
		m.closed.Store(true)
		close(m.closing)
	})
	before := m.stats.droppedUnsent.Load()
	select {
	case <-m.done:
	case <-ctx.Done():
		m.stop()
		<-m.done
	}
	m.stop()
	if !first {
		return nil
	}
	if n := m.stats.droppedUnsent.Load() - before; n > 0 {
		return fmt.Errorf("httpmeter: %d events not sent before the close deadline: %w", n, context.Cause(ctx))
	}
	return nil
}
