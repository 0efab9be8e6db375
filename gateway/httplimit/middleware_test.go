package httplimit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// standInLimits is a hand-written stand-in for Meterline's GET /v1/limits,
// used where a test needs answers the real server never gives (malformed,
// oversized, hostile) or a clock it cannot move. It serves the pages set
// with answer, in order, the last one again and again.
type standInLimits struct {
	srv   *httptest.Server
	mu    sync.Mutex
	pages []string
	code  int
	calls atomic.Int64
	since []string
}

func newStandInLimits(t *testing.T) *standInLimits {
	s := &standInLimits{code: 200}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/v1/limits" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		s.mu.Lock()
		s.since = append(s.since, r.URL.Query().Get("since"))
		code, page := s.code, ""
		if len(s.pages) > 0 {
			page = s.pages[0]
			if len(s.pages) > 1 {
				s.pages = s.pages[1:]
			}
		}
		s.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, page)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *standInLimits) answer(code int, pages ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.code, s.pages = code, pages
}

func page(version string, more, reset bool, keys ...string) string {
	return fmt.Sprintf(`{"reset":%v,"keys":[%s],"version":%q,"more":%v,"staleness_seconds":0.5}`, reset, strings.Join(keys, ","), version, more)
}

func keyJSON(id string, extra string) string {
	return fmt.Sprintf(`{"api_key_id":%q,"customer_id":"c","status":"active","rate_limits":[],"hard_limit":null,"over_hard_limit":false,"bill_rejected":false,"version":1%s}`, id, extra)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTestLimiter returns a limiter over the stand-in that polls only when
// the test calls Poll.
func newTestLimiter(t *testing.T, s *standInLimits, clk *clock, mod func(*Config)) *Limiter {
	t.Helper()
	cfg := Config{Endpoint: s.srv.URL, Token: "tok", PollInterval: time.Hour, MaxStaleness: 2 * time.Hour,
		KeyFunc: func(r *http.Request) string { return r.Header.Get("X-Api-Key-Id") }, now: clk.now}
	if mod != nil {
		mod(&cfg)
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	<-l.Synced() // the first poll, at start
	return l
}

func serve(l *Limiter, key string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/x", nil)
	if key != "" {
		r.Header.Set("X-Api-Key-Id", key)
	}
	l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })).ServeHTTP(w, r)
	return w
}

func reason(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var b errorBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatalf("%d %q: %v", w.Code, w.Body.String(), err)
	}
	return b.Reason
}

// TestBadAnswersKeepTheCopy: an answer that is not 200, not JSON, too
// large, or holds an invalid key changes nothing: the previous copy stays
// whole, and the next good answer applies.
func TestBadAnswersKeepTheCopy(t *testing.T) {
	s := newStandInLimits(t)
	s.answer(200, page("e.1", false, false, keyJSON("k_dis", `,"status":"disabled"`)))
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	l := newTestLimiter(t, s, clk, nil)
	if w := serve(l, "k_dis"); w.Code != 403 || reason(t, w) != "key_disabled" {
		t.Fatalf("disabled key: %d %s", w.Code, w.Body)
	}
	old := maxPageBytes
	maxPageBytes = 1 << 10
	defer func() { maxPageBytes = old }()
	for name, a := range map[string]struct {
		code int
		body string
	}{
		"500":               {500, "boom"},
		"401":               {401, `{"error":"no"}`},
		"not JSON":          {200, "<html>"},
		"truncated":         {200, `{"keys":[`},
		"no version":        {200, `{"keys":[]}`},
		"too large":         {200, page("e.2", false, false, keyJSON(strings.Repeat("k", 100), ""), keyJSON(strings.Repeat("j", 100), ""), strings.Repeat(" ", 2000))},
		"empty key":         {200, page("e.2", false, false, keyJSON("", ""))},
		"long key":          {200, page("e.2", false, false, keyJSON(strings.Repeat("k", 129), ""))},
		"bad rate limit":    {200, page("e.2", false, false, keyJSON("k_dis", `,"rate_limits":[{"per":"soon","requests":5}]`))},
		"sub-second window": {200, page("e.2", false, false, keyJSON("k_dis", `,"rate_limits":[{"per":"1ms","requests":5}]`))},
		"zero requests":     {200, page("e.2", false, false, keyJSON("k_dis", `,"rate_limits":[{"per":"1s","requests":0}]`))},
		"wrong types":       {200, `{"keys":[{"api_key_id":5}],"version":"e.2"}`},
		"bad second page":   {200, ""}, // set below
	} {
		if name == "bad second page" {
			s.answer(200, page("e.2", true, false, keyJSON("k_dis", "")), "{")
		} else {
			s.answer(a.code, a.body)
		}
		if err := l.Poll(context.Background()); err == nil {
			t.Errorf("%s: the answer was taken", name)
		}
		if w := serve(l, "k_dis"); w.Code != 403 {
			t.Errorf("%s: the previous copy was changed: %d", name, w.Code)
		}
	}
	// A good answer after them applies, asked from the last good version.
	s.answer(200, page("e.3", false, false, keyJSON("k_dis", "")))
	if err := l.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := serve(l, "k_dis"); w.Code != 200 {
		t.Errorf("re-enabled key: %d", w.Code)
	}
	s.mu.Lock()
	last := s.since[len(s.since)-1]
	s.mu.Unlock()
	if last != "e.1" {
		t.Errorf("asked since %q after failures, want e.1", last)
	}
}

