package httpmeter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/schemas"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func headerKey(r *http.Request) (string, string) {
	return r.Header.Get("X-Api-Key-Id"), r.Header.Get("X-Customer")
}

// testMeter returns a meter for the stand-in with fast batches; Close is
// called at the end of the test.
func testMeter(t *testing.T, s *standInCollector, mod func(*Config)) *Meter {
	t.Helper()
	cfg := Config{
		Endpoint:      s.srv.URL,
		Token:         "tok-test",
		KeyFunc:       headerKey,
		FlushInterval: 10 * time.Millisecond,
		MinBackoff:    time.Millisecond,
		MaxBackoff:    5 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	})
	return m
}

func do(t *testing.T, c *http.Client, method, url string, body io.Reader, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMiddlewareEventFields sends requests of every kind through a real
// server and checks each event's fields as the collector's decoder read them.
func TestMiddlewareEventFields(t *testing.T) {
	s := newStandIn(t)
	m := testMeter(t, s, func(c *Config) { c.Gateway = "svc-test" })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pets/{id}", func(w http.ResponseWriter, r *http.Request) {
		SetUnits(w, 2.5)
		_, _ = io.WriteString(w, "pet "+r.PathValue("id"))
	})
	mux.HandleFunc("POST /v1/pets", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b[:3])
	})
	mux.HandleFunc("/v1/custom/", func(w http.ResponseWriter, r *http.Request) {
		SetRoute(w, "/v1/custom/{thing}")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusTeapot)
	})
	mux.HandleFunc("GET /v1/empty", func(w http.ResponseWriter, r *http.Request) {})
	srv := httptest.NewServer(m.Middleware(mux))
	defer srv.Close()
	c := srv.Client()
	k := map[string]string{"X-Api-Key-Id": "key_a", "X-Customer": "cust_a", "User-Agent": "secret-agent"}

	if code, _ := do(t, c, "GET", srv.URL+"/v1/pets/42", nil, k); code != 200 {
		t.Fatal(code)
	}
	if code, _ := do(t, c, "POST", srv.URL+"/v1/pets", strings.NewReader(strings.Repeat("x", 1000)), k); code != 201 {
		t.Fatal(code)
	}
	// A chunked upload (no Content-Length): the bytes the handler read.
	if code, _ := do(t, c, "POST", srv.URL+"/v1/pets", io.MultiReader(strings.NewReader(strings.Repeat("y", 777))), k); code != 201 {
		t.Fatal(code)
	}
	if code, _ := do(t, c, "GET", srv.URL+"/v1/custom/abc", nil, k); code != http.StatusTeapot {
		t.Fatal(code)
	}
	if code, _ := do(t, c, "GET", srv.URL+"/v1/empty", nil, k); code != 200 {
		t.Fatal(code)
	}
	if code, _ := do(t, c, "GET", srv.URL+"/nowhere", nil, k); code != 404 {
		t.Fatal(code)
	}
	// No key: not metered.
	if code, _ := do(t, c, "GET", srv.URL+"/v1/pets/1", nil, nil); code != 200 {
		t.Fatal(code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	evs := s.stored()
	if len(evs) != 6 {
		t.Fatalf("%d events stored, want 6: %+v", len(evs), evs)
	}
	type want struct {
		method, route string
		status        int
		reqB, respB   uint64
		units         float64
	}
	wants := []want{
		{"GET", "/v1/pets/{id}", 200, 0, 6, 2.5},
		{"POST", "/v1/pets", 201, 1000, 3, 1},
		{"POST", "/v1/pets", 201, 777, 3, 1},
		{"GET", "/v1/custom/{thing}", http.StatusTeapot, 0, 0, 1},
		{"GET", "/v1/empty", 200, 0, 0, 1},
		{"GET", "", 404, 0, uint64(len("404 page not found\n")), 1},
	}
	ids := map[string]bool{}
	for i, ev := range evs {
		w := wants[i]
		if ev.Method != w.method || ev.Route != w.route || ev.Status != w.status || ev.RequestBytes != w.reqB ||
			ev.ResponseBytes != w.respB || ev.Units != w.units {
			t.Errorf("event %d = %+v, want %+v", i, ev, w)
		}
		if ev.APIKeyID != "key_a" || ev.CustomerID != "cust_a" || ev.Gateway != "svc-test" || ev.ClientIP != "127.0.0.1" {
			t.Errorf("event %d: key %q customer %q gateway %q ip %q", i, ev.APIKeyID, ev.CustomerID, ev.Gateway, ev.ClientIP)
		}
		if ev.UserAgent != "" {
			t.Errorf("event %d sent the user agent %q without SendUserAgent", i, ev.UserAgent)
		}
		if len(ev.ID) != 32 || ids[ev.ID] {
			t.Errorf("event %d: id %q is not a fresh 128-bit id", i, ev.ID)
		}
		ids[ev.ID] = true
		if ev.Time.Location() != time.UTC || time.Since(ev.Time) > time.Minute || time.Since(ev.Time) < 0 {
			t.Errorf("event %d: time %v", i, ev.Time)
		}
		if !ev.Has(schemas.MeasureLatency) || ev.LatencyMS < 0 {
			t.Errorf("event %d: latency %v", i, ev.LatencyMS)
		}
	}
	h := s.headers[0]
	if h.Get("Authorization") != "Bearer tok-test" || h.Get("Content-Type") != "application/x-ndjson" || h.Get("Content-Encoding") != "gzip" {
		t.Errorf("post headers %v", h)
	}
	if st := m.Stats(); st.Enqueued != 6 || st.Sent != 6 || st.Rejected != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestSendUserAgent: the one request header the meter sends, when asked.
func TestSendUserAgent(t *testing.T) {
	s := newStandIn(t)
	m := testMeter(t, s, func(c *Config) { c.SendUserAgent = true })
	srv := httptest.NewServer(m.Middleware(http.NotFoundHandler()))
	defer srv.Close()
	do(t, srv.Client(), "GET", srv.URL, nil, map[string]string{"X-Api-Key-Id": "k", "User-Agent": "sdk/1.2"})
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if evs := s.stored(); len(evs) != 1 || evs[0].UserAgent != "sdk/1.2" {
		t.Fatalf("%+v", evs)
	}
}

// TestWriterInterfaces: the handler finds Flusher, Hijacker, ReaderFrom and
// the ResponseController's features through the middleware exactly when the
// server's writer has them.
func TestWriterInterfaces(t *testing.T) {
	s := newStandIn(t)
	m := testMeter(t, s, nil)
	type seen struct{ flusher, hijacker, readerFrom, deadline bool }
	got := make(chan seen, 1)
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sn seen
		_, sn.flusher = w.(http.Flusher)
		_, sn.hijacker = w.(http.Hijacker)
		_, sn.readerFrom = w.(io.ReaderFrom)
		sn.deadline = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute)) == nil
		got <- sn
		if rf, ok := w.(io.ReaderFrom); ok {
			_, _ = rf.ReadFrom(strings.NewReader("from a reader"))
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	code, body := do(t, srv.Client(), "GET", srv.URL, nil, map[string]string{"X-Api-Key-Id": "k"})
	if sn := <-got; !sn.flusher || !sn.hijacker || !sn.readerFrom || !sn.deadline || code != 200 || body != "from a reader" {
		t.Fatalf("HTTP/1 server: %+v, %d %q", sn, code, body)
	}

	// HTTP/2: no Hijacker, as without the middleware.
	srv2 := httptest.NewUnstartedServer(h)
	srv2.EnableHTTP2 = true
	srv2.StartTLS()
	defer srv2.Close()
	if code, _ := do(t, srv2.Client(), "GET", srv2.URL, nil, map[string]string{"X-Api-Key-Id": "k"}); code != 200 {
		t.Fatal(code)
	}
	if sn := <-got; !sn.flusher || sn.hijacker || !sn.deadline {
		t.Fatalf("HTTP/2 server: %+v", sn)
	}

	// A bare writer: neither Flusher nor Hijacker appear.
	bare := &bareWriter{h: http.Header{}}
	h.ServeHTTP(bare, httptest.NewRequest("GET", "/", nil).WithContext(context.Background()))
	if sn := <-got; sn.flusher || sn.hijacker || !sn.readerFrom || bare.buf.String() != "from a reader" {
		t.Fatalf("bare writer: %+v %q", sn, bare.buf.String())
	}

	// Hijack through the middleware.
	hj := httptest.NewServer(m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
		_ = rw.Flush()
	})))
	defer hj.Close()
	if code, body := do(t, hj.Client(), "GET", hj.URL, nil, map[string]string{"X-Api-Key-Id": "k"}); code != 200 || body != "hijacked" {
		t.Fatalf("hijacked: %d %q", code, body)
	}
}

