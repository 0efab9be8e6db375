package httpmeter

import (
	"bufio"
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/testenv"
)

// These tests run the real `meterline serve` (collector, sink and query API
// on the embedded ClickHouse engine, over the shared Kafka broker), meter a
// test service with the middleware, and read the results back through
// GET /v1/usage and GET /v1/events/stored.

const (
	itIngestToken = "httpmeter-ingest"
	itAdminToken  = "httpmeter-admin"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// meterlineBinary builds cmd/meterline once per test run.
func meterlineBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "httpmeter-bin")
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

// collectorStack is a running `meterline serve`.
type collectorStack struct {
	t    *testing.T
	addr string
}

// startServe writes a configuration (own topic, data directory, port and a
// catalogue of the given customers and keys) and runs serve until the test
// ends.
func startServe(t *testing.T, customers map[string][]string) *collectorStack {
	t.Helper()
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	bin := meterlineBinary(t)
	dir := t.TempDir()
	var cat strings.Builder
	cat.WriteString("plans:\n  - {id: starter, included_units: 100000}\ncustomers:\n")
	for c, keys := range customers {
		fmt.Fprintf(&cat, "  - {id: %s, plan: starter, keys: [%s]}\n", c, strings.Join(keys, ", "))
	}
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(cat.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	topic := testenv.Unique("httpmeter")
	addr := "127.0.0.1:" + testenv.FreePort(t)
	cfg := fmt.Sprintf(`http:
  addr: %s
kafka:
  brokers: [%s]
  topic: %s
  partitions: 3
clickhouse:
  data_dir: %s
collector:
  produce_timeout: 3s
sink:
  group_id: %s-sink
  batch_size: 1000
  flush_interval: 200ms
  retry_min: 50ms
  retry_max: 1s
  session_timeout: 6s
aggregate:
  interval: 200ms
  settle: 10ms
limits:
  catalogue_file: %s
  refresh: 100ms
auth:
  tokens:
    - name: httpmeter-gateway
      sha256: %s
      scopes: [ingest]
    - name: httpmeter-admin
      sha256: %s
      scopes: [admin]
`, addr, strings.Join(brokers, ","), topic, filepath.Join(dir, "ch"), topic, catalogue, auth.Hash(itIngestToken), auth.Hash(itAdminToken))
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
	s := &collectorStack{t: t, addr: addr}
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
	return s
}

func (s *collectorStack) getJSON(path string, v any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+itAdminToken)
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

// metric sums a metric's samples on the server's /metrics.
func (s *collectorStack) metric(name string) float64 {
	s.t.Helper()
	resp, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// settled waits until the sink has handled every event the collector
// accepted (stored, or dropped as a repeat of a stored id).
func (s *collectorStack) settled() {
	s.t.Helper()
	testenv.Eventually(s.t, 60*time.Second, func() error {
		accepted := s.metric("meterline_collector_events_accepted_total")
		handled := s.metric("meterline_sink_events_stored_total") + s.metric("meterline_sink_duplicates_dropped_total") +
			s.metric("meterline_sink_duplicates_stored_total")
		if handled < accepted {
			return fmt.Errorf("sink handled %v of %v accepted events", handled, accepted)
		}
		return nil
	})
}

type usageGroup struct {
	requests int
	units    float64
}

// usage returns a customer's usage of the last two hours by route and
// status class.
func (s *collectorStack) usage(customer string) (map[string]usageGroup, int, error) {
	var u struct {
		Rows []struct {
			Group    map[string]string `json:"group"`
			Requests int               `json:"requests"`
			Units    json.Number       `json:"units"`
		} `json:"rows"`
	}
	from := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339)
	if err := s.getJSON("/v1/usage?customer_id="+customer+"&window=hour&group_by=route,status_class&from="+url.QueryEscape(from), &u); err != nil {
		return nil, 0, err
	}
	out := map[string]usageGroup{}
	total := 0
	for _, r := range u.Rows {
		units, err := r.Units.Float64()
		if err != nil {
			return nil, 0, fmt.Errorf("units %q: %v", r.Units, err)
		}
		k := r.Group["route"] + " " + r.Group["status_class"]
		g := out[k]
		g.requests += r.Requests
		g.units += units
		out[k] = g
		total += r.Requests
	}
	return out, total, nil
}

type storedEvent struct {
	ID            string  `json:"id"`
	APIKeyID      string  `json:"api_key_id"`
	CustomerID    string  `json:"customer_id"`
	Gateway       string  `json:"gateway"`
	Method        string  `json:"method"`
	Route         string  `json:"route"`
	Status        int     `json:"status"`
	RequestBytes  uint64  `json:"request_bytes"`
	ResponseBytes uint64  `json:"response_bytes"`
	ClientIP      string  `json:"client_ip"`
	Units         float64 `json:"units"`
}

func (s *collectorStack) stored(customer string) ([]storedEvent, error) {
	var out struct {
		Events []storedEvent `json:"events"`
	}
	err := s.getJSON("/v1/events/stored?limit=1000&customer_id="+customer, &out)
	return out.Events, err
}

// petService is the metered test service: four routes and a 404.
func petService() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pets/{id}", func(w http.ResponseWriter, r *http.Request) {
		SetUnits(w, 2)
		_, _ = io.WriteString(w, `{"id":"`+r.PathValue("id")+`"}`)
	})
	mux.HandleFunc("POST /v1/pets", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
		_, _ = fmt.Fprintf(w, "%d", len(b))
	})
	mux.HandleFunc("GET /v1/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	return mux
}

