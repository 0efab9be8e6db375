package api

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/store"
)

// ReadConfig protects ingestion and the other tenants from the read API:
// every query of a read endpoint runs on the store's interactive
// connections with per-statement limits, and each token has a bound on its
// concurrent requests and on its request rate.
type ReadConfig struct {
	// MaxExecutionTime stops a read query that runs longer (the engine's
	// max_execution_time); its caller gets 503. Default 10s.
	MaxExecutionTime time.Duration `yaml:"max_execution_time"`
	// MaxMemoryBytes stops a read query that needs more memory (the
	// engine's max_memory_usage); its caller gets 503. Default 1 GiB.
	MaxMemoryBytes int64 `yaml:"max_memory_bytes"`
	// MaxRowsToRead stops a read query that reads more rows (the engine's
	// max_rows_to_read); its caller gets 400. Default 0 (no limit).
	MaxRowsToRead int64 `yaml:"max_rows_to_read"`
	// MaxThreads caps the engine threads of one read query, leaving
	// processor time to inserts. Default 2.
	MaxThreads int `yaml:"max_threads"`
	// Conns is the number of store connections that read queries may use,
	// apart from those of the sink, the aggregator and the other background
	// work. Default 4: twice TokenConcurrency, so that one token can hold
	// at most half of them.
	Conns int `yaml:"conns"`
	// QueueTimeout bounds the wait of a read query for one of those
	// connections; then its caller gets 503. Default 5s.
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// TokenConcurrency is how many read requests one token may have in
	// progress; more get 429. Default 2.
	TokenConcurrency int `yaml:"token_concurrency"`
	// TokenRate is the sustained read requests per second of one token;
	// more get 429 with Retry-After. Default 5.
	TokenRate float64 `yaml:"token_rate"`
	// TokenBurst is how many read requests a token may make at once
	// above its rate (the bucket size). Default 20.
	TokenBurst int `yaml:"token_burst"`
}

// WithDefaults fills unset fields.
func (c ReadConfig) WithDefaults() ReadConfig {
	if c.MaxExecutionTime == 0 {
		c.MaxExecutionTime = 10 * time.Second
	}
	if c.MaxMemoryBytes == 0 {
		c.MaxMemoryBytes = 1 << 30
	}
	if c.MaxThreads == 0 {
		c.MaxThreads = 2
	}
	if c.Conns == 0 {
		c.Conns = 4
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = store.DefaultInteractiveQueueTimeout
	}
	if c.TokenConcurrency == 0 {
		c.TokenConcurrency = 2
	}
	if c.TokenRate == 0 {
		c.TokenRate = 5
	}
	if c.TokenBurst == 0 {
		c.TokenBurst = 20
	}
	return c
}

// Validate reports every invalid setting.
func (c ReadConfig) Validate() error {
	var errs []error
	if c.MaxExecutionTime < 100*time.Millisecond || c.MaxExecutionTime > time.Hour {
		errs = append(errs, fmt.Errorf("api.max_execution_time: %s is out of range 100ms-1h", c.MaxExecutionTime))
	}
	if c.MaxMemoryBytes < 0 {
		errs = append(errs, fmt.Errorf("api.max_memory_bytes: %d is negative", c.MaxMemoryBytes))
	}
	if c.MaxRowsToRead < 0 {
		errs = append(errs, fmt.Errorf("api.max_rows_to_read: %d is negative", c.MaxRowsToRead))
	}
	if c.MaxThreads < 1 || c.MaxThreads > 256 {
		errs = append(errs, fmt.Errorf("api.max_threads: %d is out of range 1-256", c.MaxThreads))
	}
	if c.Conns < 1 || c.Conns > 64 {
		errs = append(errs, fmt.Errorf("api.conns: %d is out of range 1-64", c.Conns))
	}
	if c.QueueTimeout < 10*time.Millisecond || c.QueueTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("api.queue_timeout: %s is out of range 10ms-10m", c.QueueTimeout))
	}
	if c.TokenConcurrency < 1 || c.TokenConcurrency > 1000 {
		errs = append(errs, fmt.Errorf("api.token_concurrency: %d is out of range 1-1000", c.TokenConcurrency))
	}
	if !(c.TokenRate > 0) || c.TokenRate > 1e6 || math.IsInf(c.TokenRate, 0) {
		errs = append(errs, fmt.Errorf("api.token_rate: %v is out of range (0, 1000000] requests per second", c.TokenRate))
	}
	if c.TokenBurst < 1 || c.TokenBurst > 1e6 {
		errs = append(errs, fmt.Errorf("api.token_burst: %d is out of range 1-1000000", c.TokenBurst))
	}
	return errors.Join(errs...)
}

// Store returns the store's configuration of interactive reads.
func (c ReadConfig) Store() store.InteractiveConfig {
	return store.InteractiveConfig{Conns: c.Conns, QueueTimeout: c.QueueTimeout, MaxExecutionTime: c.MaxExecutionTime,
		MaxMemoryBytes: c.MaxMemoryBytes, MaxRowsToRead: c.MaxRowsToRead, MaxThreads: c.MaxThreads}
}

// maxLimiterKeys bounds the tokens a Limiter tracks at once. Keys are the
// names of configured tokens, so this is never reached in practice; idle
// keys are forgotten first.
const maxLimiterKeys = 10000

// Limiter bounds, per key (a token's name), the requests in progress and
// the request rate (a token bucket). It costs one map lookup under a mutex
// per request and holds at most maxLimiterKeys keys.
type Limiter struct {
	conc  int
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*keyState
	max  int

	refused *prometheus.CounterVec
}