// bareWriter has only the three methods of http.ResponseWriter.
type bareWriter struct {
	h   http.Header
	buf bytes.Buffer
}

func (b *bareWriter) Header() http.Header         { return b.h }
func (b *bareWriter) Write(p []byte) (int, error) { return b.buf.Write(p) }
func (b *bareWriter) WriteHeader(int)             {}

// unwrapper stands for a router's own writer (gin's, echo's) around the
// middleware's.
type unwrapper struct{ http.ResponseWriter }

func (u unwrapper) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// TestSetRouteUnitsThroughOtherWriters: SetRoute and SetUnits find the
// middleware's writer under another one, and report false without it.
func TestSetRouteUnitsThroughOtherWriters(t *testing.T) {
	s := newStandIn(t)
	m := testMeter(t, s, func(c *Config) { c.RouteFunc = func(*http.Request) string { return "/from/routefunc" } })
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/set" {
			if !SetRoute(w, "/from/handler") || !SetUnits(w, 0) {
				t.Error("SetRoute/SetUnits did not find the meter's writer")
			}
		}
	})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { inner.ServeHTTP(unwrapper{w}, r) }))
	srv := httptest.NewServer(h)
	defer srv.Close()
	do(t, srv.Client(), "GET", srv.URL+"/set", nil, map[string]string{"X-Api-Key-Id": "k"})
	do(t, srv.Client(), "GET", srv.URL+"/other", nil, map[string]string{"X-Api-Key-Id": "k"})
	if SetRoute(httptest.NewRecorder(), "/x") || SetUnits(httptest.NewRecorder(), 1) {
		t.Error("SetRoute/SetUnits reported true without the middleware")
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := s.stored()
	if len(evs) != 2 || evs[0].Route != "/from/handler" || evs[0].Units != 0 || evs[1].Route != "/from/routefunc" || evs[1].Units != 1 {
		t.Fatalf("%+v", evs)
	}
}

