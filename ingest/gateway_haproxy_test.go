//go:build unix

package ingest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// envHAProxy is the haproxy binary (2.6 or later, with Lua) that
// deploy/test.sh exports.
const envHAProxy = "METERLINE_TEST_HAPROXY"

// haproxyGateway is haproxy running deploy/haproxy/meterline.cfg.tmpl in the
// foreground (-db), as a production gateway would, posting to a collector.
type haproxyGateway struct {
	URL     string // http://127.0.0.1:port
	metrics string // the Lua counters' listener
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error
	log     testenv.SyncBuffer
}

// startHAProxyGateway renders the example config and starts haproxy. env
// adds settings of meterline_event.lua (METERLINE_FLUSH_MS=...) to its
// environment, or replaces a placeholder of the template (METERLINE_TOKEN=...). Cleanup kills it and logs its output.
func startHAProxyGateway(t *testing.T, bin, upstream, collector, gateway string, env ...string) *haproxyGateway {
	t.Helper()
	dir := t.TempDir()
	listen := "127.0.0.1:" + testenv.FreePort(t)
	metrics := "127.0.0.1:" + testenv.FreePort(t)
	g := &haproxyGateway{URL: "http://" + listen, metrics: "http://" + metrics, exited: make(chan struct{})}
	vars := map[string]string{
		"METERLINE_LISTEN":         listen,
		"METERLINE_UPSTREAM":       upstream,
		"METERLINE_COLLECTOR":      collector,
		"METERLINE_TOKEN":          tokIngest,
		"METERLINE_GATEWAY":        gateway,
		"METERLINE_METRICS_LISTEN": metrics,
		"METERLINE_LUA_DIR":        filepath.Join(testenv.RepoRoot(), "deploy", "haproxy"),
	}
	var extra []string
	for _, kv := range env {
		name, v, _ := strings.Cut(kv, "=")
		if _, ok := vars[name]; ok {
			vars[name] = v // a placeholder of the template
		} else {
			extra = append(extra, kv)
		}
	}
	tmpl, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "haproxy", "meterline.cfg.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	conf := placeholder.ReplaceAllStringFunc(string(tmpl), func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		v, ok := vars[name]
		if !ok {
			t.Fatalf("meterline.cfg.tmpl: unknown placeholder %s", m)
		}
		used[name] = true
		return v
	})
	for name := range vars {
		if !used[name] {
			t.Fatalf("meterline.cfg.tmpl no longer uses ${%s}", name)
		}
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(bin, "-f", cfg, "-db")
	g.cmd.Env = append(os.Environ(), extra...)
	g.cmd.Stdout, g.cmd.Stderr = &g.log, &g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.err = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		t.Logf("haproxy log:\n%s", g.log.String())
	})
	testenv.Eventually(t, 15*time.Second, func() error {
		select {
		case <-g.exited:
			t.Fatalf("haproxy exited at start-up (%v):\n%s", g.err, g.log.String())
		default:
		}
		for _, a := range []string{listen, metrics} {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	return g
}

// counters reads the Lua counters (meterline_client_*) by name and labels.
func (g *haproxyGateway) counters(t *testing.T) map[string]float64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.metrics+"/metrics", nil)
	req.Close = true // no idle connection to hold a soft stop back
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, v, ok := strings.Cut(line, " ")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			t.Fatalf("metrics line %q is not Prometheus text", line)
		}
		out[name] = f
	}
	return out
}

