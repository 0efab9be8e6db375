//go:build unix

package ingest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/testenv"
)

// The limits test runs the real `meterline serve` (collector, sink, rollups
// and the limits view on the embedded engine, over the shared Kafka broker)
// behind Debian's nginx with deploy/nginx's meterline_limits.lua and
// meterline_event.lua: nginx reads GET /v1/limits and produces its events to
// the serve's topic.

const (
	nlIngest = "nginx-limits-ingest"
	nlAdmin  = "nginx-limits-admin"
)

var (
	serveBuildOnce sync.Once
	serveBin       string
	serveBuildErr  error
)

func meterlineBinary(t *testing.T) string {
	t.Helper()
	serveBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ingest-meterline-bin")
		if err != nil {
			serveBuildErr = err
			return
		}
		serveBin = filepath.Join(dir, "meterline")
		cmd := exec.Command("go", "build", "-o", serveBin, "./cmd/meterline")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			serveBuildErr = fmt.Errorf("building meterline: %v\n%s", err, out)
		}
	})
	if serveBuildErr != nil {
		t.Fatal(serveBuildErr)
	}
	return serveBin
}

type limitsServe struct {
	addr string
	k    KafkaConfig
}

// startLimitsServe runs meterline serve with the catalogue until the test
// ends.
func startLimitsServe(t *testing.T, catalogue string) *limitsServe {
	t.Helper()
	return startLimitsServeTLS(t, catalogue, "", "", nil)
}