// TestRequestAnswersWhileCollectorHangs: with the collector holding the
// sender's POST and the queue full, requests are answered and the extra
// events are dropped and counted.
func TestRequestAnswersWhileCollectorHangs(t *testing.T) {
	s := newStandIn(t)
	s.arrived = make(chan struct{}, 100)
	s.released = make(chan struct{})
	m := testMeter(t, s, func(c *Config) { c.QueueSize = 3; c.BatchSize = 1 })
	srv := httptest.NewServer(m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "answered")
	})))
	defer srv.Close()
	k := map[string]string{"X-Api-Key-Id": "k"}
	if code, body := do(t, srv.Client(), "GET", srv.URL, nil, k); code != 200 || body != "answered" {
		t.Fatal(code, body)
	}
	<-s.arrived // the sender is now blocked in its POST
	for i := range 10 {
		if code, body := do(t, srv.Client(), "GET", srv.URL, nil, k); code != 200 || body != "answered" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	st := m.Stats()
	if st.Enqueued != 3 || st.DroppedQueueFull != 8 || st.QueueDepth != 3 {
		t.Fatalf("stats %+v, want 3 enqueued (1 in flight, 2 queued) and 8 dropped", st)
	}
	close(s.released)
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Sent != 3 || st.QueueDepth != 0 || len(s.stored()) != 3 {
		t.Fatalf("stats %+v, stored %d", st, len(s.stored()))
	}
}