// TestGatewayHAProxyStoresEveryRequestOnce runs Debian's haproxy with the
// example configuration and its Lua sender in front of a test API, posting
// to the real collector; every metered request is stored exactly once with
// what the client saw and what the upstream told the gateway, and counted
// by GET /v1/usage under its route template, method and status class.
func TestGatewayHAProxyStoresEveryRequestOnce(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	gwName := testenv.Unique("haproxy")
	g := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), p.Collector, gwName)

	prefix := testenv.Unique("hakey")
	keys := []string{prefix + "-a", prefix + "-b", prefix + "-c"}
	start := time.Now()
	reqs := gwRequests(300, keys, "h")
	sendThrough(t, g.URL, reqs, 8)
	end := time.Now()

	byID := map[string]*gwRequest{}
	metered := 0
	for _, r := range reqs {
		if byID[r.id] != nil {
			t.Fatalf("two responses carry X-Request-Id %s", r.id)
		}
		byID[r.id] = r
		if r.key != "" {
			metered++
		}
	}
	waitGatewayStored(t, p.db, prefix, metered)
	stored := storedGatewayEvents(t, p.db, prefix)
	distinct := queryUint64(t, p.db, "SELECT uniqExact(id) FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	if len(stored) != metered || distinct != uint64(metered) {
		t.Fatalf("stored %d (FINAL) with %d distinct ids, want %d", len(stored), distinct, metered)
	}
	for _, e := range stored {
		r := byID[e.id]
		if r == nil || r.key == "" {
			t.Errorf("stored event %s matches no metered response", e.id)
			continue
		}
		route, units := r.want()
		wantUA := r.userAgent
		if len(wantUA) > 512 {
			wantUA = "a" + strings.Repeat("é", 255)
		}
		switch {
		case e.key != r.key || int(e.status) != r.status || e.method != r.method:
			t.Errorf("%s: stored %s %s %d, the client sent %s %s and saw %d", e.id, e.key, e.method, e.status, r.key, r.method, r.status)
		case e.route != route || e.units != units:
			t.Errorf("%s %s: stored route %q units %v, want %q %v", e.id, r.path, e.route, e.units, route, units)
		case e.gateway != gwName:
			t.Errorf("%s: gateway %q, want %q", e.id, e.gateway, gwName)
		case e.clientIP != "127.0.0.0":
			t.Errorf("%s: stored client_ip %q, want 127.0.0.0 (anonymised)", e.id, e.clientIP)
		case e.userAgent != wantUA:
			t.Errorf("%s: stored user agent of %d bytes, want %d", e.id, len(e.userAgent), len(wantUA))
		case e.reqBytes != uint64(r.body):
			t.Errorf("%s: request_bytes %d for a body of %d bytes", e.id, e.reqBytes, r.body)
		case e.respBytes != uint64(r.respBody) || e.latency < 0:
			t.Errorf("%s: response_bytes %d for a response body of %d bytes, latency_ms %v", e.id, e.respBytes, r.respBody, e.latency)
		case e.time.Before(start.Add(-2*time.Second)) || e.time.After(end.Add(2*time.Second)):
			t.Errorf("%s: time %s is not within the run (%s to %s)", e.id, e.time, start, end)
		}
	}
	p.waitUsage(t, start.Add(-time.Minute), wantUsage(reqs))
	c := g.counters(t)
	if c["meterline_client_events_sent_total"] != float64(metered) || c["meterline_client_events_enqueued_total"] != float64(metered) ||
		c["meterline_client_queue_depth"] != 0 || c[`meterline_client_events_dropped_total{reason="queue_full"}`] != 0 {
		t.Errorf("counters %v, want %d enqueued and sent, none held or dropped", c, metered)
	}
	t.Logf("%d requests, %d metered, stored once each and counted by /v1/usage; counters %v", len(reqs), metered, c)
}