// startLimitsServeTLS is startLimitsServe serving HTTPS with the
// certificate when certFile is set (pool trusts it).
func startLimitsServeTLS(t *testing.T, catalogue, certFile, keyFile string, pool *x509.CertPool) *limitsServe {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	bin := meterlineBinary(t)
	dir := t.TempDir()
	cat := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(cat, []byte(catalogue), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Unique("nginx-limits")
	addr := "127.0.0.1:" + testenv.FreePort(t)
	scheme, tlsCfg := "http", ""
	if certFile != "" {
		scheme, tlsCfg = "https", fmt.Sprintf("\n  tls: {cert_file: %s, key_file: %s}", certFile, keyFile)
	}
	cfg := fmt.Sprintf(`http:
  addr: %s%s
kafka:
  brokers: [%s]
  topic: %s
  partitions: 3
clickhouse:
  data_dir: %s
sink:
  group_id: %s-sink
  batch_size: 1000
  flush_interval: 200ms
  session_timeout: 6s
aggregate:
  interval: 200ms
  settle: 10ms
limits:
  catalogue_file: %s
  refresh: 100ms
auth:
  tokens:
    - {name: gateway, sha256: %s, scopes: [ingest]}
    - {name: admin, sha256: %s, scopes: [admin]}
`, addr, tlsCfg, strings.Join(brokers, ","), topic, filepath.Join(dir, "ch"), topic, cat, auth.Hash(nlIngest), auth.Hash(nlAdmin))
	cfgPath := filepath.Join(dir, "meterline.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("meterline log:\n%s", logs.String())
		}
	})
	testenv.Eventually(t, 90*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("meterline exited early:\n%s", logs.String())
		default:
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		defer client.CloseIdleConnections()
		resp, err := client.Get(scheme + "://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	return &limitsServe{addr: addr, k: KafkaConfig{Brokers: brokers, Topic: topic}}
}

func (s *limitsServe) getJSON(path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+nlAdmin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

type classUsage struct {
	requests int
	units    float64
}

// usageByClass returns a customer's requests and units of the last two
// hours by status class, as the rollups (and billing) count them.
func (s *limitsServe) usageByClass(customer string) (map[string]classUsage, error) {
	var u struct {
		Rows []struct {
			Group    map[string]string `json:"group"`
			Requests int               `json:"requests"`
			Units    json.Number       `json:"units"`
		} `json:"rows"`
	}
	from := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339)
	if err := s.getJSON("/v1/usage?customer_id="+customer+"&window=hour&group_by=status_class&from="+url.QueryEscape(from), &u); err != nil {
		return nil, err
	}
	out := map[string]classUsage{}
	for _, r := range u.Rows {
		f, err := r.Units.Float64()
		if err != nil {
			return nil, err
		}
		g := out[r.Group["status_class"]]
		g.requests += r.Requests
		g.units += f
		out[r.Group["status_class"]] = g
	}
	return out, nil
}

type nginxAnswer struct {
	code                       int
	reason, policy, rl, retryA string
	at                         time.Time
}

func nginxGet(c *http.Client, base, key string) (nginxAnswer, error) {
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/thing", nil)
	req.Header.Set("X-Api-Key-Id", key)
	resp, err := c.Do(req)
	if err != nil {
		return nginxAnswer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body struct {
		Reason string `json:"reason"`
	}
	if resp.StatusCode != 200 {
		if err := json.Unmarshal(b, &body); err != nil {
			return nginxAnswer{}, fmt.Errorf("%d with a body that is not JSON: %q", resp.StatusCode, b)
		}
	}
	return nginxAnswer{resp.StatusCode, body.Reason, resp.Header.Get("RateLimit-Policy"), resp.Header.Get("RateLimit"), resp.Header.Get("Retry-After"), time.Now()}, nil
}

// TestGatewayNginxEnforcesLimits: nginx with meterline_limits.lua accepts
// a key offered ten times its per-second limit at that limit (±10%, over a
// window the test drives, across nginx's workers), leaves another key
// alone, refuses a customer at its hard limit within the bounded staleness
// and keys that are not active with 403; the refused requests reach
// Meterline with their reason and are counted without units unless the
// plan bills them.
func TestGatewayNginxEnforcesLimits(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	u := testenv.Unique("")
	cRate, cCap, cBill := "nrate"+u, "ncap"+u, "nbill"+u
	kRate, kOther, kCap := "nk_rate"+u, "nk_other"+u, "nk_cap"+u
	kExp, kNext, kDis := "nk_exp"+u, "nk_next"+u, "nk_dis"+u
	past, future := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	s := startLimitsServe(t, fmt.Sprintf(`plans:
  - {id: metered, included_units: 100000, rate_limits: [{per: 1s, requests: 20}, {per: 1h, requests: 100000}]}
  - {id: capped, included_units: 5, hard_limit: 5}
  - {id: billall, included_units: 100, bill_rejected: true}
customers:
  - {id: %s, plan: metered, keys: [%s, %s]}
  - {id: %s, plan: capped, keys: [%s]}
  - id: %s
    plan: billall
    keys:
      - {id: %s, expires_at: %s}
      - {id: %s, not_before: %s}
      - {id: %s, disabled: true}
`, cRate, kRate, kOther, cCap, kCap, cBill, kExp, past, kNext, future, kDis))
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer upstream.Close()
	g := startNginx(t, bin, s.k, strings.TrimPrefix(upstream.URL, "http://"), testenv.Unique("nginx"), "",
		nginxLimits{endpoint: "http://" + s.addr, token: nlIngest, opts: "poll_interval = 0.1, max_staleness = 10,"})
	// A transport of the test's own: before the quit below, it closes every
	// connection it holds, including one dialled for a request that another
	// connection served, which nginx would otherwise wait on (a connection
	// that never sent a request is not idle to it) until
	// client_header_timeout.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	get := func(key string) nginxAnswer {
		t.Helper()
		a, err := nginxGet(c, g.URL, key)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	// The first fetch is in when the disabled key is refused.
	testenv.Eventually(t, 30*time.Second, func() error {
		if a := get(kDis); a.code != 403 || a.reason != "key_disabled" {
			return fmt.Errorf("disabled key: %d %q", a.code, a.reason)
		}
		return nil
	})
	for key, reason := range map[string]string{kExp: "key_expired", kNext: "key_not_yet_valid", kDis: "key_disabled"} {
		if a := get(key); a.code != 403 || a.reason != reason {
			t.Errorf("%s: %d %q, want 403 %s", key, a.code, a.reason, reason)
		}
	}
	billAll := 4 // the request that saw the disabled key refused, and these three

	var (
		mu      sync.Mutex
		answers []nginxAnswer
		stop    atomic.Bool
		wg      sync.WaitGroup
	)
	for range 2 {
		wg.Go(func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for range tick.C {
				if stop.Load() {
					return
				}
				a, err := nginxGet(c, g.URL, kRate)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			}
		})
	}
	warm := time.Now()
	testenv.Eventually(t, time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(answers); n == 0 || answers[n-1].at.Sub(warm) < 5*time.Second {
			return fmt.Errorf("%d answers so far", n)
		}
		return nil
	})
	for i := range 15 {
		if a := get(kOther); a.code != 200 {
			t.Errorf("the other key's request %d: %d %s", i, a.code, a.reason)
		}
	}
	stop.Store(true)
	wg.Wait()
	from, to := warm.Add(time.Second), warm.Add(5*time.Second)
	accepted, refused, offered := 0, 0, 0
	for _, a := range answers {
		switch a.code {
		case 200:
			if a.policy != `"1s";q=20;w=1, "1h";q=100000;w=3600` || !strings.HasPrefix(a.rl, `"1s";r=`) {
				t.Errorf("accepted with RateLimit-Policy %q, RateLimit %q", a.policy, a.rl)
			}
		case 429:
			refused++
			if a.reason != "rate_limit:1s" || a.retryA == "" || a.rl != `"1s";r=0;t=`+a.retryA {
				t.Errorf("429 reason %q, Retry-After %q, RateLimit %q", a.reason, a.retryA, a.rl)
			}
		default:
			t.Errorf("answer %d", a.code)
		}
		if !a.at.Before(from) && a.at.Before(to) {
			offered++
			if a.code == 200 {
				accepted++
			}
		}
	}
	rate := float64(accepted) / to.Sub(from).Seconds()
	t.Logf("nginx, rate limit 20/s: %d of %d offered accepted over %s: %.2f/s (%+.1f%%)", accepted, offered, to.Sub(from), rate, (rate-20)/20*100)
	if rate < 18 || rate > 22 {
		t.Errorf("accepted %.2f requests/s, want 20 ± 10%%", rate)
	}
	if offered < 200 {
		// Paced at ten times the limit; a loaded machine sends fewer, but
		// the key must still be saturated for the rate to mean anything.
		t.Errorf("only %d requests offered in the window: the key was not saturated", offered)
	}

	for i := range 5 {
		if a := get(kCap); a.code != 200 {
			t.Fatalf("capped request %d: %d %s", i, a.code, a.reason)
		}
	}
	fifth := time.Now()
	capAllowed := 5
	testenv.Eventually(t, 30*time.Second, func() error {
		a := get(kCap)
		switch {
		case a.code == 429 && a.reason == "hard_limit" && a.retryA != "":
			return nil
		case a.code == 200:
			capAllowed++
		}
		return fmt.Errorf("%d %s", a.code, a.reason)
	})
	t.Logf("nginx, hard limit 5: refused %s after the fifth unit; %d requests passed in all", time.Since(fifth).Round(time.Millisecond), capAllowed)

	tr.CloseIdleConnections()      // later dials are closed too
	if !g.stop(30 * time.Second) { // nginx sends the events it holds as it quits
		t.Fatalf("nginx did not quit:\n%s", g.processes())
	}
	total := len(answers)
	testenv.Eventually(t, 2*time.Minute, func() error { // the pipeline's catch-up on a loaded machine
		byClass, err := s.usageByClass(cRate)
		if err != nil {
			return err
		}
		if got, want := byClass["4xx"], (classUsage{refused, 0}); got != want {
			return fmt.Errorf("%s 4xx: %+v, want %+v", cRate, got, want)
		}
		if got, want := byClass["2xx"], (classUsage{total - refused + 15, float64(total - refused + 15)}); got != want {
			return fmt.Errorf("%s 2xx: %+v, want %+v", cRate, got, want)
		}
		bill, err := s.usageByClass(cBill)
		if err != nil {
			return err
		}
		if got, want := bill["4xx"], (classUsage{billAll, float64(billAll)}); got != want {
			return fmt.Errorf("%s (bill_rejected) 4xx: %+v, want %+v", cBill, got, want)
		}
		return nil
	})
	var stored struct {
		Events []struct {
			Status     int               `json:"status"`
			Units      float64           `json:"units"`
			Properties map[string]string `json:"properties"`
		} `json:"events"`
	}
	if err := s.getJSON("/v1/events/stored?limit=1000&api_key_id="+url.QueryEscape(kRate), &stored); err != nil {
		t.Fatal(err)
	}
	for _, e := range stored.Events {
		if e.Status == 429 && (e.Properties["rejected"] != "rate_limit:1s" || e.Units != 0) || e.Status == 200 && (len(e.Properties) != 0 || e.Units != 1) {
			t.Errorf("stored event %+v", e)
		}
	}
}

