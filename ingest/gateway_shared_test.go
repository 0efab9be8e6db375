//go:build unix

package ingest

// Helpers shared by the gateway tests (nginx, HAProxy, Caddy): the API
// behind the gateway, the requests sent through it and what they must
// become, and the stored events.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// gatewayUpstream is the API behind the gateway. It answers by path, and
// tells the gateway the endpoint template (X-Route) and the billable units
// (X-Units) of some answers, as a real API would.
func gatewayUpstream(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case strings.HasPrefix(p, "/v1/pets/"):
			w.Header().Set("X-Route", "/v1/pets/{id}")
			w.Header().Set("X-Units", "2.5")
			fmt.Fprintf(w, `{"id":%q,"name":"rex"}`, strings.TrimPrefix(p, "/v1/pets/"))
		case p == "/v1/upload":
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Route", "/v1/upload")
			w.Header().Set("X-Units", uploadUnits(n))
			w.WriteHeader(http.StatusCreated)
		case p == "/v1/boom":
			w.Header().Set("X-Route", "/v1/boom")
			http.Error(w, "boom", http.StatusInternalServerError)
		case p == "/v1/weird":
			w.Header().Set("X-Route", "/v1/weird")
			w.Header().Set("X-Units", "lots") // not a number: the event is dead-lettered
		default:
			http.NotFound(w, r) // no X-Route: the gateway meters the raw path
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// uploadUnits bills uploads by the KiB, plus a fraction that a float with
// 14 significant digits would keep too; the decimal text is what is stored.
func uploadUnits(n int64) string { return strconv.FormatInt(n/1024, 10) + ".125" }

// gwRequest is one request sent through the gateway and what the client saw.
type gwRequest struct {
	key, method, path, userAgent string
	body                         int  // request body bytes
	unitsShown                   bool // the gateway passes X-Units on (Caddy logs it from the response)

	id       string // X-Request-Id of the response
	status   int
	respBody int64 // response body bytes the client read
}

// want returns the route and units that the stored event must carry.
func (r *gwRequest) want() (route string, units float64) {
	switch {
	case strings.HasPrefix(r.path, "/v1/pets/"):
		return "/v1/pets/{id}", 2.5
	case r.path == "/v1/upload":
		u, _ := strconv.ParseFloat(uploadUnits(int64(r.body)), 64)
		return "/v1/upload", u
	case r.path == "/v1/boom":
		return "/v1/boom", 1
	}
	path, _, _ := strings.Cut(r.path, "?")
	return path, 1
}

// sendThrough makes the requests through the gateway at baseURL from
// several goroutines and records the id and status of each response.
func sendThrough(t *testing.T, baseURL string, reqs []*gwRequest, workers int) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	work := make(chan *gwRequest)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				if err := doThrough(client, baseURL, r); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, r := range reqs {
		work <- r
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func doThrough(client *http.Client, baseURL string, r *gwRequest) error {
	var body io.Reader
	if r.body > 0 {
		body = strings.NewReader(strings.Repeat("b", r.body))
	}
	req, err := http.NewRequest(r.method, baseURL+r.path, body)
	if err != nil {
		return err
	}
	if r.key != "" {
		req.Header.Set("X-Api-Key-Id", r.key)
	}
	req.Header.Set("User-Agent", r.userAgent)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	defer resp.Body.Close()
	if r.respBody, err = io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("%s %s: %w", r.method, r.path, err)
	}
	r.id, r.status = resp.Header.Get("X-Request-Id"), resp.StatusCode
	switch {
	case r.id == "":
		return fmt.Errorf("%s %s: no X-Request-Id in the response", r.method, r.path)
	case resp.Header.Get("X-Route") != "" || (!r.unitsShown && resp.Header.Get("X-Units") != ""):
		return fmt.Errorf("%s %s: the gateway leaked X-Route or X-Units to the client", r.method, r.path)
	}
	return nil
}

// gwRequests plans n requests over keys: GETs answered 200, 404 (with a
// query string and encoded characters) and 500,
// uploads (every other one with a body larger than nginx buffers in
// memory), every ninth without an API key, every eleventh with a user agent
// longer than the contract's 512 bytes.
func gwRequests(n int, keys []string, tag string) []*gwRequest {
	reqs := make([]*gwRequest, n)
	for i := range reqs {
		r := &gwRequest{key: keys[i%len(keys)], method: http.MethodGet, userAgent: "meterline-gateway-test/1"}
		switch i % 5 {
		case 0, 1:
			r.path = fmt.Sprintf("/v1/pets/%s-%d", tag, i)
		case 2: // $uri is decoded: the gateway encodes what is not printable ASCII again
			r.path = fmt.Sprintf("/v1/missing/%s-%d/caf%%C3%%A9%%0A?page=%d", tag, i, i)
		case 3:
			r.path = "/v1/boom"
		case 4:
			r.method, r.path, r.body = http.MethodPost, "/v1/upload", 1000
			if i%10 == 9 {
				r.body = 100 << 10
			}
		}
		if i%9 == 8 {
			r.key = ""
		}
		if i%11 == 0 {
			r.userAgent = "a" + strings.Repeat("é", 300) // 601 bytes
		}
		reqs[i] = r
	}
	return reqs
}

// storedGatewayEvent is a row of the events table.
type storedGatewayEvent struct {
	id, key, gateway, method, route, clientIP, userAgent string
	status                                               uint16
	units, latency                                       float64
	reqBytes, respBytes                                  uint64
	time                                                 time.Time
	partition                                            int32
}

// storedGatewayEvents returns the stored events (FINAL) whose api_key_id
// starts with prefix.
func storedGatewayEvents(t *testing.T, db store.Conn, prefix string) []storedGatewayEvent {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT id, api_key_id, gateway, method, route, client_ip, user_agent,
		status, toFloat64(units), latency_ms, request_bytes, response_bytes, time, kafka_partition
		FROM events FINAL WHERE startsWith(api_key_id, {p:String})`, store.P("p", prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedGatewayEvent
	for rows.Next() {
		var e storedGatewayEvent
		if err := rows.Scan(&e.id, &e.key, &e.gateway, &e.method, &e.route, &e.clientIP, &e.userAgent,
			&e.status, &e.units, &e.latency, &e.reqBytes, &e.respBytes, &e.time, &e.partition); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// queryUint64 runs a query returning one number for the keys starting with prefix.
func queryUint64(t *testing.T, db store.Conn, sql, prefix string) uint64 {
	t.Helper()
	return testenv.Count(t, db, sql, store.P("p", prefix))
}

// waitGatewayStored waits until want events are stored (FINAL) for the keys
// starting with prefix.
func waitGatewayStored(t *testing.T, db store.Conn, prefix string, want int) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		got := queryUint64(t, db, "SELECT count() FROM events FINAL WHERE startsWith(api_key_id, {p:String})", prefix)
		if got != uint64(want) {
			return fmt.Errorf("%d events stored, want %d", got, want)
		}
		return nil
	})
}

// gatewayPipeline is Meterline behind a gateway that posts to the collector,
// in this process: the collector (POST /v1/events) producing to a topic of
// its own, the sink into the shared engine, the aggregator (ticked by the
// test) and GET /v1/usage.
type gatewayPipeline struct {
	f         *sinkFixture
	db        store.Conn
	Collector string // http://127.0.0.1:port
	usage     *httptest.Server
	agg       *aggregate.Aggregator
	stopSink  func() error
}

func newGatewayPipeline(t *testing.T) *gatewayPipeline {
	t.Helper()
	db := requireDB(t)
	f := newSinkFixture(t)
	w, err := NewProducer(f.k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	col := httptest.NewServer(NewCollector(CollectorConfig{}, schemas.Options{}, Anonymizer{}, testTokens(t), w, prometheus.NewRegistry(), quietLog()))
	t.Cleanup(col.Close)
	usage := httptest.NewServer(api.NewUsageHandler(aggregate.NewQuerier(db), testTokens(t)))
	t.Cleanup(usage.Close)
	p := &gatewayPipeline{
		f: f, db: db, Collector: col.URL, usage: usage,
		agg: aggregate.NewAggregator(aggregate.Config{Interval: time.Second, Settle: time.Millisecond, Overlap: time.Minute}, db, nil, quietLog()),
	}
	p.stopSink = f.run(t, db, prometheus.NewRegistry())
	return p
}

// usageKey names a usage row grouped by route, method and status class.
func usageKey(route, method string, status int) string {
	return fmt.Sprintf("%s %s %dxx", method, route, status/100)
}

// usageRows reads GET /v1/usage for key since from, one row per route,
// method and status class (window total), keyed by usageKey.
func (p *gatewayPipeline) usageRows(t *testing.T, key string, from time.Time) (map[string]api.UsageRow, error) {
	t.Helper()
	q := url.Values{"api_key_id": {key}, "from": {from.UTC().Format(time.RFC3339)}, "window": {"total"}, "group_by": {"route,method,status_class"}}
	req, _ := http.NewRequest(http.MethodGet, p.usage.URL+"/v1/usage?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+tokAdmin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/usage: %d %s", resp.StatusCode, b)
	}
	var out api.UsageResponse
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("GET /v1/usage: %v: %s", err, b)
	}
	rows := map[string]api.UsageRow{}
	for _, r := range out.Rows {
		rows[r.Group["method"]+" "+r.Group["route"]+" "+r.Group["status_class"]] = r
	}
	return rows, nil
}

// waitUsage ticks the aggregator until GET /v1/usage counts, for each key,
// the requests want says (usageKey → requests), each row with a latency.
func (p *gatewayPipeline) waitUsage(t *testing.T, from time.Time, want map[string]map[string]uint64) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		if _, err := p.agg.Tick(context.Background()); err != nil {
			return err
		}
		for key, w := range want {
			rows, err := p.usageRows(t, key, from)
			if err != nil {
				return err
			}
			got := map[string]uint64{}
			for k, r := range rows {
				got[k] = r.Requests
				if r.LatencyMS == nil {
					return fmt.Errorf("key %s, %s: no latency", key, k)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(w) {
				return fmt.Errorf("key %s: usage %v, want %v", key, got, w)
			}
		}
		return nil
	})
}

// wantUsage is what GET /v1/usage must count of the metered requests, per key.
func wantUsage(reqs []*gwRequest) map[string]map[string]uint64 {
	want := map[string]map[string]uint64{}
	for _, r := range reqs {
		if r.key == "" {
			continue
		}
		if want[r.key] == nil {
			want[r.key] = map[string]uint64{}
		}
		route, _ := r.want()
		want[r.key][usageKey(route, r.method, r.status)]++
	}
	return want
}
