package httplimit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/meterline/meterline/gateway/httpmeter"
	"github.com/meterline/meterline/internal/testenv"
)

// These tests run the real `meterline serve` (collector, sink, rollups and
// the limits view on the embedded engine, over the shared Kafka broker) and
// a service behind httpmeter and this middleware, and count what the
// clients got and what Meterline stored.

const (
	itIngest = "httplimit-ingest"
	itAdmin  = "httplimit-admin"
	itAcme   = "httplimit-acme"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func meterlineBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "httplimit-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "meterline")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/meterline")
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building meterline: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type serveStack struct {
	t    *testing.T
	addr string
	kill func() // SIGKILL, and wait for the exit
}

// startServe runs meterline serve with the catalogue given (its own topic,
// data directory and port) until the test ends. acmeCustomer is the
// customer of the itAcme token.
func startServe(t *testing.T, catalogue, acmeCustomer string) *serveStack {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	bin := meterlineBinary(t)
	dir := t.TempDir()
	cat := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(cat, []byte(catalogue), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Unique("httplimit")
	addr := "127.0.0.1:" + testenv.FreePort(t)
	cfg := fmt.Sprintf(`http:
  addr: %s
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
    - {name: acme-dash, sha256: %s, scopes: ["customer:%s"]}
`, addr, strings.Join(brokers, ","), topic, filepath.Join(dir, "ch"), topic, cat,
		auth.Hash(itIngest), auth.Hash(itAdmin), auth.Hash(itAcme), acmeCustomer)
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
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	return &serveStack{t: t, addr: addr, kill: func() { _ = cmd.Process.Kill(); <-exited }}
}

func (s *serveStack) getJSON(path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+itAdmin)
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

type storedEvent struct {
	ID         string            `json:"id"`
	APIKeyID   string            `json:"api_key_id"`
	Status     int               `json:"status"`
	Units      float64           `json:"units"`
	Properties map[string]string `json:"properties"`
}

// stored returns a key's stored events (at most 1000).
func (s *serveStack) stored(key string) ([]storedEvent, error) {
	var out struct {
		Events []storedEvent `json:"events"`
	}
	err := s.getJSON("/v1/events/stored?limit=1000&api_key_id="+url.QueryEscape(key), &out)
	return out.Events, err
}

type usageRow struct {
	requests int
	units    float64
}

// usageByClass returns a customer's requests and units of the last two
// hours by status class.
func (s *serveStack) usageByClass(customer string) (map[string]usageRow, error) {
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
	out := map[string]usageRow{}
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

// usage returns a customer's requests and units of the last two hours, as
// the rollups (and so billing) count them.
func (s *serveStack) usage(customer string) (requests int, units float64, err error) {
	var u struct {
		Rows []struct {
			Requests int         `json:"requests"`
			Units    json.Number `json:"units"`
		} `json:"rows"`
	}
	from := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339)
	if err := s.getJSON("/v1/usage?customer_id="+customer+"&window=hour&from="+url.QueryEscape(from), &u); err != nil {
		return 0, 0, err
	}
	for _, r := range u.Rows {
		f, err := r.Units.Float64()
		if err != nil {
			return 0, 0, err
		}
		requests += r.Requests
		units += f
	}
	return requests, units, nil
}

type answer struct {
	code                           int
	reason, policy, rl, retryAfter string
	at                             time.Time
}

func get(t *testing.T, c *http.Client, base, key string) answer {
	t.Helper()
	a, err := tryGet(c, base, key)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tryGet is get for goroutines other than the test's.
func tryGet(c *http.Client, base, key string) (answer, error) {
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/thing", nil)
	req.Header.Set("X-Api-Key-Id", key)
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	var body errorBody
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		if err := json.Unmarshal(b, &body); err != nil {
			return answer{}, fmt.Errorf("%d with a body that is not JSON: %q", resp.StatusCode, b)
		}
	}
	return answer{resp.StatusCode, body.Reason, resp.Header.Get("RateLimit-Policy"), resp.Header.Get("RateLimit"), resp.Header.Get("Retry-After"), time.Now()}, nil
}

// TestEnforcementAgainstMeterline: a key offered ten times its per-second
// limit is accepted at that limit (±10%, counted over a window the test
// drives), another key is unaffected, a customer at its hard limit is
// refused within the bounded staleness, keys that are not active get 403;
// every refused request is stored with its reason, and billed as 0 units
// unless its plan bills refused requests.
func TestEnforcementAgainstMeterline(t *testing.T) {
	u := testenv.Unique("")
	cRate, cCap, cBill := "rate"+u, "cap"+u, "bill"+u
	kRate, kOther, kCap := "k_rate"+u, "k_other"+u, "k_cap"+u
	kExp, kNext, kDis := "k_exp"+u, "k_next"+u, "k_dis"+u
	past, future := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	catalogue := fmt.Sprintf(`plans:
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
`, cRate, kRate, kOther, cCap, kCap, cBill, kExp, past, kNext, future, kDis)
	s := startServe(t, catalogue, cRate)

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	meter, err := httpmeter.New(httpmeter.Config{Endpoint: "http://" + s.addr, Token: itIngest, FlushInterval: 100 * time.Millisecond, Logger: log,
		KeyFunc: func(r *http.Request) (string, string) { return r.Header.Get("X-Api-Key-Id"), "" }})
	if err != nil {
		t.Fatal(err)
	}
	lim, err := New(Config{Endpoint: "http://" + s.addr, Token: itIngest, PollInterval: 100 * time.Millisecond, MaxStaleness: 10 * time.Second, Logger: log,
		KeyFunc: func(r *http.Request) string { return r.Header.Get("X-Api-Key-Id") }})
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	srv := httptest.NewServer(meter.Middleware(lim.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))))
	defer srv.Close()
	select {
	case <-lim.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("the limiter never fetched the limit states")
	}
	c := srv.Client()

	// Keys that are not active: 403 with the reason.
	for key, reason := range map[string]string{kExp: "key_expired", kNext: "key_not_yet_valid", kDis: "key_disabled"} {
		if a := get(t, c, srv.URL, key); a.code != 403 || a.reason != reason {
			t.Errorf("%s: %d %q, want 403 %s", key, a.code, a.reason, reason)
		}
	}

	// Rate: two clients offer kRate about 200 requests/s (ten times its
	// limit), paced by a ticker, for a warm-up second and a measured
	// window of four.
	var (
		mu      sync.Mutex
		answers []answer
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
				a, err := tryGet(c, srv.URL, kRate)
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
	// The test's own window: wait for answers, not for time to pass in
	// a sleep, and read the window's bounds from the answers' clock.
	testenv.Eventually(t, time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(answers); n == 0 || answers[n-1].at.Sub(warm) < 5*time.Second {
			return fmt.Errorf("%d answers so far", n)
		}
		return nil
	})
	// The other key, meanwhile: all 15 of its requests pass.
	for i := range 15 {
		if a := get(t, c, srv.URL, kOther); a.code != 200 {
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
			if a.reason != "rate_limit:1s" || a.retryAfter == "" || a.rl != `"1s";r=0;t=`+a.retryAfter {
				t.Errorf("429 reason %q, Retry-After %q, RateLimit %q", a.reason, a.retryAfter, a.rl)
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
	t.Logf("rate limit 20/s: %d of %d offered accepted over %s: %.2f/s (%+.1f%%)", accepted, offered, to.Sub(from), rate, (rate-20)/20*100)
	if rate < 18 || rate > 22 {
		t.Errorf("accepted %.2f requests/s, want 20 ± 10%%", rate)
	}
	if offered < 200 {
		// Paced at ten times the limit; a loaded machine sends fewer, but
		// the key must still be saturated for the rate to mean anything.
		t.Errorf("only %d requests offered in the window: the key was not saturated", offered)
	}

	// Hard limit: five units pass, then within the staleness bound the
	// customer is refused.
	for i := range 5 {
		if a := get(t, c, srv.URL, kCap); a.code != 200 {
			t.Fatalf("capped request %d: %d %s", i, a.code, a.reason)
		}
	}
	fifth := time.Now()
	capAllowed := 5
	testenv.Eventually(t, 30*time.Second, func() error {
		a := get(t, c, srv.URL, kCap)
		switch {
		case a.code == 429 && a.reason == "hard_limit" && a.retryAfter != "":
			return nil
		case a.code == 200:
			capAllowed++
		}
		return fmt.Errorf("%d %s", a.code, a.reason)
	})
	t.Logf("hard limit 5: refused %s after the fifth unit; %d requests passed in all", time.Since(fifth).Round(time.Millisecond), capAllowed)

	// Everything reaches Meterline: refused requests with their reason,
	// and billed only where the plan says so.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := meter.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wantRate := len(answers)
	// The newest 1000 of the key's stored events: each refused one has its
	// reason and 0 units.
	testenv.Eventually(t, time.Minute, func() error {
		evs, err := s.stored(kRate)
		if err != nil {
			return err
		}
		if len(evs) < min(wantRate, 1000) {
			return fmt.Errorf("%d events of %s stored", len(evs), kRate)
		}
		return nil
	})
	evs, _ := s.stored(kRate)
	for _, e := range evs {
		switch {
		case e.Status == 429 && e.Properties[PropertyRejected] == "rate_limit:1s" && e.Units == 0:
		case e.Status == 200 && e.Properties[PropertyRejected] == "" && e.Units == 1:
		default:
			t.Errorf("stored event %+v", e)
		}
	}
	// Every one, through the rollups that billing reads: the refused
	// requests are counted as requests, with no units.
	testenv.Eventually(t, 2*time.Minute, func() error { // the pipeline's catch-up on a loaded machine
		byClass, err := s.usageByClass(cRate)
		if err != nil {
			return err
		}
		if got, want := byClass["4xx"], (usageRow{refused, 0}); got != want {
			return fmt.Errorf("%s 4xx: %+v, want %+v", cRate, got, want)
		}
		if got, want := byClass["2xx"], (usageRow{wantRate - refused + 15, float64(wantRate - refused + 15)}); got != want {
			return fmt.Errorf("%s 2xx: %+v, want %+v", cRate, got, want)
		}
		return nil
	})
	billAll := 3
	testenv.Eventually(t, time.Minute, func() error {
		req, units, err := s.usage(cRate)
		if err != nil {
			return err
		}
		wantReq, wantUnits := wantRate+15, float64(wantRate-refused+15)
		if req != wantReq || units != wantUnits {
			return fmt.Errorf("%s: %d requests %v units, want %d and %v (refused requests are counted, not billed)", cRate, req, units, wantReq, wantUnits)
		}
		req, units, err = s.usage(cBill)
		if err != nil {
			return err
		}
		if req != billAll || units != float64(billAll) {
			return fmt.Errorf("%s (bill_rejected): %d requests %v units, want %d of each", cBill, req, units, billAll)
		}
		return nil
	})
}

// TestMeterlineKilled: Meterline dies under running gateways. A fail-open
// limiter keeps enforcing the last states (a disabled key stays refused,
// the rate limit still counts) and its staleness grows; a fail-closed one
// answers 503 once its copy is older than MaxStaleness.
func TestMeterlineKilled(t *testing.T) {
	u := testenv.Unique("")
	kOK, kDis := "kk_ok"+u, "kk_dis"+u
	s := startServe(t, fmt.Sprintf(`plans:
  - {id: p, included_units: 1000, rate_limits: [{per: 1h, requests: 3}]}
customers:
  - {id: c%s, plan: p, keys: [%s, {id: %s, disabled: true}]}
`, u, kOK, kDis), "c"+u)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	limiter := func(mode FailMode) (*Limiter, *httptest.Server) {
		lim, err := New(Config{Endpoint: "http://" + s.addr, Token: itIngest, PollInterval: 100 * time.Millisecond, MaxStaleness: 2 * time.Second,
			FailMode: mode, Logger: log, KeyFunc: func(r *http.Request) string { return r.Header.Get("X-Api-Key-Id") }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lim.Close)
		srv := httptest.NewServer(lim.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })))
		t.Cleanup(srv.Close)
		select {
		case <-lim.Synced():
		case <-time.After(30 * time.Second):
			t.Fatal("no first fetch")
		}
		return lim, srv
	}
	_, open := limiter(FailOpen)
	closedLim, closed := limiter(FailClosed)
	c := open.Client()
	if a := get(t, c, open.URL, kOK); a.code != 200 {
		t.Fatalf("before the kill: %d", a.code)
	}
	s.kill()
	// Fail-closed: refused once the copy is too old.
	testenv.Eventually(t, 30*time.Second, func() error {
		if a := get(t, c, closed.URL, kOK); a.code != 503 || a.reason != "limits_unavailable" {
			return fmt.Errorf("fail-closed after the kill: %d %s", a.code, a.reason)
		}
		return nil
	})
	if age := closedLim.cfg.now().Sub(closedLim.cur.Load().asOf); age <= 2*time.Second {
		t.Errorf("503 with states %s old", age)
	}
	// Fail-open, now past MaxStaleness too: the last states hold.
	if a := get(t, c, open.URL, kDis); a.code != 403 || a.reason != "key_disabled" {
		t.Errorf("fail-open, disabled key: %d %s", a.code, a.reason)
	}
	codes := []int{get(t, c, open.URL, kOK).code, get(t, c, open.URL, kOK).code, get(t, c, open.URL, kOK).code}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Errorf("fail-open, 3 per hour after one before the kill: %v", codes)
	}
	if a := get(t, c, open.URL, "kk_new"+u); a.code != 200 {
		t.Errorf("fail-open, a key it does not know: %d", a.code)
	}
}