// TestGatewayHAProxyFlushesOnSoftStop: the events the Lua task still holds
// when HAProxy is asked to stop gracefully (SIGUSR1) are sent during its
// grace period. The flush interval is 10 minutes, so none is sent before.
func TestGatewayHAProxyFlushesOnSoftStop(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	g := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), p.Collector, "edge-stop", "METERLINE_FLUSH_MS=600000")

	prefix := testenv.Unique("hastop")
	reqs := gwRequests(40, []string{prefix + "-a", prefix + "-b"}, "s")
	sendThrough(t, g.URL, reqs, 4)
	metered := 0
	for _, r := range reqs {
		if r.key != "" {
			metered++
		}
	}
	if n := len(topicMessages(t, p.f.k.Brokers, p.f.k.Topic)); n != 0 {
		t.Fatalf("%d events were sent before the stop; the test wants them all still queued", n)
	}
	if c := g.counters(t); c["meterline_client_queue_depth"] != float64(metered) {
		t.Fatalf("queue depth %v, want %d", c["meterline_client_queue_depth"], metered)
	}
	_ = g.cmd.Process.Signal(syscall.SIGUSR1)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("haproxy did not exit within 30s of SIGUSR1")
	}
	waitGatewayStored(t, p.db, prefix, metered)
	if !strings.Contains(g.log.String(), fmt.Sprintf("sending the %d queued events now", metered)) {
		t.Errorf("no log line of the flush at stop")
	}
}

// faultyCollector is a fault injector in front of the real collector: it
// answers the first fails POSTs with 503 and Retry-After: 1, as the
// collector does while Kafka is unavailable, and records when each POST
// came.
type faultyCollector struct {
	srv   *httptest.Server
	mu    sync.Mutex
	fails int
	times []time.Time
	hold  chan struct{} // if not nil, each POST waits until it is closed
	// lost: the POSTs (by number, from 1) that are forwarded to the
	// collector, which stores them, but whose answer never reaches the
	// gateway: the connection is closed instead, as when the collector's
	// process dies after Kafka acknowledged.
	lost map[int]bool
}

func newFaultyCollector(t *testing.T, target string, fails int) *faultyCollector {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	fc := &faultyCollector{fails: fails}
	proxy := httputil.NewSingleHostReverseProxy(u)
	fc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fc.mu.Lock()
		fc.times = append(fc.times, time.Now())
		n := len(fc.times)
		fail := n <= fc.fails
		hold, lost := fc.hold, fc.lost[n]
		fc.mu.Unlock()
		if hold != nil {
			<-hold
		}
		if fail {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":"kafka unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		if lost {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r)
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(fc.srv.Close)
	return fc
}

// TestGatewayHAProxyRetriesAndRejects: a batch answered 503 is retried no
// sooner than Retry-After and stored once; hostile values (a key over 128
// bytes, a key that is not UTF-8, quotes and backslashes, units that are not
// a number) are rejected one by one by the collector, counted and logged,
// while the valid events around them are stored; a request HAProxy itself
// refuses (headers over its buffer) is not metered and breaks nothing.
func TestGatewayHAProxyRetriesAndRejects(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	fc := newFaultyCollector(t, p.Collector, 2)
	g := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), fc.srv.URL, "edge-faults", "METERLINE_FLUSH_MS=100")

	prefix := testenv.Unique("hafault")
	good := prefix + "-ok"
	quoted := prefix + `-"q\`
	reqs := gwRequests(20, []string{good}, "f")
	for _, r := range reqs {
		r.key = good
	}
	bad := []*gwRequest{
		{key: prefix + "-" + strings.Repeat("k", 140), method: http.MethodGet, path: "/v1/pets/long", userAgent: "t"},
		{key: prefix + "-\xff\xfe", method: http.MethodGet, path: "/v1/pets/utf8", userAgent: "t"},
		{key: good, method: http.MethodGet, path: "/v1/weird", userAgent: "t"},
	}
	quotedReq := &gwRequest{key: quoted, method: http.MethodGet, path: `/v1/pets/q"\`, userAgent: `say "hi" \ {}`}
	all := append(append(reqs[:10:10], append(bad, quotedReq)...), reqs[10:]...)
	sendThrough(t, g.URL, all, 1)

	// Headers larger than HAProxy's buffer: it answers 431 or 400 itself.
	req, _ := http.NewRequest(http.MethodGet, g.URL+"/v1/pets/huge", nil)
	req.Header.Set("X-Api-Key-Id", good)
	req.Header.Set("X-Filler", strings.Repeat("x", 20000))
	req.Close = true
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("a 20 kB header got %d", resp.StatusCode)
		}
	}

	waitGatewayStored(t, p.db, good, 20)
	waitGatewayStored(t, p.db, quoted, 1)
	testenv.Eventually(t, 30*time.Second, func() error {
		c := g.counters(t)
		if c["meterline_client_events_rejected_total"] != 3 || c["meterline_client_events_sent_total"] != 21 || c["meterline_client_queue_depth"] != 0 {
			return fmt.Errorf("counters %v, want 21 sent and 3 rejected", c)
		}
		return nil
	})
	if n := queryUint64(t, p.db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix); n != 21 {
		t.Errorf("%d events stored under %s, want the 21 valid ones", n, prefix)
	}
	q := storedGatewayEvents(t, p.db, quoted)
	if len(q) != 1 || q[0].route != "/v1/pets/{id}" || q[0].userAgent != quotedReq.userAgent {
		t.Errorf("event with quotes and backslashes stored as %+v", q)
	}
	fc.mu.Lock()
	times := append([]time.Time(nil), fc.times...)
	fc.mu.Unlock()
	if len(times) < 3 {
		t.Fatalf("%d POSTs, want at least 3 (two answered 503)", len(times))
	}
	for i := 1; i <= 2; i++ {
		if d := times[i].Sub(times[i-1]); d < 950*time.Millisecond {
			t.Errorf("POST %d came %s after the 503 with Retry-After: 1", i+1, d)
		}
	}
	for _, want := range []string{"api_key_id", "units"} {
		if !strings.Contains(g.log.String(), "rejected by the collector") || !strings.Contains(g.log.String(), want) {
			t.Errorf("haproxy log names no rejection of %s", want)
		}
	}
}

