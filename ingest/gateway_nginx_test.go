//go:build unix

package ingest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// envNginx is the nginx binary (with Debian's Lua module and lua-nginx-kafka
// installed) that deploy/test.sh exports.
const envNginx = "METERLINE_TEST_NGINX"

// nginxGateway is nginx running deploy/nginx/meterline.conf.tmpl in a
// temporary directory, in the foreground, as a production gateway would.
type nginxGateway struct {
	URL    string // http://127.0.0.1:port
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the exit status, once exited is closed
	stderr testenv.SyncBuffer
}

var placeholder = regexp.MustCompile(`\$\{(METERLINE_[A-Z0-9_]+)\}`)

// startNginxGateway renders the example config for the topic and upstream
// and starts nginx. Cleanup stops it (SIGQUIT, then SIGKILL) and logs its
// error log.
// initOpts, when not empty, is Lua added to the options of the module's init
// (such as `producer = { flush_time = 600000 },`).
func startNginxGateway(t *testing.T, bin string, k KafkaConfig, upstream, gateway, initOpts string) *nginxGateway {
	t.Helper()
	return startNginx(t, bin, k, upstream, gateway, initOpts, nginxLimits{})
}

// nginxLimits configures meterline_limits in the example config: no
// endpoint, no enforcement.
type nginxLimits struct {
	endpoint, token string
	ca              string // trusted CA file; default: a certificate of the test's own
	opts            string // Lua added to the options of its init
}

// startNginx is startNginxGateway with limits.
func startNginx(t *testing.T, bin string, k KafkaConfig, upstream, gateway, initOpts string, lim nginxLimits) *nginxGateway {
	t.Helper()
	g := &nginxGateway{dir: t.TempDir(), exited: make(chan struct{})}
	listen := "127.0.0.1:" + testenv.FreePort(t)
	g.URL = "http://" + listen
	vars := map[string]string{
		"METERLINE_LISTEN":   listen,
		"METERLINE_UPSTREAM": upstream,
		"METERLINE_KAFKA":    strings.Join(k.Brokers, ","),
		"METERLINE_TOPIC":    k.Topic,
		"METERLINE_GATEWAY":  gateway,
		"METERLINE_RUN_DIR":  g.dir,
		"METERLINE_LUA_DIR":  filepath.Join(testenv.RepoRoot(), "deploy", "nginx"),

		"METERLINE_LIMITS_ENDPOINT": lim.endpoint,
		"METERLINE_LIMITS_TOKEN":    lim.token,
		"METERLINE_LIMITS_CA":       lim.ca,
	}
	if lim.ca == "" { // nginx wants a file, whether or not it is used
		vars["METERLINE_LIMITS_CA"], _, _ = testenv.SelfSignedCert(t)
	}
	tmpl, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "nginx", "meterline.conf.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	conf := placeholder.ReplaceAllStringFunc(string(tmpl), func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		v, ok := vars[name]
		if !ok {
			t.Fatalf("meterline.conf.tmpl: unknown placeholder %s", m)
		}
		used[name] = true
		return v
	})
	for name := range vars {
		if !used[name] {
			t.Fatalf("meterline.conf.tmpl no longer uses ${%s}", name)
		}
	}
	if initOpts != "" {
		const call = `require("meterline_event").init({`
		if strings.Count(conf, call) != 1 {
			t.Fatalf("meterline.conf.tmpl: no single %s to add options to", call)
		}
		conf = strings.Replace(conf, call, call+" "+initOpts, 1)
	}
	if lim.opts != "" {
		const call = `require("meterline_limits").init({`
		if strings.Count(conf, call) != 1 {
			t.Fatalf("meterline.conf.tmpl: no single %s to add options to", call)
		}
		conf = strings.Replace(conf, call, call+" "+lim.opts, 1)
	}
	// The tests log at info: lua-nginx-kafka reports its retries there, and
	// a worker that does not quit has to say why.
	const warnLog = "error.log warn;"
	if strings.Count(conf, warnLog) != 1 {
		t.Fatalf("meterline.conf.tmpl: no single %q to lower", warnLog)
	}
	conf = strings.Replace(conf, warnLog, "error.log info;", 1)
	confPath := filepath.Join(g.dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	globals := "daemon off;"
	if os.Geteuid() == 0 {
		// As root, nginx would run its workers as nobody, who may not enter
		// the test's private temporary directory.
		globals += " user root;"
	}
	g.cmd = exec.Command(bin, "-p", g.dir, "-c", confPath, "-g", globals)
	g.cmd.Stdout, g.cmd.Stderr = &g.stderr, &g.stderr
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the workers too can be killed at once
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.err = g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		g.stop(10 * time.Second)
		_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL) // leave no worker behind
		var lines []string
		for _, l := range strings.SplitAfter(g.errorLog(), "\n") {
			if !strings.Contains(l, "buffered to a temporary file") { // the large uploads, by design
				lines = append(lines, l)
			}
		}
		t.Logf("nginx error log:\n%s%s", strings.Join(lines, ""), g.stderr.String())
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return g
		}
		select {
		case <-g.exited:
			t.Fatalf("nginx exited at start-up (%v):\n%s%s", g.err, g.errorLog(), g.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %s:\n%s%s", listen, g.errorLog(), g.stderr.String())
		}
	}
}

