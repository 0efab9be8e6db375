package api

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// fakeClock is the limiter's clock in these tests: time moves only when
// the test says so.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClockedLimiter(cfg ReadConfig) (*Limiter, *fakeClock) {
	l := NewLimiter(cfg, nil)
	c := &fakeClock{t: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)}
	l.now = c.now
	return l, c
}

func TestLimiterConcurrencyIsPerToken(t *testing.T) {
	l, _ := newClockedLimiter(ReadConfig{TokenConcurrency: 2, TokenRate: 1000, TokenBurst: 1000})
	r1, ref := l.Acquire("acme")
	if ref != nil {
		t.Fatal(ref.Message)
	}
	r2, ref := l.Acquire("acme")
	if ref != nil {
		t.Fatal(ref.Message)
	}
	if _, ref := l.Acquire("acme"); ref == nil || ref.Reason != "concurrency" || ref.RetryAfter <= 0 {
		t.Fatalf("third concurrent request of one token: %+v, want refused for concurrency", ref)
	} else if !strings.Contains(ref.Message, "acme") || !strings.Contains(ref.Message, "api.token_concurrency") {
		t.Errorf("unclear refusal: %s", ref.Message)
	}
	// Another token is not affected.
	rb, ref := l.Acquire("globex")
	if ref != nil {
		t.Fatalf("another token refused while the first is at its limit: %s", ref.Message)
	}
	rb()
	// Releasing (twice is harmless) frees exactly one place.
	r1()
	r1()
	r3, ref := l.Acquire("acme")
	if ref != nil {
		t.Fatalf("after a release: %s", ref.Message)
	}
	if _, ref := l.Acquire("acme"); ref == nil {
		t.Fatal("a double release freed two places")
	}
	r2()
	r3()
	if got := testutil.ToFloat64(l.refused.WithLabelValues("concurrency")); got != 2 {
		t.Errorf("meterline_api_requests_limited_total{reason=concurrency} = %v, want 2", got)
	}
}

func TestLimiterRateIsATokenBucket(t *testing.T) {
	l, clock := newClockedLimiter(ReadConfig{TokenConcurrency: 100, TokenRate: 2, TokenBurst: 3})
	for i := range 3 {
		release, ref := l.Acquire("acme")
		if ref != nil {
			t.Fatalf("request %d within the burst: %s", i, ref.Message)
		}
		release()
	}
	_, ref := l.Acquire("acme")
	if ref == nil || ref.Reason != "rate" {
		t.Fatalf("request over the burst: %+v, want refused for rate", ref)
	}
	if ref.RetryAfter != 500*time.Millisecond {
		t.Errorf("Retry-After %s, want 500ms (one token at 2/s)", ref.RetryAfter)
	}
	// A refused request costs nothing: after 500ms exactly one is admitted.
	clock.add(500 * time.Millisecond)
	release, ref := l.Acquire("acme")
	if ref != nil {
		t.Fatalf("after the wait: %s", ref.Message)
	}
	release()
	if _, ref := l.Acquire("acme"); ref == nil {
		t.Fatal("two requests admitted for one earned token")
	}
	// Idle time refills up to the burst, not beyond.
	clock.add(time.Hour)
	for i := range 3 {
		release, ref := l.Acquire("acme")
		if ref != nil {
			t.Fatalf("request %d after an idle hour: %s", i, ref.Message)
		}
		release()
	}
	if _, ref := l.Acquire("acme"); ref == nil {
		t.Fatal("an idle hour earned more than the burst")
	}
	// Another token has its own bucket.
	if _, ref := l.Acquire("globex"); ref != nil {
		t.Fatalf("another token refused: %s", ref.Message)
	}
}

func TestLimiterMemoryIsBounded(t *testing.T) {
	l, clock := newClockedLimiter(ReadConfig{TokenConcurrency: 1, TokenRate: 1, TokenBurst: 1})
	l.max = 3
	busy, _ := l.Acquire("busy") // stays in progress
	for _, k := range []string{"a", "b"} {
		release, ref := l.Acquire(k)
		if ref != nil {
			t.Fatal(ref.Message)
		}
		release()
	}
	// Full, and a and b have not earned their token back yet: nothing can
	// be forgotten, so a new key is refused rather than the map grown.
	if _, ref := l.Acquire("c"); ref == nil {
		t.Fatal("a fourth key admitted with room for three and none idle")
	}
	if n := l.Len(); n != 3 {
		t.Fatalf("tracking %d keys, bound 3", n)
	}
	// Once a and b are idle with full buckets they are forgotten.
	clock.add(time.Second)
	for i := range 100 {
		release, ref := l.Acquire(fmt.Sprintf("k%d", i))
		if ref != nil {
			t.Fatalf("key %d: %s", i, ref.Message)
		}
		release()
		clock.add(time.Second)
	}
	if n := l.Len(); n > 3 {
		t.Fatalf("tracking %d keys, bound 3", n)
	}
	// The key in progress was never forgotten: it is still at its limit.
	if _, ref := l.Acquire("busy"); ref == nil || ref.Reason != "concurrency" {
		t.Fatalf("the busy key lost its state: %+v", ref)
	}
	busy()
}

