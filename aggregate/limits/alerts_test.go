package limits

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

const testSecret = "test-webhook-secret-0123456789"

// alertConfig retries fast, so tests do not wait for production backoff.
func alertConfig() Config {
	return Config{WebhookSecret: testSecret, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, WebhookTimeout: 5 * time.Second}
}

// received is one request a receiver got.
type received struct {
	at         time.Time
	deliveryID string
	body       []byte
	event      AlertEvent
}

// receiver is a real HTTP webhook receiver. respond chooses the answer to
// the n-th request (0-based); nil answers 200.
type receiver struct {
	t       *testing.T
	srv     *httptest.Server
	respond func(n int, w http.ResponseWriter, r *http.Request) int

	mu      sync.Mutex
	got     []received
	badSigs int
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	rc := &receiver{t: t, respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.handle))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	// Verified as a receiver would, before anything else.
	if err := VerifySignature(testSecret, r.Header.Get(HeaderSignature), body, 0); err != nil {
		rc.mu.Lock()
		rc.badSigs++
		rc.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ev AlertEvent
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		rc.t.Errorf("alert body %s: %v", body, err)
	}
	rc.mu.Lock()
	n := len(rc.got)
	rc.got = append(rc.got, received{at: time.Now(), deliveryID: r.Header.Get(HeaderDelivery), body: body, event: ev})
	rc.mu.Unlock()
	status := http.StatusOK
	if rc.respond != nil {
		status = rc.respond(n, w, r)
	}
	w.WriteHeader(status)
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.badSigs > 0 {
		rc.t.Errorf("%d requests with a bad signature", rc.badSigs)
	}
	return append([]received(nil), rc.got...)
}

// waitRequests waits until the receiver got at least n requests.
func (rc *receiver) waitRequests(n int) []received {
	rc.t.Helper()
	testenv.Eventually(rc.t, 20*time.Second, func() error {
		if got := len(rc.requests()); got < n {
			return fmt.Errorf("%d of %d webhook requests", got, n)
		}
		return nil
	})
	return rc.requests()
}

// alertCatalogue has plan "pro" (1000 units, alerts at 80 % and 100 %)
// and one customer per entry of webhooks (customer id -> URL).
func alertCatalogue(t testing.TB, webhooks map[string]string) *Catalogue {
	t.Helper()
	var b strings.Builder
	b.WriteString("plans:\n  - id: pro\n    included_units: 1000\n    alert_thresholds: [0.8, 1.0]\ncustomers:\n")
	for id, url := range webhooks {
		fmt.Fprintf(&b, "  - id: %s\n    plan: pro\n    alert_webhook: %s\n    keys: [%s_key]\n", id, url, id)
	}
	return mustParse(t, b.String())
}

// deliveryRow is one attempt recorded in alert_deliveries (the fencing
// rows, claims and withdrawn claims, are left out).
type deliveryRow struct {
	deliveryID string
	threshold  float64
	attempt    int64
	status     int64
	outcome    string
	err        string
}

