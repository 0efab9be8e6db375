package httplimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// keyState is what the middleware enforces for one key, from the last
// fetch.
type keyState struct {
	customer     string
	disabled     bool
	notBefore    time.Time
	expiresAt    time.Time
	limits       []rateLimit
	policy       []string // the RateLimit-Policy header value; nil without limits
	overHard     bool
	billRejected bool
}

// statusAt is the key's status by the gateway's own clock: not_before and
// expires_at are applied at the instant, between fetches.
func (s *keyState) statusAt(now time.Time) string {
	switch {
	case s.disabled:
		return "disabled"
	case !s.notBefore.IsZero() && now.Before(s.notBefore):
		return "not_yet_valid"
	case !s.expiresAt.IsZero() && !now.Before(s.expiresAt):
		return "expired"
	}
	return "active"
}

// states is one published copy of every key's state. Never modified.
type states struct {
	keys    map[string]*keyState
	version string
	// asOf is when Meterline computed the figures, by this process's
	// clock: the fetch's start minus the staleness Meterline reported.
	asOf time.Time
}

// Limiter enforces Meterline's limits in front of a service: rate limits
// per key in memory, and the hard limit and key status from a copy of
// GET /v1/limits refreshed in the background. Create it with New, stop it
// with Close.
type Limiter struct {
	cfg  Config
	url  string
	cur  atomic.Pointer[states]
	wins *windows

	synced    chan struct{} // closed after the first complete fetch
	syncOnce  sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	failing   atomic.Bool
	decisions [numDecisions]atomic.Uint64
	polls     [2]atomic.Uint64 // success, error
}

// New returns a Limiter and starts fetching the states. It reports every
// invalid setting at once, and an error when the metrics cannot be
// registered. Until the first fetch completes, FailMode applies.
func New(cfg Config) (*Limiter, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("httplimit: %w", err)
	}
	l := &Limiter{
		cfg:    cfg,
		url:    strings.TrimSuffix(cfg.Endpoint, "/") + "/v1/limits",
		wins:   newWindows(cfg.MaxKeys),
		synced: make(chan struct{}),
		done:   make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(&metrics{l: l}); err != nil {
			return nil, fmt.Errorf("httplimit: registering metrics: %w", err)
		}
	}
	go l.run()
	return l, nil
}

// Synced is closed once the first complete fetch of the states is done.
func (l *Limiter) Synced() <-chan struct{} { return l.synced }

// Close stops the fetches. The middleware keeps answering from the last
// copy (which grows stale: FailMode then applies).
func (l *Limiter) Close() {
	l.cancel()
	<-l.done
}