// TestGatewayHAProxyMetersItsOwnErrors: with the upstream down, HAProxy
// answers 503 itself; http-after-response meters those too, as server
// errors on the request's path.
func TestGatewayHAProxyMetersItsOwnErrors(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	down := "127.0.0.1:" + testenv.FreePort(t) // nothing listens there
	g := startHAProxyGateway(t, bin, down, p.Collector, "edge-down", "METERLINE_FLUSH_MS=100")
	prefix := testenv.Unique("hadown")
	reqs := gwRequests(10, []string{prefix + "-a"}, "d")
	for _, r := range reqs {
		r.key = prefix + "-a"
	}
	sendThrough(t, g.URL, reqs, 2)
	waitGatewayStored(t, p.db, prefix, len(reqs))
	for _, e := range storedGatewayEvents(t, p.db, prefix) {
		if e.status != http.StatusServiceUnavailable {
			t.Errorf("%s: stored status %d, want HAProxy's 503", e.id, e.status)
		}
	}
	start := time.Now().Add(-time.Minute)
	want := map[string]map[string]uint64{}
	for _, r := range reqs {
		if want[r.key] == nil {
			want[r.key] = map[string]uint64{}
		}
		path, _, _ := strings.Cut(r.path, "?")
		want[r.key][usageKey(path, r.method, http.StatusServiceUnavailable)]++
	}
	p.waitUsage(t, start, want)
}