// TestPagesResetsAndUnknownKeys: pages apply together; a reset forgets
// keys it does not list; "unknown" removes a key.
func TestPagesResetsAndUnknownKeys(t *testing.T) {
	s := newStandInLimits(t)
	s.answer(200, page("e.1", true, false, keyJSON("a", `,"status":"disabled"`)), page("e.2", false, false, keyJSON("b", `,"status":"disabled"`)))
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	l := newTestLimiter(t, s, clk, func(c *Config) { c.UnknownKeys = DenyUnknown })
	for _, k := range []string{"a", "b"} {
		if w := serve(l, k); w.Code != 403 || reason(t, w) != "key_disabled" {
			t.Errorf("%s: %d %s", k, w.Code, w.Body)
		}
	}
	if w := serve(l, "nobody"); w.Code != 403 || reason(t, w) != "key_unknown" {
		t.Errorf("unknown key with DenyUnknown: %d %s", w.Code, w.Body)
	}
	if w := serve(l, ""); w.Code != 200 {
		t.Errorf("a request without a key: %d", w.Code)
	}
	s.answer(200, page("e.3", false, false, `{"api_key_id":"a","customer_id":"c","status":"unknown","rate_limits":[],"version":3}`))
	if err := l.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := serve(l, "a"); reason(t, w) != "key_unknown" {
		t.Errorf("a after unknown: %s", w.Body)
	}
	s.answer(200, page("f.1", false, true, keyJSON("c", `,"status":"disabled"`)))
	if err := l.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w := serve(l, "b"); reason(t, w) != "key_unknown" {
		t.Errorf("b after a reset without it: %s", w.Body)
	}
	if w := serve(l, "c"); reason(t, w) != "key_disabled" {
		t.Errorf("c after the reset: %s", w.Body)
	}
}

// TestKeyBoundsByTheGatewaysClock: expires_at and not_before apply at the
// instant, between polls.
func TestKeyBoundsByTheGatewaysClock(t *testing.T) {
	s := newStandInLimits(t)
	t0 := time.Unix(1_800_000_000, 0).UTC()
	s.answer(200, page("e.1", false, false,
		keyJSON("old", fmt.Sprintf(`,"expires_at":%q`, t0.Add(time.Minute).Format(time.RFC3339))),
		keyJSON("new", fmt.Sprintf(`,"status":"not_yet_valid","not_before":%q`, t0.Add(time.Minute).Format(time.RFC3339)))))
	clk := &clock{t: t0}
	l := newTestLimiter(t, s, clk, nil)
	if serve(l, "old").Code != 200 || reason(t, serve(l, "new")) != "key_not_yet_valid" {
		t.Fatal("before the rotation instant")
	}
	clk.add(time.Minute)
	if reason(t, serve(l, "old")) != "key_expired" || serve(l, "new").Code != 200 {
		t.Fatal("after the rotation instant")
	}
}