func deliveryRows(t testing.TB, db store.Conn, customer string) []deliveryRow {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT delivery_id, threshold, attempt, status_code, outcome, error
FROM alert_deliveries WHERE customer_id = {c:String} AND outcome NOT IN ('sending', 'withdrawn')
ORDER BY attempted_at, attempt`, store.P("c", customer))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []deliveryRow
	for rows.Next() {
		var r deliveryRow
		if err := rows.Scan(&r.deliveryID, &r.threshold, &r.attempt, &r.status, &r.outcome, &r.err); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAlertsOncePerThresholdPerPeriodAcrossRefreshesAndRestart(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, nil)
	cust := testenv.Unique("acme")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL + "/hook"}))
	src := &settableSource{}
	now := time.Now().UTC()
	period, _ := periodOf(now)

	v := newTestView(t, alertConfig(), reg, src, db)
	v.now = func() time.Time { return now }
	src.set(cust, 799)
	refresh(t, v)
	src.set(cust, 800) // exactly 80 %
	for range 5 {
		refresh(t, v)
	}
	got := rc.waitRequests(1)
	src.set(cust, 1500) // past 100 %
	for range 5 {
		refresh(t, v)
	}
	got = rc.waitRequests(2)
	v.Close() // waits for deliveries in progress

	got = rc.requests()
	if len(got) != 2 {
		t.Fatalf("%d webhooks, want 2 (one per threshold)", len(got))
	}
	for i, want := range []struct {
		threshold, used float64
	}{{0.8, 800}, {1.0, 1500}} {
		ev := got[i].event
		if ev.Type != AlertTypeThresholdCrossed || ev.CustomerID != cust || ev.PlanID != "pro" || !ev.PeriodStart.Equal(period) ||
			ev.Threshold != want.threshold || ev.Used != want.used || ev.Included != 1000 {
			t.Errorf("webhook %d: %+v", i, ev)
		}
		if id := DeliveryID(cust, period, want.threshold); ev.DeliveryID != id || got[i].deliveryID != id {
			t.Errorf("webhook %d: delivery id %q (header %q), want %q", i, ev.DeliveryID, got[i].deliveryID, id)
		}
	}
	rows := deliveryRows(t, db, cust)
	if len(rows) != 2 || rows[0].outcome != "delivered" || rows[1].outcome != "delivered" ||
		rows[0].threshold != 0.8 || rows[1].threshold != 1 || rows[0].status != 200 || rows[0].attempt != 1 {
		t.Fatalf("recorded %+v", rows)
	}

	// A restarted process (new View, same tables) sends nothing again.
	v2 := newTestView(t, alertConfig(), reg, src, db)
	v2.now = func() time.Time { return now }
	for range 3 {
		refresh(t, v2)
	}
	v2.Close()
	if n := len(rc.requests()); n != 2 {
		t.Fatalf("after a restart: %d webhooks, want still 2", n)
	}

	// The next period has its own alerts.
	next := period.AddDate(0, 1, 3)
	v3 := newTestView(t, alertConfig(), reg, src, db)
	v3.now = func() time.Time { return next }
	refresh(t, v3)
	got = rc.waitRequests(4)
	refresh(t, v3)
	v3.Close()
	if len(rc.requests()) != 4 || !got[2].event.PeriodStart.Equal(period.AddDate(0, 1, 0)) || got[2].deliveryID == got[0].deliveryID {
		t.Fatalf("next period: %+v", got[2:])
	}
}

func TestAlertRetriedAfterServerErrorsIsDeliveredOnce(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n < 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	cust := testenv.Unique("retry")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	v := newTestView(t, alertConfig(), reg, fixedSource{cust: 900}, db)
	refresh(t, v)
	rc.waitRequests(3)
	for range 3 {
		refresh(t, v) // in flight or delivered: never queued twice
	}
	v.Close()

	got := rc.requests()
	if len(got) != 3 {
		t.Fatalf("%d requests, want 3", len(got))
	}
	for _, r := range got[1:] {
		if r.deliveryID != got[0].deliveryID || !bytes.Equal(r.body, got[0].body) {
			t.Errorf("a retry differs: %s %s vs %s %s", r.deliveryID, r.body, got[0].deliveryID, got[0].body)
		}
	}
	rows := deliveryRows(t, db, cust)
	want := []struct {
		attempt, status int64
		outcome         string
	}{{1, 500, "retrying"}, {2, 500, "retrying"}, {3, 200, "delivered"}}
	if len(rows) != len(want) {
		t.Fatalf("recorded %+v, want 3 rows", rows)
	}
	for i, w := range want {
		r := rows[i]
		if r.attempt != w.attempt || r.status != w.status || r.outcome != w.outcome || r.deliveryID != got[0].deliveryID {
			t.Errorf("row %d: %+v, want %+v", i, r, w)
		}
	}
	if !strings.HasPrefix(rows[0].err, "HTTP 500") || rows[2].err != "" {
		t.Errorf("errors recorded: %q, %q", rows[0].err, rows[2].err)
	}
	if d, r := testutil.ToFloat64(v.m.deliveries.WithLabelValues("delivered")), testutil.ToFloat64(v.m.deliveries.WithLabelValues("retrying")); d != 1 || r != 2 {
		t.Errorf("metrics: delivered %v, retrying %v", d, r)
	}
}

func TestAlertHonoursRetryAfter(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			return http.StatusTooManyRequests
		}
		return http.StatusNoContent
	})
	cust := testenv.Unique("throttled")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	v := newTestView(t, alertConfig(), reg, fixedSource{cust: 850}, db)
	refresh(t, v)
	got := rc.waitRequests(2)
	v.Close()
	// Backoff alone would wait at most RetryMin (10ms).
	if gap := got[1].at.Sub(got[0].at); gap < time.Second {
		t.Fatalf("retried after %s, before Retry-After's 1s", gap)
	}
	rows := deliveryRows(t, db, cust)
	if len(rows) != 2 || rows[0].status != 429 || rows[0].outcome != "retrying" || rows[1].status != 204 || rows[1].outcome != "delivered" {
		t.Fatalf("recorded %+v", rows)
	}
}

func TestAlertRefusedIsNotRetriedUntilTheWebhookChanges(t *testing.T) {
	db := requireDB(t)
	refusing := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusNotFound })
	fixed := newReceiver(t, nil)
	cust := testenv.Unique("refused")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: refusing.srv.URL}))
	v := newTestView(t, alertConfig(), reg, fixedSource{cust: 810}, db)
	refresh(t, v)
	refusing.waitRequests(1)
	testenv.Eventually(t, 10*time.Second, func() error {
		if rows := deliveryRows(t, db, cust); len(rows) != 1 || rows[0].outcome != "failed" || rows[0].status != 404 {
			return fmt.Errorf("recorded %+v", rows)
		}
		return nil
	})
	for range 3 {
		refresh(t, v)
	}
	// A retry would have been queued by now; wait until every queued
	// alert has been attempted.
	waitIdle(t, v)
	if n := len(refusing.requests()); n != 1 {
		t.Fatalf("a 404 was retried: %d requests", n)
	}

	reg.Swap(alertCatalogue(t, map[string]string{cust: fixed.srv.URL}))
	refresh(t, v)
	fixed.waitRequests(1)
	v.Close()
	rows := deliveryRows(t, db, cust)
	if len(rows) != 2 || rows[1].outcome != "delivered" || rows[1].attempt != 2 {
		t.Fatalf("recorded %+v", rows)
	}
}

func TestSlowReceiverDoesNotDelayAnotherCustomer(t *testing.T) {
	db := requireDB(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	slow := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return http.StatusOK
	})
	fast := newReceiver(t, nil)
	slowCust, fastCust := testenv.Unique("slow"), testenv.Unique("fast")
	reg := NewRegistry(alertCatalogue(t, map[string]string{slowCust: slow.srv.URL, fastCust: fast.srv.URL}))
	cfg := alertConfig()
	cfg.WebhookTimeout = time.Minute
	v := newTestView(t, cfg, reg, fixedSource{slowCust: 1000, fastCust: 1000}, db)
	refresh(t, v)
	<-entered // the slow receiver holds its first request

	got := fast.waitRequests(2) // both thresholds of the other customer
	if got[0].event.Threshold != 0.8 || got[1].event.Threshold != 1 {
		t.Errorf("thresholds out of order: %v, %v", got[0].event.Threshold, got[1].event.Threshold)
	}
	select {
	case <-entered:
		t.Fatal("the slow customer's second alert started before its first ended")
	default:
	}
	close(release)
	slow.waitRequests(2)
	v.Close()
	if len(slow.requests()) != 2 || len(fast.requests()) != 2 {
		t.Fatalf("slow %d, fast %d requests", len(slow.requests()), len(fast.requests()))
	}
}

func TestCloseStopsRetrying(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusServiceUnavailable })
	cust := testenv.Unique("closing")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	cfg := alertConfig()
	cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour
	v := newTestView(t, cfg, reg, fixedSource{cust: 800}, db)
	refresh(t, v)
	rc.waitRequests(1)
	testenv.Eventually(t, 10*time.Second, func() error {
		if rows := deliveryRows(t, db, cust); len(rows) != 1 || rows[0].outcome != "retrying" {
			return fmt.Errorf("recorded %+v", rows)
		}
		return nil
	})
	done := make(chan struct{})
	go func() { v.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for a retry an hour away")
	}

	// A restarted process picks the alert up and numbers attempts on.
	ok := newReceiver(t, nil)
	reg.Swap(alertCatalogue(t, map[string]string{cust: ok.srv.URL}))
	v2 := newTestView(t, alertConfig(), reg, fixedSource{cust: 800}, db)
	refresh(t, v2)
	ok.waitRequests(1)
	v2.Close()
	if rows := deliveryRows(t, db, cust); len(rows) != 2 || rows[1].attempt != 2 || rows[1].outcome != "delivered" {
		t.Fatalf("recorded %+v", rows)
	}
}

// failingConn stands in for a ClickHouse that cannot be read.
type failingConn struct{ store.Conn }

func (failingConn) Query(context.Context, string, ...store.Param) (store.Rows, error) {
	return nil, errors.New("clickhouse down")
}

func TestNoAlertWhenTheDeliveryStateIsUnreadable(t *testing.T) {
	rc := newReceiver(t, nil)
	reg := NewRegistry(alertCatalogue(t, map[string]string{"blind": rc.srv.URL}))
	v := newTestView(t, alertConfig(), reg, fixedSource{"blind": 2000}, failingConn{})
	err := v.Refresh(context.Background())
	if err == nil || !strings.Contains(err.Error(), "clickhouse down") {
		t.Fatalf("refresh: %v", err)
	}
	// The limits themselves were refreshed.
	if l, err := v.Lookup("blind_key", time.Now()); err != nil || l.Used != 2000 {
		t.Fatalf("lookup: %+v, %v", l, err)
	}
	v.Close()
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("%d alerts sent without knowing whether they were delivered", n)
	}
}

func TestAlertsOffWithoutSecret(t *testing.T) {
	rc := newReceiver(t, nil)
	reg := NewRegistry(alertCatalogue(t, map[string]string{"nosecret": rc.srv.URL}))
	cfg := alertConfig()
	cfg.WebhookSecret = ""
	v := newTestView(t, cfg, reg, fixedSource{"nosecret": 2000}, failingConn{})
	refresh(t, v) // would fail reading the state if alerts were on
	v.Close()
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("%d unsigned alerts sent", n)
	}
}

func TestDeliveryID(t *testing.T) {
	p := at("2026-03-01T00:00:00Z")
	id := DeliveryID("acme", p, 0.8)
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("id %q is not 32 hex digits", id)
	}
	if DeliveryID("acme", p.In(time.FixedZone("x", 3600)), 0.8) != id {
		t.Error("the id depends on the time zone")
	}
	for _, other := range []string{DeliveryID("acme", p, 1), DeliveryID("acme2", p, 0.8), DeliveryID("acme", p.AddDate(0, 1, 0), 0.8)} {
		if other == id {
			t.Error("two crossings share an id")
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := at("2026-03-01T00:00:00Z")
	for in, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		"-1":                            0,
		"999999999999":                  maxRetryAfter,
		"Sun, 01 Mar 2026 00:00:30 GMT": 30 * time.Second,
		"Sat, 28 Feb 2026 00:00:30 GMT": 0,
		"soon":                          0,
	} {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestCleanText(t *testing.T) {
	got := cleanText("HTTP 500: \x00bad\nline\xff" + strings.Repeat("é", 400))
	if len(got) > maxErrorBytes || strings.ContainsAny(got, "\x00\n") || !strings.HasPrefix(got, "HTTP 500:  bad line\uFFFD") {
		t.Fatalf("cleanText = %q", got)
	}
}

// gate is an AlertGate a test flips by hand.
type gate struct{ held atomic.Bool }

func (g *gate) Held() bool { return g.held.Load() }

// TestAlertGateOneSenderAndHandover: two processes (Views) serve limits
// over the same tables; only the one whose gate is held sends. When the
// gate moves while a delivery is being retried, the first stops before its
// next attempt and the second finishes the delivery, numbering its attempts
// after the recorded ones: one delivery in all.
func TestAlertGateOneSenderAndHandover(t *testing.T) {
	db := requireDB(t)
	ga, gb := &gate{}, &gate{}
	ga.held.Store(true)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		switch n {
		case 0:
			return http.StatusServiceUnavailable
		case 1:
			// The lease moves while the first process retries.
			ga.held.Store(false)
			gb.held.Store(true)
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	cust := testenv.Unique("gated")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL}))
	cfg := alertConfig()
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 100*time.Millisecond
	a := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	a.SetAlertGate(ga)
	b := newTestView(t, cfg, reg, fixedSource{cust: 850}, db)
	b.SetAlertGate(gb)
	if sa, sb := testutil.ToFloat64(a.m.sender), testutil.ToFloat64(b.m.sender); sa != 1 || sb != 0 {
		t.Fatalf("meterline_alerts_sender = %v and %v, want 1 for the holder and 0 for the other", sa, sb)
	}
	refresh(t, a)
	refresh(t, b)
	rc.waitRequests(2) // a's first two attempts, refused
	// a's delivery ends at its next attempt, handed over, without sending.
	waitIdle(t, a)
	for range 3 {
		refresh(t, a) // a no longer sends, whatever it sees
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		refresh(t, b)
		if rows := deliveryRows(t, db, cust); len(rows) == 0 || rows[len(rows)-1].outcome != "delivered" {
			return fmt.Errorf("not delivered yet: %+v", rows)
		}
		return nil
	})
	a.Close()
	b.Close()

	got := rc.requests()
	delivered := 0
	for _, r := range got {
		if r.deliveryID != got[0].deliveryID {
			t.Errorf("two alerts: %s and %s", got[0].deliveryID, r.deliveryID)
		}
	}
	rows := deliveryRows(t, db, cust)
	for i, r := range rows {
		if r.attempt != int64(i+1) {
			t.Errorf("attempt numbers %+v: want 1, 2, ... in order", rows)
			break
		}
		if r.outcome == "delivered" {
			delivered++
		}
	}
	if delivered != 1 || len(rows) != len(got) {
		t.Fatalf("%d requests, recorded %+v: want exactly one delivered and a row per request", len(got), rows)
	}
	if testutil.ToFloat64(a.m.deliveries.WithLabelValues("delivered")) != 0 || testutil.ToFloat64(b.m.deliveries.WithLabelValues("delivered")) != 1 {
		t.Fatal("the delivery was not made by the process holding the gate")
	}
}

// waitIdle waits until v has no alert queued or being delivered: every
// alert its refreshes queued has had its attempts (and their metrics).
func waitIdle(t testing.TB, v *View) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := v.alerts.pending.Load(); n != 0 {
			return fmt.Errorf("%d alerts pending", n)
		}
		return nil
	})
}