// TestRequestAnswersWhileCollectorIsDown: nothing listens at the endpoint;
// requests are answered, Close reports what it could not send.
func TestRequestAnswersWhileCollectorIsDown(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	url := down.URL
	down.Close() // nothing listens there now
	m, err := New(Config{Endpoint: url, KeyFunc: headerKey, FlushInterval: time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "answered")
	})))
	defer srv.Close()
	for i := range 20 {
		if code, body := do(t, srv.Client(), "GET", srv.URL, nil, map[string]string{"X-Api-Key-Id": "k"}); code != 200 || body != "answered" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	waitFor(t, 10*time.Second, "a retry", func() bool { return m.Stats().Retries > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = m.Close(ctx)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "20 events not sent") {
		t.Fatalf("Close = %v, want 20 events not sent", err)
	}
	if st := m.Stats(); st.DroppedUnsent != 20 || st.Sent != 0 {
		t.Fatalf("stats %+v", st)
	}
	// After Close, requests are still answered and counted as closed.
	do(t, srv.Client(), "GET", srv.URL, nil, map[string]string{"X-Api-Key-Id": "k"})
	if st := m.Stats(); st.DroppedClosed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRetryPolicy: which answers are retried, which drop the batch.
func TestRetryPolicy(t *testing.T) {
	cases := []struct {
		name        string
		first       int
		header      http.Header
		wantPosts   int
		wantSent    uint64
		wantRefused uint64
	}{
		{"503 with Retry-After retried", 503, http.Header{"Retry-After": {"0"}}, 2, 3, 0},
		{"500 retried", 500, nil, 2, 3, 0},
		{"429 retried", 429, http.Header{"Retry-After": {"0"}}, 2, 3, 0},
		{"400 not retried", 400, nil, 1, 0, 3},
		{"401 not retried", 401, nil, 1, 0, 3},
		{"403 not retried", 403, nil, 1, 0, 3},
		{"415 not retried", 415, nil, 1, 0, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStandIn(t)
			s.answer = func(post int) (int, http.Header) {
				if post == 1 {
					return tc.first, tc.header
				}
				return 0, nil
			}
			m := testMeter(t, s, nil)
			h := m.Middleware(http.NotFoundHandler())
			for range 3 {
				r := httptest.NewRequest("GET", "/", nil)
				r.Header.Set("X-Api-Key-Id", "k")
				h.ServeHTTP(httptest.NewRecorder(), r)
			}
			if err := m.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := m.Stats()
			if s.postCount() != tc.wantPosts || st.Sent != tc.wantSent || st.DroppedRefused != tc.wantRefused ||
				st.Retries != uint64(tc.wantPosts-1) {
				t.Fatalf("posts %d, stats %+v", s.postCount(), st)
			}
		})
	}
}

// TestRetriesExhausted: a collector that keeps answering 503 past
// MaxRetryTime makes the batch dropped and counted.
func TestRetriesExhausted(t *testing.T) {
	s := newStandIn(t)
	s.answer = func(int) (int, http.Header) { return 503, nil }
	m := testMeter(t, s, func(c *Config) { c.MaxRetryTime = 30 * time.Millisecond })
	h := m.Middleware(http.NotFoundHandler())
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-Api-Key-Id", "k")
	h.ServeHTTP(httptest.NewRecorder(), r)
	waitFor(t, 10*time.Second, "the batch given up", func() bool { return m.Stats().DroppedRetriesExhausted == 1 })
	if st := m.Stats(); st.Retries == 0 || st.Sent != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Test413SplitsTheBatch: a collector with a smaller batch limit than the
// meter's gets the batch in halves.
func Test413SplitsTheBatch(t *testing.T) {
	s := newStandIn(t)
	var mu sync.Mutex
	s.answer = func(int) (int, http.Header) { return 0, nil }
	var sizes []int
	orig := s.srv.Config.Handler
	s.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The stand-in's limit: 2 events, judged by the posted NDJSON lines.
		body, _ := io.ReadAll(r.Body)
		n := gunzipLines(t, body)
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		if n > 2 {
			http.Error(w, `{"error":"too many events"}`, http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		orig.ServeHTTP(w, r)
	})
	m := testMeter(t, s, func(c *Config) { c.FlushInterval = time.Hour })
	h := m.Middleware(http.NotFoundHandler())
	for range 7 {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-Api-Key-Id", "k")
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Sent != 7 || st.DroppedRefused != 0 || len(s.stored()) != 7 {
		t.Fatalf("stats %+v, posts %v", st, sizes)
	}
}

// TestLocalRejectionOfUnencodableIDs: an id that is not UTF-8 cannot be sent
// unchanged; it is counted as rejected and the others are sent.
func TestLocalRejectionOfUnencodableIDs(t *testing.T) {
	s := newStandIn(t)
	var logs bytes.Buffer
	m := testMeter(t, s, func(c *Config) {
		c.KeyFunc = func(r *http.Request) (string, string) { return r.URL.Query().Get("k"), "" }
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	h := m.Middleware(http.NotFoundHandler())
	for _, k := range []string{"good", "bad\xff", "good2"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/?k="+urlEscape(k), nil))
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Sent != 2 || st.Rejected != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.Contains(logs.String(), `must be valid UTF-8`) {
		t.Fatalf("logs: %s", logs.String())
	}
}

// TestMetrics: the counters on the registry the user passes, and no
// registration without one.
func TestMetrics(t *testing.T) {
	s := newStandIn(t)
	reg := prometheus.NewPedanticRegistry()
	m := testMeter(t, s, func(c *Config) { c.Registerer = reg })
	h := m.Middleware(http.NotFoundHandler())
	for range 5 {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-Api-Key-Id", "k")
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP meterline_client_events_enqueued_total Events queued for sending to the Meterline collector.
# TYPE meterline_client_events_enqueued_total counter
meterline_client_events_enqueued_total 5
# HELP meterline_client_events_sent_total Events the collector accepted.
# TYPE meterline_client_events_sent_total counter
meterline_client_events_sent_total 5
# HELP meterline_client_queue_depth Events held: queued, or in a batch being sent.
# TYPE meterline_client_queue_depth gauge
meterline_client_queue_depth 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meterline_client_events_enqueued_total",
		"meterline_client_events_sent_total", "meterline_client_queue_depth"); err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil || n != 11 {
		t.Fatalf("%d series (%v), want 11", n, err)
	}
	// A second meter on the same registry is refused, clearly.
	if _, err := New(Config{Endpoint: s.srv.URL, KeyFunc: headerKey, Registerer: reg}); err == nil || !strings.Contains(err.Error(), "registering metrics") {
		t.Fatalf("second registration: %v", err)
	}
}

// TestConfigRefused: every bad setting is named at once, and nothing starts.
func TestConfigRefused(t *testing.T) {
	k := headerKey
	cases := []struct {
		cfg  Config
		want []string
	}{
		{Config{}, []string{"Endpoint is required", "KeyFunc is required"}},
		{Config{Endpoint: "ftp://x", KeyFunc: k}, []string{"http:// or https://"}},
		{Config{Endpoint: "http://", KeyFunc: k}, []string{"with a host"}},
		{Config{Endpoint: "http://x/?a=b", KeyFunc: k}, []string{"no query"}},
		{Config{Endpoint: "http://x\x00", KeyFunc: k}, []string{"Endpoint:"}},
		{Config{Endpoint: "http://x", KeyFunc: k, QueueSize: -1, BatchSize: 10001, MaxBatchBytes: 10}, []string{"QueueSize", "BatchSize", "MaxBatchBytes"}},
		{Config{Endpoint: "http://x", KeyFunc: k, FlushInterval: -time.Second, MinBackoff: time.Minute, MaxBackoff: time.Second}, []string{"FlushInterval", "MaxBackoff 1s is shorter than MinBackoff 1m0s"}},
		{Config{Endpoint: "http://x", KeyFunc: k, Gateway: strings.Repeat("g", 129)}, []string{"Gateway: 129 bytes"}},
	}
	for i, tc := range cases {
		m, err := New(tc.cfg)
		if err == nil {
			_ = m.Close(context.Background())
			t.Errorf("case %d: accepted", i)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("case %d: %q does not name %q", i, err, w)
			}
		}
	}
}

func TestRetryAfterAndBackoff(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "5": 5 * time.Second, " 2 ": 2 * time.Second, "-1": 0, "soon": 0, "99999999": maxRetryAfter,
		now.Add(3 * time.Second).Format(http.TimeFormat): 3 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):      0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", v, got, want)
		}
	}
	for attempt := range 40 {
		for range 50 {
			d := backoff(100*time.Millisecond, 30*time.Second, attempt)
			ceil := min(30*time.Second, 100*time.Millisecond<<min(attempt, 30))
			if d < 100*time.Millisecond || d > ceil {
				t.Fatalf("backoff attempt %d = %s outside [100ms, %s]", attempt, d, ceil)
			}
		}
	}
}

func TestPatternPath(t *testing.T) {
	for p, want := range map[string]string{"": "", "/": "/", "GET /a/{id}": "/a/{id}", "POST example.com/b/{x...}": "/b/{x...}", "example.com/": "/"} {
		if got := patternPath(p); got != want {
			t.Errorf("patternPath(%q) = %q, want %q", p, got, want)
		}
	}
}

func urlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestClientIP(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7:51234": "203.0.113.7", "[2001:db8::1]:443": "2001:db8::1", "[::ffff:198.51.100.9]:80": "198.51.100.9",
		"[fe80::1%eth0]:80": "fe80::1", "198.51.100.1": "198.51.100.1", "@": "", "": "", "pipe": "", "[::1]:x": "",
	} {
		if got := clientIP(in); got != want {
			t.Errorf("clientIP(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHostileCollectorAnswers: what answers as the collector cannot make the
// meter believe events were stored, nor hold it for long.
func TestHostileCollectorAnswers(t *testing.T) {
	t.Run("202 that is not the collector's answer is retried", func(t *testing.T) {
		s := newStandIn(t)
		orig := s.srv.Config.Handler
		var posts atomic.Int64
		s.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if posts.Add(1) == 1 {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusAccepted)
				_, _ = io.WriteString(w, "<html>"+strings.Repeat("x", 1<<20)) // a proxy's page, over a megabyte
				return
			}
			orig.ServeHTTP(w, r)
		})
		m := testMeter(t, s, nil)
		h := m.Middleware(http.NotFoundHandler())
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-Api-Key-Id", "k")
		h.ServeHTTP(httptest.NewRecorder(), r)
		if err := m.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := m.Stats(); st.Sent != 1 || st.Retries != 1 || posts.Load() != 2 {
			t.Fatalf("stats %+v after %d posts", st, posts.Load())
		}
	})
	t.Run("Retry-After past MaxRetryTime gives up at once", func(t *testing.T) {
		s := newStandIn(t)
		s.answer = func(int) (int, http.Header) { return 503, http.Header{"Retry-After": {"99999999"}} }
		m := testMeter(t, s, func(c *Config) { c.MaxRetryTime = time.Minute })
		h := m.Middleware(http.NotFoundHandler())
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("X-Api-Key-Id", "k")
		h.ServeHTTP(httptest.NewRecorder(), r)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Fatal(err) // it did not wait for the deadline: nothing was left to send
		}
		if st := m.Stats(); st.DroppedRetriesExhausted != 1 || st.Retries != 0 || s.postCount() != 1 {
			t.Fatalf("stats %+v after %d posts", st, s.postCount())
		}
	})
}

// TestBadUnits: units the JSON cannot carry are refused before sending;
// negative units are sent and rejected by the collector's rules, one by
// one, while the good event of the same batch is stored.
func TestBadUnits(t *testing.T) {
	s := newStandIn(t)
	var logs bytes.Buffer
	m := testMeter(t, s, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.FlushInterval = time.Hour
	})
	h := m.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, _ := strconv.ParseFloat(r.URL.Query().Get("u"), 64)
		SetUnits(w, u)
	}))
	for _, u := range []string{"NaN", "Inf", "-1", "3"} {
		r := httptest.NewRequest("GET", "/?u="+u, nil)
		r.Header.Set("X-Api-Key-Id", "k")
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Sent != 1 || st.Rejected != 3 {
		t.Fatalf("stats %+v", st)
	}
	if evs := s.stored(); len(evs) != 1 || evs[0].Units != 3 {
		t.Fatalf("stored %+v", evs)
	}
	for _, want := range []string{"NaN is not a finite number", "+Inf is not a finite number", `field \"units\"`, "rejected by the collector"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
}

// TestSetProperty: properties set by the handler reach the event, a key set
// twice keeps its last value, and a fifth key is refused.
func TestSetProperty(t *testing.T) {
	s := newStandIn(t)
	m := testMeter(t, s, nil)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := SetProperty(w, "rejected", "x") && SetProperty(w, "rejected", "rate_limit:1s") &&
			SetProperty(w, "a", "1") && SetProperty(w, "b", "2") && SetProperty(w, "c", "3")
		if !ok || SetProperty(w, "d", "4") {
			t.Error("SetProperty: four keys must fit, a fifth must not")
		}
		w.WriteHeader(http.StatusTooManyRequests)
	})
	srv := httptest.NewServer(m.Middleware(h))
	defer srv.Close()
	if code, _ := do(t, srv.Client(), "GET", srv.URL+"/x", nil, map[string]string{"X-Api-Key-Id": "key_p"}); code != 429 {
		t.Fatal(code)
	}
	if SetProperty(httptest.NewRecorder(), "a", "b") {
		t.Error("SetProperty found a meter under a plain recorder")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	evs := s.stored()
	if len(evs) != 1 || evs[0].Status != 429 || len(evs[0].Properties) != 4 || evs[0].Properties["rejected"] != "rate_limit:1s" || evs[0].Properties["c"] != "3" {
		t.Fatalf("events %+v", evs)
	}
}