// TestReadEndpointLimitsPerToken drives the middleware through HTTP with a
// handler that holds each request until the test lets it go.
func TestReadEndpointLimitsPerToken(t *testing.T) {
	tk := tokens(t)
	reg := prometheus.NewRegistry()
	l := NewLimiter(ReadConfig{TokenConcurrency: 2, TokenRate: 1000, TokenBurst: 1000}, reg)
	hold := make(chan struct{})
	entered := make(chan bool, 10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := httpx.Authenticate(w, r, tk, "customer"); !ok {
			return
		}
		entered <- store.IsInteractive(r.Context())
		<-hold
		httpx.WriteJSON(w, map[string]string{"ok": "yes"})
	})
	srv := httptest.NewServer(ReadEndpoint(l, tk, h))
	defer srv.Close()
	get := func(tok string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return nil
		}
		resp.Body.Close()
		return resp
	}
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp := get(tokAcme); resp != nil {
				codes <- resp.StatusCode
			}
		}()
	}
	for range 2 {
		if interactive := <-entered; !interactive {
			t.Error("the handler's context is not marked interactive")
		}
	}
	// Both of acme's places are taken: a third request is refused at once.
	resp := get(tokAcme)
	if resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third concurrent request: %v, want 429 with Retry-After 1", resp)
	}
	// globex is admitted meanwhile.
	done := make(chan int, 1)
	go func() {
		if resp := get(tokGlobex); resp != nil {
			done <- resp.StatusCode
		}
	}()
	<-entered
	// A bad token is not limited: the handler answers 401.
	if resp := get("nonsense"); resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %v, want 401", resp)
	}
	close(hold)
	wg.Wait()
	for range 2 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("admitted request answered %d", c)
		}
	}
	if c := <-done; c != http.StatusOK {
		t.Errorf("globex answered %d", c)
	}
	if got := testutil.ToFloat64(l.refused.WithLabelValues("concurrency")); got != 1 {
		t.Errorf("refused %v, want 1", got)
	}
}

func TestReadConfigValidation(t *testing.T) {
	if err := (ReadConfig{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := ReadConfig{MaxExecutionTime: time.Millisecond, MaxMemoryBytes: -1, MaxRowsToRead: -1, MaxThreads: -1, Conns: -1,
		QueueTimeout: time.Nanosecond, TokenConcurrency: -1, TokenRate: -1, TokenBurst: -1}
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for _, name := range []string{"max_execution_time", "max_memory_bytes", "max_rows_to_read", "max_threads", "conns",
		"queue_timeout", "token_concurrency", "token_rate", "token_burst"} {
		if !strings.Contains(err.Error(), "api."+name+":") {
			t.Errorf("no error names api.%s: %v", name, err)
		}
	}
}

// TestUsageOverAReadLimitAnswersClearly runs /v1/usage through the read
// middleware on a store whose reads may read one row: the engine stops the
// query, and the caller gets a 400 naming the setting, not a 500 with the
// engine's text. The same query outside the middleware is not limited.
func TestUsageOverAReadLimitAnswersClearly(t *testing.T) {
	f := newFixture(t)
	var dbName string
	rows, err := requireDB(t).Query(t.Context(), "SELECT currentDatabase()")
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() || rows.Scan(&dbName) != nil {
		t.Fatalf("current database: %v", rows.Err())
	}
	rows.Close()
	cfg := store.Config{Database: dbName, DataDir: engine.DataDir, Interactive: store.InteractiveConfig{MaxRowsToRead: 1}}
	if addr := os.Getenv(testenv.EnvClickHouse); addr != "" {
		cfg.Addr, cfg.DataDir = strings.Split(addr, ","), ""
	}
	limited, err := store.Open(t.Context(), cfg, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer limited.Close()
	tk := tokens(t)
	h := NewUsageHandler(aggregate.NewQuerier(limited), tk)
	srv := httptest.NewServer(ReadEndpoint(NewLimiter(ReadConfig{}, nil), tk, h))
	defer srv.Close()
	plain := httptest.NewServer(h)
	defer plain.Close()
	path := f.usagePath("group_by", "route")
	for _, tc := range []struct {
		url  string
		code int
	}{{srv.URL, http.StatusBadRequest}, {plain.URL, http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, tc.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+tokAcme)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Fatalf("%s: %d %s, want %d", tc.url, resp.StatusCode, body, tc.code)
		}
		if tc.code == http.StatusBadRequest && (!strings.Contains(string(body), "api.max_rows_to_read") || strings.Contains(string(body), "Code:")) {
			t.Errorf("unclear answer: %s", body)
		}
	}
}

func TestStoreLimitAnswers(t *testing.T) {
	for _, tc := range []struct {
		code   int
		status int
		names  string
	}{
		{159, http.StatusServiceUnavailable, "api.max_execution_time"},
		{241, http.StatusServiceUnavailable, "api.max_memory_bytes"},
		{158, http.StatusBadRequest, "api.max_rows_to_read"},
	} {
		w := httptest.NewRecorder()
		err := fmt.Errorf("store: query: %w", &store.QueryError{Code: tc.code, Message: "Code: 159. DB::Exception: engine text"})
		writeQueryError(w, err)
		if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.names) || strings.Contains(w.Body.String(), "DB::Exception") {
			t.Errorf("code %d: %d %s", tc.code, w.Code, w.Body)
		}
		if tc.status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
			t.Errorf("code %d: no Retry-After", tc.code)
		}
	}
	w := httptest.NewRecorder()
	writeQueryError(w, fmt.Errorf("store: query: %w", store.ErrBusy))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" {
		t.Errorf("busy: %d %v", w.Code, w.Header())
	}
}