// TestGatewayNginxLimitsOverHTTPS: nginx fetches the limits from a
// Meterline serving HTTPS and verifies its certificate. Trusting the
// certificate, it refuses a disabled key (403) and passes an active one;
// trusting another certificate (fail_mode closed), it has no copy to enforce
// from, answers 503 to every request with a key and logs why.
func TestGatewayNginxLimitsOverHTTPS(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	u := testenv.Unique("")
	kOn, kDis := "nk_tls_on"+u, "nk_tls_dis"+u
	certFile, keyFile, pool := testenv.SelfSignedCert(t)
	s := startLimitsServeTLS(t, fmt.Sprintf(`plans:
  - {id: free, included_units: 1000}
customers:
  - id: ntls%s
    plan: free
    keys: [%s, {id: %s, disabled: true}]
`, u, kOn, kDis), certFile, keyFile, pool)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer upstream.Close()
	const opts = `poll_interval = 0.1, max_staleness = 5, fail_mode = "closed",`
	lim := nginxLimits{endpoint: "https://" + s.addr, token: nlIngest, ca: certFile, opts: opts}
	good := startNginx(t, bin, s.k, strings.TrimPrefix(upstream.URL, "http://"), testenv.Unique("nginx-tls"), "", lim)
	lim.ca, _, _ = testenv.SelfSignedCert(t) // the same name, another key
	bad := startNginx(t, bin, s.k, strings.TrimPrefix(upstream.URL, "http://"), testenv.Unique("nginx-tls-bad"), "", lim)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	testenv.Eventually(t, 30*time.Second, func() error {
		a, err := nginxGet(c, good.URL, kDis)
		if err != nil {
			return err
		}
		if a.code != http.StatusForbidden || a.reason != "key_disabled" {
			return fmt.Errorf("disabled key: %d %s", a.code, a.reason)
		}
		return nil
	})
	if a, err := nginxGet(c, good.URL, kOn); err != nil || a.code != http.StatusOK {
		t.Fatalf("active key through the nginx that trusts Meterline's certificate: %+v %v", a, err)
	}

	testenv.Eventually(t, 30*time.Second, func() error {
		if l := bad.errorLog(); !strings.Contains(l, "meterline: fetching limits failed") || !strings.Contains(l, "TLS 127.0.0.1") {
			return errors.New("no failed TLS fetch in the error log yet")
		}
		return nil
	})
	for _, k := range []string{kOn, kDis} {
		a, err := nginxGet(c, bad.URL, k)
		if err != nil {
			t.Fatal(err)
		}
		if a.code != http.StatusServiceUnavailable || a.reason != "limits_unavailable" {
			t.Errorf("key %s through the nginx that does not trust the certificate: %d %s, want 503 limits_unavailable", k, a.code, a.reason)
		}
	}
	t.Logf("the nginx that does not trust the certificate logs:\n%s", bad.errorLog())
}