// call is one request to the pet service and what its client saw.
type call struct {
	method, path, key string
	body              string
	wantRoute         string
	wantStatus        int
	wantUnits         float64
}

// petCalls returns n requests over the service's routes for the given keys.
func petCalls(n int, keys []string) []call {
	calls := make([]call, n)
	for i := range calls {
		k := keys[i%len(keys)]
		switch i % 4 {
		case 0:
			calls[i] = call{"GET", "/v1/pets/" + strconv.Itoa(i), k, "", "/v1/pets/{id}", 200, 2}
		case 1:
			calls[i] = call{"POST", "/v1/pets", k, strings.Repeat("p", 100+i), "/v1/pets", 201, 1}
		case 2:
			calls[i] = call{"GET", "/v1/fail", k, "", "/v1/fail", 500, 1}
		case 3:
			calls[i] = call{"GET", "/v1/nowhere/" + strconv.Itoa(i), k, "", "", 404, 1}
		}
	}
	return calls
}

// drive sends the calls through srv from 8 clients and checks each answer.
func drive(t *testing.T, srv *httptest.Server, calls []call, customer string) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(calls) {
					return
				}
				c := calls[i]
				var body io.Reader
				if c.body != "" {
					body = strings.NewReader(c.body)
				}
				req, _ := http.NewRequest(c.method, srv.URL+c.path, body)
				req.Header.Set("X-Api-Key-Id", c.key)
				req.Header.Set("X-Customer", customer)
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != c.wantStatus {
					t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.wantStatus)
				}
			}
		})
	}
	wg.Wait()
}

// wantUsage is what GET /v1/usage must say of calls.
func wantUsage(calls []call) map[string]usageGroup {
	want := map[string]usageGroup{}
	for _, c := range calls {
		k := c.wantRoute + " " + strconv.Itoa(c.wantStatus/100) + "xx"
		g := want[k]
		g.requests++
		g.units += c.wantUnits
		want[k] = g
	}
	return want
}

func closeMeter(t *testing.T, m *Meter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitUsage waits until the customer's usage counts want requests, then
// compares it group by group with want.
func (s *collectorStack) waitUsage(t *testing.T, customer string, want map[string]usageGroup, total int) {
	t.Helper()
	s.settled()
	var got map[string]usageGroup
	testenv.Eventually(t, 60*time.Second, func() error {
		var n int
		var err error
		got, n, err = s.usage(customer)
		if err != nil {
			return err
		}
		if n != total {
			return fmt.Errorf("usage counts %d requests of %s, want %d", n, customer, total)
		}
		return nil
	})
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("usage of %s by route and status class:\n got %v\nwant %v", customer, got, want)
	}
}