type keyState struct {
	tokens   float64   // available at last
	last     time.Time // when tokens was computed
	inflight int
}

// NewLimiter builds a limiter from cfg (defaults applied). reg may be nil.
func NewLimiter(cfg ReadConfig, reg prometheus.Registerer) *Limiter {
	cfg = cfg.WithDefaults()
	l := &Limiter{conc: cfg.TokenConcurrency, rate: cfg.TokenRate, burst: float64(cfg.TokenBurst), now: time.Now,
		keys: map[string]*keyState{}, max: maxLimiterKeys,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterline_api_requests_limited_total",
			Help: "Read API requests refused with 429, by reason (concurrency, rate).",
		}, []string{"reason"})}
	// Both reasons start at zero, so dashboards show them before the first refusal.
	l.refused.WithLabelValues("concurrency")
	l.refused.WithLabelValues("rate")
	if reg != nil {
		reg.MustRegister(l.refused)
	}
	return l
}

// Refusal says why a request was refused and when to retry.
type Refusal struct {
	Reason     string // "concurrency" or "rate"
	RetryAfter time.Duration
	Message    string
}

// Acquire admits one request of key, or refuses it. An admitted request
// must call release exactly once when it is done.
func (l *Limiter) Acquire(key string) (release func(), refused *Refusal) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.keys[key]
	if st == nil {
		if len(l.keys) >= l.max {
			l.sweep(now)
		}
		if len(l.keys) >= l.max {
			return nil, l.refuse(&Refusal{Reason: "concurrency", RetryAfter: time.Second, Message: "too many callers at once; retry later"})
		}
		st = &keyState{tokens: l.burst, last: now}
		l.keys[key] = st
	}
	st.refill(now, l.rate, l.burst)
	if st.inflight >= l.conc {
		return nil, l.refuse(&Refusal{Reason: "concurrency", RetryAfter: time.Second,
			Message: fmt.Sprintf("token %q has %d read requests in progress, the most allowed (api.token_concurrency); retry when one has finished", key, st.inflight)})
	}
	if st.tokens < 1 {
		wait := time.Duration((1 - st.tokens) / l.rate * float64(time.Second))
		return nil, l.refuse(&Refusal{Reason: "rate", RetryAfter: wait,
			Message: fmt.Sprintf("token %q is over its read rate of %g requests per second (api.token_rate, api.token_burst)", key, l.rate)})
	}
	st.tokens--
	st.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			st.inflight--
			l.mu.Unlock()
		})
	}, nil
}

func (l *Limiter) refuse(r *Refusal) *Refusal {
	l.refused.WithLabelValues(r.Reason).Inc()
	return r
}

// refill adds the tokens earned since last, up to burst.
func (st *keyState) refill(now time.Time, rate, burst float64) {
	if d := now.Sub(st.last); d > 0 {
		st.tokens = math.Min(burst, st.tokens+d.Seconds()*rate)
		st.last = now
	}
}

// sweep forgets keys with nothing in progress and a full bucket: they are
// indistinguishable from keys never seen.
func (l *Limiter) sweep(now time.Time) {
	for k, st := range l.keys {
		st.refill(now, l.rate, l.burst)
		if st.inflight == 0 && st.tokens >= l.burst {
			delete(l.keys, k)
		}
	}
}

// Len returns the number of keys tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// ReadEndpoint wraps a read endpoint: the caller's token is limited by l,
// and every store query of the handler runs as an interactive read (own
// connections, per-statement limits). A request without a valid token is
// passed on unlimited, for the handler to answer 401 without any query.
func ReadEndpoint(l *Limiter, tokens *auth.Tokens, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := tokens.Authenticate(r)
		if err != nil {
			next.ServeHTTP(w, r)
			return
		}
		release, refused := l.Acquire(p.Name)
		if refused != nil {
			secs := int64(math.Ceil(refused.RetryAfter.Seconds()))
			w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
			httpx.WriteError(w, http.StatusTooManyRequests, refused.Message)
			return
		}
		defer release()
		next.ServeHTTP(w, r.WithContext(store.Interactive(r.Context())))
	})
}

// writeStoreLimit answers a query that the store stopped at a limit or
// could not start for lack of a connection, and reports whether it did.
func writeStoreLimit(w http.ResponseWriter, err error) bool {
	if l, ok := store.LimitExceeded(err); ok {
		switch l {
		case store.LimitRows:
			httpx.WriteError(w, http.StatusBadRequest, "the query would read more rows than allowed (api.max_rows_to_read): ask for a shorter range or a single key")
		case store.LimitTime:
			w.Header().Set("Retry-After", "5")
			httpx.WriteError(w, http.StatusServiceUnavailable, "the query ran longer than allowed (api.max_execution_time) and was stopped: ask for a shorter range, a coarser window or fewer group_by dimensions")
		default:
			w.Header().Set("Retry-After", "5")
			httpx.WriteError(w, http.StatusServiceUnavailable, "the query needed more memory than allowed (api.max_memory_bytes) and was stopped: ask for a shorter range, a coarser window or fewer group_by dimensions")
		}
		return true
	}
	if errors.Is(err, store.ErrBusy) {
		w.Header().Set("Retry-After", "1")
		httpx.WriteError(w, http.StatusServiceUnavailable, "every connection for read queries is busy (api.conns, api.queue_timeout); retry shortly")
		return true
	}
	return false
}