func (g *nginxGateway) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "error.log"))
	return string(b)
}

// processes describes nginx's processes and their TCP connections, for a
// test whose nginx did not quit: which worker still runs, and whom it still
// talks to.
func (g *nginxGateway) processes() string {
	var b strings.Builder
	ps, _ := exec.Command("ps", "-eo", "pgid,pid,stat,wchan:20,etime,args").CombinedOutput()
	pgid := strconv.Itoa(g.cmd.Process.Pid)
	for _, l := range strings.Split(string(ps), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == pgid {
			b.WriteString(l + "\n")
		}
	}
	ss, _ := exec.Command("ss", "-tanpi").CombinedOutput()
	lines := strings.Split(string(ss), "\n")
	for i, l := range lines {
		if strings.Contains(l, `"nginx"`) {
			b.WriteString(l + "\n")
			if i+1 < len(lines) && !strings.Contains(lines[i+1], "users:") {
				b.WriteString(lines[i+1] + "\n")
			}
		}
	}
	return b.String()
}

// stop asks nginx to quit gracefully (SIGQUIT: finish the requests in hand,
// then exit) and waits up to timeout. It reports whether nginx exited.
func (g *nginxGateway) stop(timeout time.Duration) bool {
	select {
	case <-g.exited:
		return true
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-g.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// TestGatewayNginxStoresEveryRequestOnce runs Debian's nginx with the Lua
// module and lua-nginx-kafka (Produce v2, its own crc32 partitioner) as a
// production gateway would, producing v1 events straight to the events
// topic, and the real sink: every metered request is stored exactly once,
// with what the client saw and what the upstream told the gateway.
func TestGatewayNginxStoresEveryRequestOnce(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	db := requireDB(t)
	f := newSinkFixture(t)
	upstream := gatewayUpstream(t)
	gwName := testenv.Unique("nginx")
	g := startNginxGateway(t, bin, f.k, strings.TrimPrefix(upstream.URL, "http://"), gwName, "")
	stop := f.run(t, db, prometheus.NewRegistry())

	prefix := testenv.Unique("gwkey")
	keys := []string{prefix + "-a", prefix + "-b", prefix + "-c", prefix + "-d"}
	start := time.Now()
	reqs := gwRequests(500, keys, "r")
	sendThrough(t, g.URL, reqs, 8)
	end := time.Now()

	byID := map[string]*gwRequest{}
	metered := 0
	perKey := map[string]map[int]int{} // key → status → requests
	for _, r := range reqs {
		if byID[r.id] != nil {
			t.Fatalf("two responses carry X-Request-Id %s", r.id)
		}
		byID[r.id] = r
		if r.key == "" {
			continue
		}
		metered++
		if perKey[r.key] == nil {
			perKey[r.key] = map[int]int{}
		}
		perKey[r.key][r.status]++
	}
	waitGatewayStored(t, db, prefix, metered)

	stored := storedGatewayEvents(t, db, prefix)
	rows := queryUint64(t, db, "SELECT count() FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	distinct := queryUint64(t, db, "SELECT uniqExact(id) FROM events WHERE startsWith(api_key_id, {p:String})", prefix)
	t.Logf("%d requests, %d metered; stored: %d (FINAL), %d distinct ids, %d physical rows", len(reqs), metered, len(stored), distinct, rows)
	if len(stored) != metered || distinct != uint64(metered) {
		t.Fatalf("stored %d (FINAL) with %d distinct ids, want %d", len(stored), distinct, metered)
	}
	gotPerKey := map[string]map[int]int{}
	partitions := map[string]map[int32]bool{}
	for _, e := range stored {
		r := byID[e.id]
		if r == nil || r.key == "" {
			t.Errorf("stored event %s matches no metered response", e.id)
			continue
		}
		if gotPerKey[e.key] == nil {
			gotPerKey[e.key], partitions[e.key] = map[int]int{}, map[int32]bool{}
		}
		gotPerKey[e.key][int(e.status)]++
		partitions[e.key][e.partition] = true
		route, units := r.want()
		wantUA := r.userAgent
		if len(wantUA) > 512 {
			wantUA = "a" + strings.Repeat("é", 255) // cut on a character boundary
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
			t.Errorf("%s: stored user agent of %d bytes %q, want %d bytes", e.id, len(e.userAgent), e.userAgent, len(wantUA))
		case e.reqBytes != uint64(r.body):
			// The contract's request_bytes is the body's size.
			t.Errorf("%s: request_bytes %d for a body of %d bytes", e.id, e.reqBytes, r.body)
		case e.respBytes != uint64(r.respBody) || e.latency < 0:
			t.Errorf("%s: response_bytes %d for a response body of %d bytes, latency_ms %v", e.id, e.respBytes, r.respBody, e.latency)
		case e.time.Before(start.Add(-2*time.Second)) || e.time.After(end.Add(2*time.Second)):
			t.Errorf("%s: time %s is not within the run (%s to %s)", e.id, e.time, start, end)
		}
	}
	for _, k := range keys {
		if fmt.Sprint(gotPerKey[k]) != fmt.Sprint(perKey[k]) {
			t.Errorf("key %s: stored statuses %v, the client saw %v", k, gotPerKey[k], perKey[k])
		}
		if len(partitions[k]) != 1 {
			t.Errorf("key %s: events in partitions %v, want one (the message key is api_key_id)", k, partitions[k])
		}
	}

	// The messages as the producer wrote them: key = api_key_id, a timestamp
	// (Produce v2), one v1 event as JSON.
	msgs := topicMessages(t, f.k.Brokers, f.k.Topic)
	used := map[int]bool{}
	for _, m := range msgs {
		used[m.Partition] = true
		id := gatewayEventID(m.Value)
		r := byID[id]
		var ev struct {
			UserAgent string `json:"user_agent"`
		}
		switch {
		case !utf8.Valid(m.Value) || json.Unmarshal(m.Value, &ev) != nil:
			t.Errorf("message %s/%d is not UTF-8 JSON: %q", m.Topic, m.Offset, m.Value)
		case len(ev.UserAgent) > 512:
			t.Errorf("message of %s has a user agent of %d bytes, the contract's limit is 512", id, len(ev.UserAgent))
		case r == nil:
			t.Errorf("message %s/%d holds no known request id: %s", m.Topic, m.Offset, m.Value)
		case string(m.Key) != r.key:
			t.Errorf("message of %s has key %q, want the api_key_id %q", id, m.Key, r.key)
		case m.Time.Before(start.Add(-2*time.Second)) || m.Time.After(time.Now().Add(2*time.Second)):
			t.Errorf("message of %s has timestamp %s", id, m.Time)
		}
	}
	if len(msgs) < metered {
		t.Fatalf("%d messages in the topic, want at least %d", len(msgs), metered)
	}
	t.Logf("%d messages in %d of %d partitions; example: key %q value %s", len(msgs), len(used), f.k.Partitions, msgs[0].Key, msgs[0].Value)
	if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
		t.Fatalf("%d dead letters, want none; first: %s: %s", len(dead), headerValue(dead[0], HeaderError), dead[0].Value)
	}

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, r := range reqs {
		if r.key != "" {
			want = append(want, r.id)
		}
	}
	for _, e := range stored {
		got = append(got, e.id)
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatal("the stored ids are not the X-Request-Id values of the metered responses")
	}
}

// TestGatewayNginxFlushesOnQuit: the events a worker still buffers when nginx
// is asked to quit (SIGQUIT, `nginx -s quit`) are sent before it exits. The
// producer's flush interval is set to 10 minutes, so that none is sent before.
func TestGatewayNginxFlushesOnQuit(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	db := requireDB(t)
	f := newSinkFixture(t)
	upstream := gatewayUpstream(t)
	g := startNginxGateway(t, bin, f.k, strings.TrimPrefix(upstream.URL, "http://"), "edge-quit",
		"producer = { flush_time = 600000 },")
	stop := f.run(t, db, prometheus.NewRegistry())

	prefix := testenv.Unique("gwquit")
	reqs := gwRequests(60, []string{prefix + "-a", prefix + "-b"}, "q")
	sendThrough(t, g.URL, reqs, 4)
	metered := 0
	for _, r := range reqs {
		if r.key != "" {
			metered++
		}
	}
	if n := len(topicMessages(t, f.k.Brokers, f.k.Topic)); n != 0 {
		t.Fatalf("%d events were sent before the quit; the test wants them all still buffered", n)
	}
	if !g.stop(30 * time.Second) {
		t.Fatalf("nginx did not exit within 30s of SIGQUIT:\n%s", g.processes())
	}
	waitGatewayStored(t, db, prefix, metered)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events buffered at SIGQUIT, all stored", metered)
}

var eventIDField = regexp.MustCompile(`^\{"id":"([^"]*)"`)

// gatewayEventID returns the id of an event as the Lua module writes it (id first).
func gatewayEventID(v []byte) string {
	m := eventIDField.FindSubmatch(v)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// TestGatewayNginxDeadLettersMalformed: values the gateway passes through
// as it got them (an api_key_id over 128 bytes, X-Units that is not a
// number) make events the sink dead-letters with the reason, while the
// valid events around them are stored.
func TestGatewayNginxDeadLettersMalformed(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	db := requireDB(t)
	f := newSinkFixture(t)
	upstream := gatewayUpstream(t)
	g := startNginxGateway(t, bin, f.k, strings.TrimPrefix(upstream.URL, "http://"), "edge-dlq", "")
	stop := f.run(t, db, prometheus.NewRegistry())

	prefix := testenv.Unique("gwdlq")
	good := prefix + "-ok"
	longKey := prefix + "-" + strings.Repeat("k", 140)
	reqs := gwRequests(20, []string{good}, "d")
	for _, r := range reqs {
		r.key = good // all metered
	}
	badKey := &gwRequest{key: longKey, method: http.MethodGet, path: "/v1/pets/long-key", userAgent: "t"}
	badUnits := &gwRequest{key: good, method: http.MethodGet, path: "/v1/weird", userAgent: "t"}
	reqs = slices.Insert(reqs, 10, badKey, badUnits)
	sendThrough(t, g.URL, reqs, 1) // in order: the bad events sit between valid ones

	waitGatewayStored(t, db, good, 20)
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) < 2 {
			return fmt.Errorf("%d dead letters, want 2", len(dead))
		}
		return nil
	})
	var reasons []string
	for _, d := range dead {
		id, reason := gatewayEventID(d.Value), headerValue(d, HeaderError)
		reasons = append(reasons, id+": "+reason)
		switch {
		case headerValue(d, HeaderErrorReason) != "invalid" || !strings.HasPrefix(headerValue(d, HeaderSource), f.k.Topic+"/"):
			t.Errorf("dead letter %s: class %q source %q", id, headerValue(d, HeaderErrorReason), headerValue(d, HeaderSource))
		case id == badKey.id:
			if string(d.Key) != longKey || !strings.Contains(reason, "api_key_id") {
				t.Errorf("dead letter of the long key: key %.20q reason %q", d.Key, reason)
			}
		case id == badUnits.id:
			if string(d.Key) != good || !strings.Contains(reason, "units") {
				t.Errorf("dead letter of X-Units: lots: key %q reason %q", d.Key, reason)
			}
		default:
			t.Errorf("unexpected dead letter (%s): %s", reason, d.Value)
		}
	}
	if len(dead) != 2 {
		t.Errorf("%d dead letters, want 2", len(dead))
	}
	t.Logf("dead letters: %v", reasons)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := queryUint64(t, db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix); n != 20 {
		t.Fatalf("%d events stored, want the 20 valid ones", n)
	}
}