func TestAgainstTheCollector(t *testing.T) {
	custA, custB, custC := testenv.Unique("acme"), testenv.Unique("globex"), testenv.Unique("initech")
	keysA := []string{custA + "-k1", custA + "-k2"}
	keyB, keyC := custB+"-k", custC+"-k"
	s := startServe(t, map[string][]string{custA: keysA, custB: {keyB}, custC: {keyC}})
	endpoint := "http://" + s.addr

	// N requests through the middleware are N events, with their routes,
	// statuses, sizes and units.
	t.Run("CountsEveryRequestOnce", func(t *testing.T) {
		m, err := New(Config{Endpoint: endpoint, Token: itIngestToken, KeyFunc: headerKey, Gateway: "pets-svc", FlushInterval: 50 * time.Millisecond, BatchSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(m.Middleware(petService()))
		defer srv.Close()
		calls := petCalls(400, keysA)
		drive(t, srv, calls, custA)
		closeMeter(t, m)
		if st := m.Stats(); st.Enqueued != 400 || st.Sent != 400 || st.Rejected != 0 || st.Retries != 0 {
			t.Fatalf("stats %+v", st)
		}
		s.waitUsage(t, custA, wantUsage(calls), len(calls))

		evs, err := s.stored(custA)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != len(calls) {
			t.Fatalf("%d stored events, want %d", len(evs), len(calls))
		}
		perRoute := map[string]int{}
		var upload uint64
		for _, ev := range evs {
			perRoute[fmt.Sprintf("%s %s %d", ev.Method, ev.Route, ev.Status)]++
			if ev.Gateway != "pets-svc" || ev.ClientIP != "127.0.0.0" || len(ev.ID) != 32 {
				t.Errorf("stored %+v", ev)
			}
			if ev.Route == "/v1/pets" {
				upload += ev.RequestBytes
				if ev.ResponseBytes != 3 {
					t.Errorf("POST response bytes %d, want 3", ev.ResponseBytes)
				}
			}
		}
		var wantUpload uint64
		wantRoutes := map[string]int{}
		for _, c := range calls {
			wantRoutes[fmt.Sprintf("%s %s %d", c.method, c.wantRoute, c.wantStatus)]++
			wantUpload += uint64(len(c.body))
		}
		if fmt.Sprint(perRoute) != fmt.Sprint(wantRoutes) || upload != wantUpload {
			t.Fatalf("stored events by method, route, status: %v (uploads %d bytes)\nwant %v (%d bytes)", perRoute, upload, wantRoutes, wantUpload)
		}
	})

	// A collector that answers 503 once, after the batch reached Kafka: the
	// meter sends it again, and the pipeline stores each id once.
	t.Run("RetryAfter503IsStoredOnce", func(t *testing.T) {
		proxy := &overloadedCollector{target: endpoint}
		ps := httptest.NewServer(proxy)
		defer ps.Close()
		m, err := New(Config{Endpoint: ps.URL, Token: itIngestToken, KeyFunc: headerKey, FlushInterval: time.Hour, MinBackoff: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(m.Middleware(petService()))
		defer srv.Close()
		before := s.metric("meterline_collector_events_accepted_total")
		calls := petCalls(120, []string{keyB})
		drive(t, srv, calls, custB)
		closeMeter(t, m) // the one batch: 503 with Retry-After: 1, then 202
		if st := m.Stats(); st.Sent != 120 || st.Retries != 1 {
			t.Fatalf("stats %+v, want 120 sent after 1 retry", st)
		}
		if proxy.posts.Load() != 2 || !proxy.forwardedFirst.Load() {
			t.Fatalf("the stand-in saw %d posts (first forwarded: %v), want 2", proxy.posts.Load(), proxy.forwardedFirst.Load())
		}
		// The collector really accepted every event twice.
		if d := s.metric("meterline_collector_events_accepted_total") - before; d != 240 {
			t.Fatalf("collector accepted %v events, want 240 (120 twice)", d)
		}
		s.waitUsage(t, custB, wantUsage(calls), len(calls))
		if evs, err := s.stored(custB); err != nil || len(evs) != 120 {
			t.Fatalf("%d stored events (%v), want 120", len(evs), err)
		}
	})

	// Hostile ids from KeyFunc: the collector rejects those events one by
	// one; they are counted and logged with the reason, and the other events
	// of the same batch are stored.
	t.Run("RejectedEventsAreCountedOthersStored", func(t *testing.T) {
		var logs testenv.SyncBuffer
		keyOf := func(r *http.Request) (string, string) {
			switch r.URL.Query().Get("bad") {
			case "long":
				return strings.Repeat("k", 129), custC
			case "ctl":
				return "key\x01\x1b[2J", custC
			case "owner": // another customer's key
				return keysA[0], custC
			case "customer":
				return keyC, strings.Repeat("c", 4096)
			}
			return keyC, custC
		}
		m, err := New(Config{Endpoint: endpoint, Token: itIngestToken, KeyFunc: keyOf, FlushInterval: time.Hour,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(m.Middleware(petService()))
		defer srv.Close()
		good := 0
		for i := range 60 {
			path := "/v1/pets/" + strconv.Itoa(i)
			if bad := []string{"", "", "long", "", "ctl", "owner", "", "customer"}[i%8]; bad != "" {
				path += "?bad=" + bad
			} else {
				good++
			}
			resp, err := srv.Client().Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d", path, resp.StatusCode)
			}
		}
		closeMeter(t, m)
		st := m.Stats()
		if st.Sent != uint64(good) || st.Rejected != uint64(60-good) || st.Retries != 0 || st.DroppedRefused != 0 {
			t.Fatalf("stats %+v, want %d sent and %d rejected", st, good, 60-good)
		}
		for _, reason := range []string{`field \"api_key_id\": must be at most 128 bytes`, `must not contain control characters`,
			`does not hold api_key_id`, `field \"customer_id\": must be at most 128 bytes`} {
			if !strings.Contains(logs.String(), reason) {
				t.Errorf("no rejection logged with %q:\n%s", reason, logs.String())
			}
		}
		s.waitUsage(t, custC, map[string]usageGroup{"/v1/pets/{id} 2xx": {good, float64(2 * good)}}, good)
		// Nothing of it was billed to the key's real owner.
		if _, n, err := s.usage(custA); err != nil || n != 400 {
			t.Fatalf("usage of %s: %d (%v), want its own 400 requests only", custA, n, err)
		}
	})

	// A token without the ingest scope: the batch is refused as a whole,
	// counted, and not retried.
	t.Run("WrongTokenIsRefusedNotRetried", func(t *testing.T) {
		m, err := New(Config{Endpoint: endpoint, Token: itAdminToken, KeyFunc: headerKey, FlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		h := m.Middleware(petService())
		for range 5 {
			r := httptest.NewRequest("GET", "/v1/pets/1", nil)
			r.Header.Set("X-Api-Key-Id", keyB)
			h.ServeHTTP(httptest.NewRecorder(), r)
		}
		closeMeter(t, m)
		if st := m.Stats(); st.DroppedRefused != 5 || st.Sent != 0 || st.Retries != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// overloadedCollector is a hand-written stand-in for a collector behind an
// overloaded load balancer: it forwards every POST to the real collector,
// and answers the first one with 503 and Retry-After: 1 after the collector
// accepted it, so the retry carries events the pipeline already has.
type overloadedCollector struct {
	target         string
	posts          atomic.Int64
	forwardedFirst atomic.Bool
}

func (o *overloadedCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := o.posts.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, o.target+r.URL.Path, bytes.NewReader(body))
	for _, h := range []string{"Authorization", "Content-Type", "Content-Encoding"} {
		req.Header.Set(h, r.Header.Get(h))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if n == 1 {
		o.forwardedFirst.Store(resp.StatusCode == http.StatusAccepted)
		w.Header().Set("Retry-After", "1")
		http.Error(w, `{"error":"overloaded"}`, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}