// TestFailModes: once the copy is older than MaxStaleness, fail-open keeps
// enforcing the last states and passes unknown keys; fail-closed refuses
// with 503. Both recover at the next good poll.
func TestFailModes(t *testing.T) {
	for _, mode := range []FailMode{FailOpen, FailClosed} {
		s := newStandInLimits(t)
		s.answer(200, page("e.1", false, false, keyJSON("dis", `,"status":"disabled"`), keyJSON("ok", "")))
		clk := &clock{t: time.Unix(1_800_000_000, 0)}
		reg := prometheus.NewRegistry()
		l := newTestLimiter(t, s, clk, func(c *Config) {
			c.FailMode = mode
			c.MaxStaleness = time.Minute + time.Second
			c.PollInterval = time.Minute
			c.Registerer = reg
		})
		s.answer(503, "down")
		clk.add(time.Minute) // 60.5s old: fresh still
		if w := serve(l, "ok"); w.Code != 200 {
			t.Fatalf("%s, fresh: %d", mode, w.Code)
		}
		clk.add(time.Second)
		wantOK, wantDis, wantUnknown := 200, 403, 200
		if mode == FailClosed {
			wantOK, wantDis, wantUnknown = 503, 503, 503
		}
		if w := serve(l, "ok"); w.Code != wantOK {
			t.Errorf("%s, stale, active key: %d", mode, w.Code)
		}
		if w := serve(l, "dis"); w.Code != wantDis {
			t.Errorf("%s, stale, disabled key: %d", mode, w.Code)
		}
		if w := serve(l, "new"); w.Code != wantUnknown {
			t.Errorf("%s, stale, unknown key: %d", mode, w.Code)
		}
		if mode == FailClosed {
			if w := serve(l, "ok"); reason(t, w) != "limits_unavailable" || w.Header().Get("Retry-After") == "" {
				t.Errorf("fail-closed answer: %s %v", w.Body, w.Header())
			}
			if got := testutil.ToFloat64(counterOf(t, reg, "meterline_gateway_requests_total", "unavailable")); got != 4 {
				t.Errorf("unavailable decisions: %v", got)
			}
		}
		s.answer(200, page("e.2", false, false))
		if err := l.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
		if w := serve(l, "ok"); w.Code != 200 {
			t.Errorf("%s, after recovery: %d", mode, w.Code)
		}
	}
}

// counterOf returns one labelled sample of a gathered metric as a
// collector testutil can read.
func counterOf(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x", Help: "x"}, func() float64 { return m.GetCounter().GetValue() })
				}
			}
		}
	}
	t.Fatalf("%s{%s} not found", name, label)
	return nil
}

// TestHardLimitAndHeaders: over the hard limit, 429 with Retry-After until
// the next month; rate-limited keys carry the draft headers.
func TestHardLimitAndHeaders(t *testing.T) {
	s := newStandInLimits(t)
	s.answer(200, page("e.1", false, false,
		keyJSON("capped", `,"over_hard_limit":true`),
		keyJSON("rated", `,"rate_limits":[{"per":"1s","window_seconds":1,"requests":2},{"per":"1m","window_seconds":60,"requests":100}]`)))
	clk := &clock{t: time.Date(2026, 12, 31, 23, 59, 0, 0, time.UTC)}
	l := newTestLimiter(t, s, clk, nil)
	w := serve(l, "capped")
	if w.Code != 429 || reason(t, w) != "hard_limit" || w.Header().Get("Retry-After") != "60" {
		t.Errorf("capped: %d %s %v", w.Code, w.Body, w.Header())
	}
	for i, want := range []struct {
		code int
		rl   string
	}{{200, `"1s";r=1;t=1`}, {200, `"1s";r=0;t=1`}, {429, `"1s";r=0;t=2`}} {
		w := serve(l, "rated")
		if w.Code != want.code || w.Header().Get("RateLimit") != want.rl || w.Header().Get("RateLimit-Policy") != `"1s";q=2;w=1, "1m";q=100;w=60` {
			t.Errorf("request %d: %d RateLimit %q Policy %q", i, w.Code, w.Header().Get("RateLimit"), w.Header().Get("RateLimit-Policy"))
		}
		if want.code == 429 && (w.Header().Get("Retry-After") != "2" || reason(t, w) != "rate_limit:1s") {
			t.Errorf("429: %s %v", w.Body, w.Header())
		}
	}
}

func TestConfigValidated(t *testing.T) {
	_, err := New(Config{Endpoint: "ftp://x?y", PollInterval: time.Millisecond, MaxStaleness: time.Millisecond, FailMode: "maybe", UnknownKeys: "ask", MaxKeys: -1, PageSize: 20000})
	for _, want := range []string{"Endpoint", "KeyFunc is required", "PollInterval", "MaxStaleness", "FailMode", "UnknownKeys", "MaxKeys", "PageSize"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