// TestGatewayNginxLimitsBadAnswers: a hand-written stand-in for Meterline's
// GET /v1/limits (the real server never answers garbage) feeds nginx bad
// answers: fail-closed nginx answers 503 until a good answer arrives, then
// keeps that copy through later bad ones; hostile key headers are served,
// not crashed on.
func TestGatewayNginxLimitsBadAnswers(t *testing.T) {
	bin := testenv.Require(t, envNginx)
	var mode atomic.Int32 // 0 garbage, 1 good, 2 other garbage
	var calls atomic.Int64
	standIn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		switch mode.Load() {
		case 0:
			_, _ = io.WriteString(w, `{"keys":[{"api_key_id":"k_dis","status":"disabled","rate_limits":[{"per":"soon","requests":1}]}],"version":"e.1"}`)
		case 1:
			_, _ = io.WriteString(w, `{"reset":true,"keys":[{"api_key_id":"k_dis","status":"disabled","rate_limits":[],"hard_limit":null},`+
				`{"api_key_id":"k_rl","status":"active","rate_limits":[{"per":"1h","requests":2}],"hard_limit":null}],"version":"e.2","more":false,"staleness_seconds":0}`)
		default:
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, "<html>down</html>")
		}
	}))
	defer standIn.Close()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer upstream.Close()
	g := startNginx(t, bin, KafkaConfig{Brokers: []string{"127.0.0.1:9"}, Topic: "unused"}, strings.TrimPrefix(upstream.URL, "http://"), "gw", "",
		nginxLimits{endpoint: standIn.URL, token: "tok", opts: `poll_interval = 0.05, max_staleness = 600, fail_mode = "closed",`})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	testenv.Eventually(t, 30*time.Second, func() error {
		if calls.Load() < 3 {
			return fmt.Errorf("%d fetches", calls.Load())
		}
		return nil
	})
	if a, err := nginxGet(c, g.URL, "k_dis"); err != nil || a.code != 503 || a.reason != "limits_unavailable" {
		t.Fatalf("fail-closed before a good answer: %+v %v", a, err)
	}
	mode.Store(1)
	testenv.Eventually(t, 30*time.Second, func() error {
		if a, err := nginxGet(c, g.URL, "k_dis"); err != nil || a.code != 403 {
			return fmt.Errorf("%+v %v", a, err)
		}
		return nil
	})
	mode.Store(2)
	n := calls.Load()
	testenv.Eventually(t, 30*time.Second, func() error {
		if calls.Load() < n+3 {
			return fmt.Errorf("%d fetches", calls.Load()-n)
		}
		return nil
	})
	if a, _ := nginxGet(c, g.URL, "k_dis"); a.code != 403 || a.reason != "key_disabled" {
		t.Errorf("after bad answers the copy changed: %+v", a)
	}
	// Two per hour for k_rl, across nginx's workers.
	for i, want := range []int{200, 200, 429} {
		if a, _ := nginxGet(c, g.URL, "k_rl"); a.code != want {
			t.Errorf("k_rl request %d: %d, want %d", i, a.code, want)
		}
	}
	// Unknown keys pass (unknown_keys allow), whatever they hold.
	for _, key := range []string{"a:b:c|d", strings.Repeat("k", 4000), "w:k_rl:1h:0", "%00\t"} {
		if a, err := nginxGet(c, g.URL, key); err != nil || a.code != 200 {
			t.Errorf("key %.20q: %+v %v", key, a, err)
		}
	}
	if !strings.Contains(g.errorLog(), "meterline: fetching limits failed") {
		t.Errorf("no warning of the failed fetches in the error log:\n%s", g.errorLog())
	}
}