// TestGatewayHAProxyBoundsItsQueue: with a queue of 5 and the collector
// holding the first POST, further events are dropped and counted, never
// held; the 5 are stored once the POST goes through. A token the collector
// does not know makes a batch refused as a whole: dropped, counted and
// alerted in HAProxy's log, not retried.
func TestGatewayHAProxyBoundsItsQueue(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	fc := newFaultyCollector(t, p.Collector, 0)
	fc.hold = make(chan struct{})
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(fc.hold) }) }) // before the server closes
	g := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), fc.srv.URL, "edge-queue",
		"METERLINE_QUEUE_SIZE=5", "METERLINE_BATCH_SIZE=5", "METERLINE_TIMEOUT_MS=600000")
	prefix := testenv.Unique("haqueue")
	reqs := gwRequests(12, []string{prefix + "-a"}, "q")
	for _, r := range reqs {
		r.key = prefix + "-a"
	}
	sendThrough(t, g.URL, reqs, 1)
	if c := g.counters(t); c["meterline_client_events_enqueued_total"] != 5 || c[`meterline_client_events_dropped_total{reason="queue_full"}`] != 7 ||
		c["meterline_client_queue_depth"] != 5 {
		t.Fatalf("counters %v, want 5 held and 7 dropped", c)
	}
	release.Do(func() { close(fc.hold) })
	waitGatewayStored(t, p.db, prefix, 5)

	bad := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), p.Collector, "edge-badtoken",
		"METERLINE_FLUSH_MS=50", "METERLINE_TOKEN=not-a-token")
	badReqs := gwRequests(3, []string{prefix + "-bad"}, "b")
	for _, r := range badReqs {
		r.key = prefix + "-bad"
	}
	sendThrough(t, bad.URL, badReqs, 1)
	testenv.Eventually(t, 30*time.Second, func() error {
		if c := bad.counters(t); c[`meterline_client_events_dropped_total{reason="refused"}`] != 3 || c["meterline_client_retries_total"] != 0 {
			return fmt.Errorf("counters %v, want 3 refused, no retry", c)
		}
		return nil
	})
	if !strings.Contains(bad.log.String(), "refused a batch (status 401") {
		t.Errorf("no alert of the refusal in HAProxy's log")
	}
	if n := queryUint64(t, p.db, "SELECT count() FROM events WHERE startsWith(api_key_id, {p:String})", prefix+"-bad"); n != 0 {
		t.Errorf("%d events stored with an unknown token", n)
	}
}

// TestGatewayHAProxyAnswerLostStoresOnce: the collector stores two batches
// but their answers are lost (the connection dies before the 202); HAProxy
// retries them, and every request is still stored and counted once.
func TestGatewayHAProxyAnswerLostStoresOnce(t *testing.T) {
	bin := testenv.Require(t, envHAProxy)
	p := newGatewayPipeline(t)
	upstream := gatewayUpstream(t)
	fc := newFaultyCollector(t, p.Collector, 0)
	fc.lost = map[int]bool{1: true, 3: true}
	g := startHAProxyGateway(t, bin, strings.TrimPrefix(upstream.URL, "http://"), fc.srv.URL, "edge-lost", "METERLINE_FLUSH_MS=100", "METERLINE_BATCH_SIZE=20")
	prefix := testenv.Unique("halost")
	start := time.Now()
	reqs := gwRequests(120, []string{prefix + "-a", prefix + "-b"}, "l")
	sendThrough(t, g.URL, reqs, 4)
	metered := meteredCount(reqs)
	waitGatewayStored(t, p.db, prefix, metered)
	p.waitUsage(t, start.Add(-time.Minute), wantUsage(reqs))
	testenv.Eventually(t, 30*time.Second, func() error {
		if c := g.counters(t); c["meterline_client_queue_depth"] != 0 || c["meterline_client_events_sent_total"] != float64(metered) {
			return fmt.Errorf("counters %v, want %d sent and nothing held", c, metered)
		}
		return nil
	})
	fc.mu.Lock()
	posts := len(fc.times)
	fc.mu.Unlock()
	c := g.counters(t)
	t.Logf("%d POSTs, two of them stored without an answer; the Lua sender retried %v times (HAProxy's httpclient retries a connection closed before the answer itself)", posts, c["meterline_client_retries_total"])
	if posts < 4 {
		t.Fatalf("%d POSTs: the lost answers were not re-sent", posts)
	}
	distinct := queryUint64(t, p.db, "SELECT uniqExact(id) FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	final := queryUint64(t, p.db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix)
	if distinct != uint64(metered) || final != uint64(metered) {
		t.Fatalf("%d distinct ids, %d stored (FINAL), want %d", distinct, final, metered)
	}
}