func (l *Limiter) run() {
	defer close(l.done)
	t := time.NewTicker(l.cfg.PollInterval)
	defer t.Stop()
	for {
		err := l.Poll(l.ctx)
		switch {
		case err != nil && l.ctx.Err() == nil:
			l.polls[1].Add(1)
			if !l.failing.Swap(true) {
				l.cfg.Logger.Warn("meterline limits: fetch failed; enforcing the last states until they are older than MaxStaleness",
					"err", err, "max_staleness", l.cfg.MaxStaleness, "fail_mode", l.cfg.FailMode)
			}
		case err == nil:
			l.polls[0].Add(1)
			if l.failing.Swap(false) {
				l.cfg.Logger.Info("meterline limits: fetching again")
			}
		}
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// maxPageBytes bounds one answer (a variable for tests): 10000 keys of 128-byte ids with eight
// rate limits each stay far below.
var maxPageBytes int64 = 64 << 20

// maxPages bounds one Poll (10 million keys at the largest page size).
const maxPages = 10000

// Poll fetches the changes since the last fetch, every page of them, and
// publishes the new copy once they are all in (a reset is never seen
// half-loaded). The background loop calls it every PollInterval; tests
// and callers that want a fresh copy now may call it too.
func (l *Limiter) Poll(ctx context.Context) error {
	prev := l.cur.Load()
	since := ""
	var next map[string]*keyState
	if prev != nil {
		since = prev.version
	}
	var asOf time.Time
	for range maxPages {
		start := l.cfg.now()
		page, err := l.fetch(ctx, since)
		if err != nil {
			return err
		}
		if next == nil {
			switch {
			case page.Reset || prev == nil:
				next = make(map[string]*keyState, len(page.Keys))
			default:
				next = maps.Clone(prev.keys)
			}
		}
		for _, k := range page.Keys {
			if k.Status == "unknown" {
				delete(next, k.APIKeyID)
				continue
			}
			st, err := k.state()
			if err != nil {
				return fmt.Errorf("GET %s: key %q: %w", l.url, k.APIKeyID, err)
			}
			next[k.APIKeyID] = st
		}
		if asOf.IsZero() {
			asOf = start.Add(-time.Duration(page.StalenessSeconds * float64(time.Second)))
		}
		since = page.Version
		if !page.More {
			l.cur.Store(&states{keys: next, version: since, asOf: asOf})
			l.syncOnce.Do(func() { close(l.synced) })
			return nil
		}
	}
	return fmt.Errorf("GET %s: more than %d pages", l.url, maxPages)
}

// wireState is one key of GET /v1/limits.
type wireState struct {
	APIKeyID   string     `json:"api_key_id"`
	CustomerID string     `json:"customer_id"`
	Status     string     `json:"status"`
	NotBefore  *time.Time `json:"not_before"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RateLimits []struct {
		Per      string `json:"per"`
		Requests int64  `json:"requests"`
	} `json:"rate_limits"`
	OverHardLimit bool `json:"over_hard_limit"`
	BillRejected  bool `json:"bill_rejected"`
}

type wirePage struct {
	Reset            bool        `json:"reset"`
	Keys             []wireState `json:"keys"`
	Version          string      `json:"version"`
	More             bool        `json:"more"`
	StalenessSeconds float64     `json:"staleness_seconds"`
}

func (k *wireState) state() (*keyState, error) {
	if k.APIKeyID == "" || len(k.APIKeyID) > 128 {
		return nil, errors.New("api_key_id must be 1-128 bytes")
	}
	if len(k.RateLimits) > maxRateLimits {
		return nil, fmt.Errorf("more than %d rate limits", maxRateLimits)
	}
	st := &keyState{customer: k.CustomerID, disabled: k.Status == "disabled", overHard: k.OverHardLimit, billRejected: k.BillRejected}
	if k.NotBefore != nil {
		st.notBefore = *k.NotBefore
	}
	if k.ExpiresAt != nil {
		st.expiresAt = *k.ExpiresAt
	}
	var policy []string
	for _, rl := range k.RateLimits {
		per, err := time.ParseDuration(rl.Per)
		if err != nil || per < time.Second || rl.Requests < 1 {
			return nil, fmt.Errorf("rate limit %q %d is not a window of 1s or more and a positive count", rl.Per, rl.Requests)
		}
		q := strconv.Quote(rl.Per)
		st.limits = append(st.limits, rateLimit{per: per, requests: rl.Requests, name: rl.Per, quoted: q, reason: "rate_limit:" + rl.Per})
		policy = append(policy, fmt.Sprintf("%s;q=%d;w=%d", q, rl.Requests, int64(per/time.Second)))
	}
	if len(policy) > 0 {
		st.policy = []string{strings.Join(policy, ", ")}
	}
	return st, nil
}

func (l *Limiter) fetch(ctx context.Context, since string) (*wirePage, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.RequestTimeout)
	defer cancel()
	u := l.url + "?limit=" + strconv.Itoa(l.cfg.PageSize)
	if since != "" {
		u += "&since=" + url.QueryEscape(since)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if l.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+l.cfg.Token)
	}
	resp, err := l.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPageBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", l.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", l.url, resp.Status, body)
	}
	if int64(len(body)) > maxPageBytes {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", l.url, maxPageBytes)
	}
	var p wirePage
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("GET %s: %w", l.url, err)
	}
	if p.Version == "" {
		return nil, fmt.Errorf("GET %s: the answer has no version", l.url)
	}
	return &p, nil
}

// Decisions of the middleware, the label of
// meterline_gateway_requests_total.
const (
	decAllowed = iota
	decRateLimited
	decHardLimited
	decForbidden
	decUnavailable
	numDecisions
)

var decisionNames = [numDecisions]string{"allowed", "rate_limited", "hard_limited", "forbidden", "unavailable"}

var (
	descRequests = prometheus.NewDesc("meterline_gateway_requests_total",
		"Requests with an API key checked by the limits middleware, by decision (allowed, rate_limited, hard_limited, forbidden: key not active or unknown, unavailable: limits stale and fail-closed).", []string{"decision"}, nil)
	descPolls = prometheus.NewDesc("meterline_gateway_limits_fetches_total",
		"Fetches of GET /v1/limits (every page of one round), by result.", []string{"result"}, nil)
	descStaleness = prometheus.NewDesc("meterline_gateway_limits_staleness_seconds",
		"Age of the limit states the middleware enforces (-1 before the first fetch).", nil, nil)
	descKeys = prometheus.NewDesc("meterline_gateway_limits_keys",
		"Keys in the middleware's copy of the limit states.", nil, nil)
	descWindows = prometheus.NewDesc("meterline_gateway_rate_windows",
		"Keys whose rate-limit windows are held in memory.", nil, nil)
	descEvicted = prometheus.NewDesc("meterline_gateway_rate_windows_evicted_total",
		"Keys whose rate-limit windows were forgotten to stay within MaxKeys.", nil, nil)
)

type metrics struct{ l *Limiter }

func (c *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descPolls, descStaleness, descKeys, descWindows, descEvicted} {
		ch <- d
	}
}

func (c *metrics) Collect(ch chan<- prometheus.Metric) {
	l := c.l
	for i, name := range decisionNames {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(l.decisions[i].Load()), name)
	}
	ch <- prometheus.MustNewConstMetric(descPolls, prometheus.CounterValue, float64(l.polls[0].Load()), "success")
	ch <- prometheus.MustNewConstMetric(descPolls, prometheus.CounterValue, float64(l.polls[1].Load()), "error")
	age, keys := -1.0, 0
	if s := l.cur.Load(); s != nil {
		age, keys = l.cfg.now().Sub(s.asOf).Seconds(), len(s.keys)
	}
	ch <- prometheus.MustNewConstMetric(descStaleness, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, float64(keys))
	ch <- prometheus.MustNewConstMetric(descWindows, prometheus.GaugeValue, float64(l.wins.len()))
	ch <- prometheus.MustNewConstMetric(descEvicted, prometheus.CounterValue, float64(l.wins.evicted.Load()))
}
