package privacy

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

var engine testenv.Engine

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testenv.RunWithEngine(m, "privacy", &engine))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// insertEvents writes n raw events of a customer's key, one every step from
// start, as the sink would; every third one is stored twice (a redelivery
// not yet merged away).
func insertEvents(t testing.TB, db store.Conn, customer, key string, n int, start time.Time, step time.Duration) {
	t.Helper()
	var rows [][]any
	now := time.Now().UTC()
	for i := 0; i < n; i++ {
		row := []any{fmt.Sprintf("%s-%d", key, i), start.Add(time.Duration(i) * step), key, customer, "gw-1", "GET", "/v1/things",
			uint16(200 + (i%5)*100), 12.5, uint64(100), uint64(1000), "203.0.113.0", "curl/8", float64(1 + i%3),
			map[string]string{"plan": "x"}, int32(0), int64(i), now}
		rows = append(rows, row)
		if i%3 == 0 {
			rows = append(rows, row)
		}
	}
	if err := db.Insert(context.Background(), ingest.EventsTable, ingest.EventColumns, rows, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
}

func count(t testing.TB, db store.Conn, q string, params ...store.Param) uint64 {
	t.Helper()
	return testenv.Count(t, db, q, params...)
}

// snapshot is a customer's figures in every table, to compare before and
// after another customer's erasure: rows (FINAL) and summed units.
func snapshot(t testing.TB, db store.Conn, customer string) map[string]string {
	t.Helper()
	tables, err := Tables(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, tb := range tables {
		q := "SELECT toString(count()) FROM " + from(tb) + " WHERE customer_id = {c:String}"
		if tb.Name == "events" || strings.HasPrefix(tb.Name, "usage_") {
			q = "SELECT toString(count()) || '/' || toString(sum(units)) FROM " + from(tb) + " WHERE customer_id = {c:String}"
		}
		rows, err := db.Query(context.Background(), q, store.P("c", customer))
		if err != nil {
			t.Fatal(err)
		}
		var s string
		if rows.Next() {
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
		}
		rows.Close()
		out[tb.Name] = s
	}
	return out
}

// insertAlert writes one alert delivery row.
func insertAlert(t testing.TB, db store.Conn, customer string) {
	t.Helper()
	err := db.Exec(context.Background(), `INSERT INTO alert_deliveries (delivery_id, customer_id, plan_id, period_start, threshold,
 attempt, attempted_at, status_code, outcome, error)
SELECT {id:String}, {c:String}, 'starter', toStartOfMonth(now()), 0.8, 1, now64(3), 200, 'delivered', ''`,
		store.P("id", testenv.Unique("d")), store.P("c", customer))
	if err != nil {
		t.Fatal(err)
	}
}

// insertAccounting writes one row into every Pseudonymise table that
// exists, with only customer_id set (the other columns take defaults).
func insertAccounting(t testing.TB, db store.Conn, customer string) []string {
	t.Helper()
	tables, err := Tables(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		if tb.Class != Pseudonymise {
			continue
		}
		// Times are set to now: a default of 1970 would be past the TTL.
		cols, vals := []string{"customer_id"}, []string{"{c:String}"}
		for _, c := range tb.Columns {
			if strings.HasPrefix(c.Type, "DateTime") {
				cols, vals = append(cols, c.ident), append(vals, "now64(3)")
			}
		}
		if err := db.Exec(context.Background(), "INSERT INTO "+tb.ident+" ("+strings.Join(cols, ", ")+") SELECT "+strings.Join(vals, ", "), store.P("c", customer)); err != nil {
			t.Fatal(err)
		}
		names = append(names, tb.Name)
	}
	return names
}

func fastConfig() Config {
	return Config{ErasedRefresh: 20 * time.Millisecond, ErasureCheckInterval: time.Hour}
}

// TestEveryCustomerTableIsClassified fails when a migration adds a table
// with customer_id that this package would delete by default without anyone
// having decided so: add it to classes, or confirm Delete here.
func TestEveryCustomerTableIsClassified(t *testing.T) {
	db := engine.Require(t)
	tables, err := Tables(ctxT(t), db)
	if err != nil {
		t.Fatal(err)
	}
	decidedDelete := map[string]bool{"events": true, "usage_minute": true, "usage_hour": true, "usage_day": true,
		"usage_month": true, "alert_deliveries": true,
		// The narrow rollups: usage data like the wide ones.
		"usage_key_minute": true, "usage_key_hour": true, "usage_key_day": true, "usage_key_month": true,
		// The sink's event id claims: usage data, erased with the events
		// (the erased-customer blocklist keeps replays out).
		"event_ids": true}
	seen := map[string]bool{}
	for _, tb := range tables {
		seen[tb.Name] = true
		if _, ok := classes[tb.Name]; !ok && !decidedDelete[tb.Name] {
			t.Errorf("table %s holds customer_id but has no decided erasure class", tb.Name)
		}
		if tb.TimeColumn == "" {
			t.Errorf("table %s has no DateTime column to slice exports by", tb.Name)
		}
	}
	for name := range decidedDelete {
		if !seen[name] {
			t.Errorf("table %s was not found among the customer tables", name)
		}
	}
}

// TestEraseCustomer erases one customer among three and checks every table:
// nothing of it is left except pseudonymised accounting rows, the others'
// figures are unchanged to the unit, and the request, its counts and its
// audit trail are recorded.
func TestEraseCustomer(t *testing.T) {
	db := engine.Require(t)
	ctx := ctxT(t)
	gone, keepA, keepB := testenv.Unique("gone"), testenv.Unique("keep"), testenv.Unique("keep")
	start := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
	for _, c := range []string{gone, keepA, keepB} {
		insertEvents(t, db, c, c+"-k1", 300, start, 17*time.Second)
		insertEvents(t, db, c, c+"-k2", 40, start.Add(-26*time.Hour), time.Minute)
		insertAlert(t, db, c)
		insertAccounting(t, db, c)
	}
	agg := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, nil, testenv.Log())
	if _, err := agg.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	before := map[string]map[string]string{keepA: snapshot(t, db, keepA), keepB: snapshot(t, db, keepB)}
	physical := map[string]uint64{}
	for _, name := range []string{"events", "usage_minute", "usage_hour", "usage_day", "usage_month",
		"usage_key_minute", "usage_key_hour", "usage_key_day", "usage_key_month", "alert_deliveries"} {
		physical[name] = count(t, db, "SELECT count() FROM "+name+" WHERE customer_id = {c:String}", store.P("c", gone))
		if physical[name] == 0 {
			t.Fatalf("no %s rows for %s before the erasure", name, gone)
		}
	}

	reg := prometheus.NewRegistry()
	svc := NewService(fastConfig(), db, reg, testenv.Log())
	req, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "dpo@example.com", Reason: "GDPR art. 17"})
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != StatusPending || req.Kind != KindErasure {
		t.Fatalf("new request %+v", req)
	}
	n, err := svc.RunDue(ctx)
	if err != nil || n < 1 {
		t.Fatalf("RunDue: %d, %v", n, err)
	}
	e, err := svc.Get(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != StatusDone || e.StartedAt == nil || e.FinishedAt == nil || e.Error != "" {
		t.Fatalf("erasure after run: %+v", e)
	}
	for name, want := range physical {
		if e.Removed[name] != want {
			t.Errorf("removed[%s] = %d, want %d (rows stored before)", name, e.Removed[name], want)
		}
	}
	left, err := Remaining(ctx, db, gone)
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range left {
		if n != 0 {
			t.Errorf("%d rows of %s left in %s", n, gone, name)
		}
	}
	for _, tb := range mustTables(t, db) {
		if tb.Class != Pseudonymise {
			continue
		}
		if n := count(t, db, "SELECT count() FROM "+tb.Name+" WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
			t.Errorf("%s still names %s in %d rows", tb.Name, gone, n)
		}
		if n := count(t, db, "SELECT count() FROM "+tb.Name+" WHERE customer_id = {c:String}", store.P("c", e.Pseudonym)); n != e.Pseudonymised[tb.Name] || n == 0 {
			t.Errorf("%s: %d rows under the pseudonym %s, recorded %d", tb.Name, n, e.Pseudonym, e.Pseudonymised[tb.Name])
		}
	}
	for c, snap := range before {
		after := snapshot(t, db, c)
		for table, v := range snap {
			if after[table] != v {
				t.Errorf("customer %s, table %s: %s before, %s after another customer's erasure", c, table, v, after[table])
			}
		}
	}
	actions := map[string]bool{}
	rows, err := db.Query(ctx, "SELECT action FROM privacy_audit WHERE erasure_id = {id:String}", store.P("id", e.ID))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a string
		_ = rows.Scan(&a)
		actions[a] = true
	}
	rows.Close()
	for _, a := range []string{"erasure_requested", "erasure_started", "erasure_done"} {
		if !actions[a] {
			t.Errorf("audit trail lacks %s: %v", a, actions)
		}
	}
	if v := testutil.ToFloat64(svc.erasures.WithLabelValues("done")); v != 1 {
		t.Errorf("erasures done metric %v", v)
	}

	// The aggregator re-running over the erased minutes must not bring
	// rollups back, and a second execution finds nothing and keeps the counts.
	if _, err := agg.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := svc.Execute(ctx, e.ID)
	if err != nil || again.Removed["events"] != physical["events"] {
		t.Fatalf("second execution: %+v %v", again, err)
	}
	if left, _ := Remaining(ctx, db, gone); sum(left) != 0 {
		t.Fatalf("rows back after an aggregator tick: %v", left)
	}
	erased, err := ErasedCustomers(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := erased[gone]; !ok {
		t.Fatalf("%s not among the erased customers", gone)
	}
	if _, ok := erased[keepA]; ok {
		t.Fatalf("%s among the erased customers", keepA)
	}
}

func sum(m map[string]uint64) uint64 {
	var s uint64
	for _, v := range m {
		s += v
	}
	return s
}

func mustTables(t testing.TB, db store.Conn) []Table {
	t.Helper()
	tables, err := Tables(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return tables
}

// TestErasedCustomerNotRecreatedByRedelivery erases a customer, then
// re-delivers its old events through Kafka (as after a consumer-group reset
// or a gateway's late retry) beside another customer's events: the sink
// stores the other customer's events and drops the erased one's, counting
// them.
func TestErasedCustomerNotRecreatedByRedelivery(t *testing.T) {
	db := engine.Require(t)
	brokers := testenv.KafkaBrokers(t)
	ctx := ctxT(t)
	gone, other := testenv.Unique("gone"), testenv.Unique("other")
	now := time.Now().UTC()
	var goneMsgs, otherMsgs []kafka.Message
	for i := 0; i < 200; i++ {
		for _, c := range []struct {
			customer string
			dst      *[]kafka.Message
		}{{gone, &goneMsgs}, {other, &otherMsgs}} {
			ev := schemas.Event{ID: fmt.Sprintf("%s-%d", c.customer, i), Time: now.Add(-time.Duration(i) * time.Minute),
				APIKeyID: c.customer + "-key", CustomerID: c.customer, Method: "GET", Route: "/r", Status: 200}
			b, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			*c.dst = append(*c.dst, kafka.Message{Key: []byte(ev.APIKeyID), Value: b})
		}
	}
	// The customer's events were stored once, then it was erased.
	k := ingest.KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 3}.WithDefaults()
	if err := ingest.EnsureTopics(ctx, k); err != nil {
		t.Fatal(err)
	}
	w := testenv.Writer(t, brokers, k.Topic)
	if err := w.WriteMessages(ctx, goneMsgs...); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	bl := NewBlocklist(fastConfig(), db, reg, testenv.Log())
	stop := runSink(t, k, db, bl, reg)
	testenv.Eventually(t, time.Minute, func() error {
		if n := count(t, db, "SELECT count() FROM events FINAL WHERE customer_id = {c:String}", store.P("c", gone)); n != 200 {
			return fmt.Errorf("%d of 200 events stored", n)
		}
		return nil
	})
	svc := NewService(fastConfig(), db, nil, testenv.Log())
	req, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	blCtx, stopBL := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = bl.Run(blCtx) }()
	defer func() { stopBL(); wg.Wait() }()
	if e, err := svc.Execute(ctx, req.ID); err != nil || e.Removed["events"] != 200 {
		t.Fatalf("erasure: %+v %v", e, err)
	}
	if !bl.Erased(gone) {
		t.Fatal("the running blocklist does not list the erased customer")
	}

	// Redelivery of every old event, and the other customer's traffic.
	if err := w.WriteMessages(ctx, append(goneMsgs, otherMsgs...)...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, func() error {
		if n := count(t, db, "SELECT count() FROM events FINAL WHERE customer_id = {c:String}", store.P("c", other)); n != 200 {
			return fmt.Errorf("%d of the other customer's 200 events stored", n)
		}
		if v := metricValue(t, reg, "meterline_sink_erased_events_dropped_total"); v != 200 {
			return fmt.Errorf("dropped %v of the 200 redelivered events", v)
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
		t.Fatalf("%d events of the erased customer stored again", n)
	}
	// A new sink process loads the list before consuming: a consumer group
	// reset re-reads everything, and nothing of the customer comes back.
	bl2 := NewBlocklist(fastConfig(), db, nil, testenv.Log())
	if err := bl2.Load(ctx); err != nil || !bl2.Erased(gone) {
		t.Fatalf("fresh blocklist: erased=%v err=%v", bl2.Erased(gone), err)
	}
}

// metricValue reads a counter or gauge without labels from reg (0 when absent).
func metricValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func runSink(t *testing.T, k ingest.KafkaConfig, db store.Conn, bl *Blocklist, reg *prometheus.Registry) func() error {
	t.Helper()
	return runSinkResolving(t, k, db, bl, reg, nil)
}

// runSinkResolving is runSink with the sink resolving missing customer ids
// from r (nil: none).
func runSinkResolving(t *testing.T, k ingest.KafkaConfig, db store.Conn, bl *Blocklist, reg *prometheus.Registry, r ingest.CustomerResolver) func() error {
	t.Helper()
	if err := bl.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err := ingest.NewSink(ingest.SinkConfig{GroupID: testenv.Unique("sink"), BatchSize: 100, FlushInterval: 100 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond}, k, schemas.Options{}, ingest.Anonymizer{}, db, reg, testenv.Log())
	if err != nil {
		t.Fatal(err)
	}
	s.DropErased(bl)
	if r != nil {
		s.ResolveCustomers(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(time.Minute):
				result = errors.New("sink did not stop")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// TestScheduledAccountDeletion: an account deletion waits for its grace
// period, runs when due, and can be cancelled only while scheduled.
func TestScheduledAccountDeletion(t *testing.T) {
	db := engine.Require(t)
	ctx := ctxT(t)
	c1, c2 := testenv.Unique("closed"), testenv.Unique("back")
	insertEvents(t, db, c1, c1+"-k", 10, time.Now().UTC().Add(-time.Hour), time.Second)
	insertEvents(t, db, c2, c2+"-k", 10, time.Now().UTC().Add(-time.Hour), time.Second)
	stored := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", c1))
	svc := NewService(fastConfig(), db, nil, testenv.Log())
	delay := 90 * 24 * time.Hour
	e1, err := svc.Request(ctx, Request{CustomerID: c1, RequestedBy: "billing-portal", Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	e2, err := svc.Request(ctx, Request{CustomerID: c2, RequestedBy: "billing-portal", Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	if e1.Status != StatusScheduled || e1.Kind != KindAccountDeletion || !e1.NotBefore.Equal(e1.RequestedAt.Add(delay)) {
		t.Fatalf("scheduled request: %+v", e1)
	}
	if _, err := svc.RunDue(ctx); err != nil {
		t.Fatal(err)
	}
	if e, _ := svc.Get(ctx, e1.ID); e.Status != StatusScheduled {
		t.Fatalf("ran before its time: %+v", e)
	}
	if _, err := svc.Cancel(ctx, e2.ID, "support"); err != nil {
		t.Fatal(err)
	}
	svc.now = func() time.Time { return time.Now().Add(delay + time.Hour) }
	if _, err := svc.RunDue(ctx); err != nil {
		t.Fatal(err)
	}
	if e, _ := svc.Get(ctx, e1.ID); e.Status != StatusDone || e.Removed["events"] != stored {
		t.Fatalf("after the grace period: %+v", e)
	}
	if e, _ := svc.Get(ctx, e2.ID); e.Status != StatusCancelled {
		t.Fatalf("cancelled request: %+v", e)
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", c2)); n != stored {
		t.Fatalf("the cancelled customer has %d rows, want %d", n, stored)
	}
	if _, err := svc.Cancel(ctx, e1.ID, "support"); !errors.Is(err, ErrNotCancellable) {
		t.Fatalf("cancelling a done erasure: %v", err)
	}
	if _, err := svc.Get(ctx, "er_nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestRequestValidation(t *testing.T) {
	for _, r := range []Request{
		{},
		{CustomerID: "a\x00b"},
		{CustomerID: strings.Repeat("x", 129)},
		{CustomerID: "ok", Reason: strings.Repeat("r", 1001)},
		{CustomerID: "ok", Delay: -time.Second},
		{CustomerID: "ok", RequestedBy: "bad\nname"},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("request %+v accepted", r)
		}
	}
	for _, s := range []Subject{{}, {CustomerID: "\xff"}, {APIKeyID: strings.Repeat("k", 200)}} {
		if err := s.Validate(); err == nil {
			t.Errorf("subject %+v accepted", s)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Error("format xml accepted")
	}
	if err := (Config{ErasedRefresh: time.Nanosecond, ErasureCheckInterval: time.Hour}).Validate(); err == nil {
		t.Error("erased_refresh 1ns accepted")
	}
}

// exportLines runs an NDJSON export and returns rows per table and the
// summary.
func exportNDJSON(t testing.TB, db store.Conn, s Subject, sliceRows uint64) (map[string]int, map[string]any, []map[string]any) {
	t.Helper()
	ex, err := Plan(ctxT(t), db, s, sliceRows)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var calls int
	res, err := ex.Write(ctxT(t), &buf, NDJSON, func(Progress) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Error("no progress reported")
	}
	if bytes.Contains(buf.Bytes(), []byte(`\/`)) {
		t.Errorf("the NDJSON export escapes slashes (a route reads \\/v1\\/pets):\n%.300s", buf.String())
	}
	per := map[string]int{}
	var summary map[string]any
	var rows []map[string]any
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Table string         `json:"table"`
			Row   map[string]any `json:"row"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.Table == "_summary" {
			summary = line.Row
			continue
		}
		if summary != nil {
			t.Fatal("a row after the summary")
		}
		per[line.Table]++
		line.Row["_table"] = line.Table
		rows = append(rows, line.Row)
	}
	if summary == nil || summary["complete"] != true {
		t.Fatalf("no complete summary: %v", summary)
	}
	if uint64(summary["total"].(float64)) != res.Total {
		t.Fatalf("summary total %v, result %d", summary["total"], res.Total)
	}
	return per, summary, rows
}

// TestExportMatchesTables exports a customer (by customer, by key) as
// NDJSON and as a zip of CSVs, with slices small enough that hours are cut
// into minutes, and compares each table's rows with the table itself.
func TestExportMatchesTables(t *testing.T) {
	db := engine.Require(t)
	ctx := ctxT(t)
	cust, other := testenv.Unique("exp"), testenv.Unique("exp-other")
	start := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)
	insertEvents(t, db, cust, cust+"-k1", 700, start, 3*time.Second) // 700 in ~35 min: one busy hour
	insertEvents(t, db, cust, cust+"-k2", 50, start.Add(-72*time.Hour), time.Hour)
	insertEvents(t, db, other, other+"-k1", 100, start, time.Second)
	insertAlert(t, db, cust)
	insertAccounting(t, db, cust)
	if _, err := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, nil, testenv.Log()).Tick(ctx); err != nil {
		t.Fatal(err)
	}
	tables := mustTables(t, db)
	want := map[string]int{}
	for _, tb := range tables {
		if n := count(t, db, "SELECT count() FROM "+from(tb)+" WHERE customer_id = {c:String}", store.P("c", cust)); n > 0 {
			want[tb.Name] = int(n)
		}
	}
	if want["events"] != 750 || want["usage_minute"] == 0 || want["usage_key_minute"] == 0 || want["usage_key_month"] == 0 || want["alert_deliveries"] != 1 {
		t.Fatalf("fixture: %v", want)
	}

	per, summary, rows := exportNDJSON(t, db, Subject{CustomerID: cust}, 100)
	for table, n := range want {
		if per[table] != n {
			t.Errorf("ndjson %s: %d rows, table has %d", table, per[table], n)
		}
	}
	for _, r := range rows {
		if r["customer_id"] != cust {
			t.Fatalf("row of another customer exported: %v", r)
		}
		if r["_table"] == "usage_hour" {
			if _, ok := r["latency"].([]any); !ok {
				t.Fatalf("usage_hour row without finalised latency quantiles: %v", r)
			}
		}
		if r["_table"] == "events" {
			if _, err := time.Parse(time.RFC3339, r["time"].(string)); err != nil {
				t.Fatalf("event time %v is not RFC 3339: %v", r["time"], err)
			}
		}
	}
	if summary["customer_id"] != cust {
		t.Fatalf("summary %v", summary)
	}

	// By key: only tables with api_key_id, only that key's rows.
	perKey, _, keyRows := exportNDJSON(t, db, Subject{APIKeyID: cust + "-k2"}, 0)
	if perKey["events"] != 50 || perKey["alert_deliveries"] != 0 {
		t.Fatalf("export by key: %v", perKey)
	}
	for _, r := range keyRows {
		if r["api_key_id"] != cust+"-k2" {
			t.Fatalf("row of another key: %v", r)
		}
	}

	// Zip of CSVs.
	ex, err := Plan(ctx, db, Subject{CustomerID: cust}, 100)
	if err != nil {
		t.Fatal(err)
	}
	ex.Records = []Record{{Table: "catalogue", Row: map[string]any{"id": cust, "plan": "starter"}}}
	var buf bytes.Buffer
	res, err := ex.Write(ctx, &buf, ZipCSV, nil)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	for _, f := range zr.File {
		files[f.Name] = true
		if !strings.HasSuffix(f.Name, ".csv") {
			continue
		}
		rc, _ := f.Open()
		recs, err := csv.NewReader(rc).ReadAll()
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		table := strings.TrimSuffix(f.Name, ".csv")
		if len(recs)-1 != want[table] || uint64(len(recs)-1) != res.Rows[table] {
			t.Errorf("%s: %d data lines, table has %d, result says %d", f.Name, len(recs)-1, want[table], res.Rows[table])
		}
		if len(recs) > 1 && len(recs[0]) != len(recs[1]) {
			t.Errorf("%s: header has %d fields, rows %d", f.Name, len(recs[0]), len(recs[1]))
		}
	}
	if !files["summary.json"] || !files["catalogue.json"] || !files["events.csv"] {
		t.Fatalf("zip files: %v", files)
	}
}

// countingWriter counts lines and bytes without keeping them.
type countingWriter struct{ lines, bytes atomic.Int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.bytes.Add(int64(len(p)))
	c.lines.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}

// TestExportMillionEvents exports a customer with 1,000,000 raw events and
// reports the Go heap's peak while streaming (the engine's own memory is
// not in it). The counts must match the table.
func TestExportMillionEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	db := engine.Require(t)
	ctx := ctxT(t)
	cust := testenv.Unique("million")
	err := db.Exec(ctx, `INSERT INTO events (id, time, api_key_id, customer_id, gateway, method, route, status, latency_ms,
 request_bytes, response_bytes, client_ip, user_agent, units, properties, kafka_partition, kafka_offset, ingested_at)
SELECT concat('m-', toString(number)), now64(3) - toIntervalSecond(number % 2000000), concat({c:String}, '-k', toString(number % 7)),
 {c:String}, 'gw', 'GET', '/v1/items', 200, 10, 100, 2000, '198.51.100.0', 'okhttp/4.12', 1, map('tier', 'gold'), 0, number, now64(3)
FROM numbers(1000000)`, store.P("c", cust))
	if err != nil {
		t.Fatal(err)
	}
	want := count(t, db, "SELECT count() FROM events FINAL WHERE customer_id = {c:String}", store.P("c", cust))
	if want != 1_000_000 {
		t.Fatalf("fixture holds %d events", want)
	}
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	ex, err := Plan(ctx, db, Subject{CustomerID: cust}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var w countingWriter
	res, err := ex.Write(ctx, &w, NDJSON, nil)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows["events"] != want || ex.Rows != want {
		t.Fatalf("exported %d events (planned %d), table has %d", res.Rows["events"], ex.Rows, want)
	}
	if got := w.lines.Load(); got != int64(want)+1 {
		t.Fatalf("%d lines, want %d rows + summary", got, want)
	}
	slices := 0
	for _, tp := range ex.Tables {
		slices += len(tp.slices)
	}
	t.Logf("1,000,000 events: %d slices, %.1f MB NDJSON in %s, Go heap peak %.1f MB",
		slices, float64(w.bytes.Load())/1e6, time.Since(t0).Round(time.Millisecond), float64(peak.Load())/1e6)
	if err := db.Exec(ctx, "ALTER TABLE events DELETE WHERE customer_id = {c:String} SETTINGS mutations_sync = 2", store.P("c", cust)); err != nil {
		t.Fatal(err)
	}
}

// TestExportCutsBusyMinutesIntoSeconds: a minute with more rows than a
// slice is read second by second, so a burst does not make one huge read.
func TestExportCutsBusyMinutesIntoSeconds(t *testing.T) {
	db := engine.Require(t)
	cust := testenv.Unique("burst")
	start := time.Now().UTC().Add(-time.Hour).Truncate(time.Minute)
	insertEvents(t, db, cust, cust+"-k", 500, start, 100*time.Millisecond) // 500 rows in 50 s
	ex, err := Plan(ctxT(t), db, Subject{CustomerID: cust}, 30)
	if err != nil {
		t.Fatal(err)
	}
	var events TablePlan
	for _, tp := range ex.Tables {
		if tp.Table.Name == "events" {
			events = tp
		}
	}
	if events.Rows != 500 || len(events.slices) < 500/30 {
		t.Fatalf("planned %d rows in %d slices", events.Rows, len(events.slices))
	}
	for i, sl := range events.slices {
		if sl.rows > 30 {
			t.Errorf("slice %d holds %d rows", i, sl.rows)
		}
		if i > 0 && !sl.lo.Equal(events.slices[i-1].hi) {
			t.Errorf("slice %d starts at %s, the previous ends at %s", i, sl.lo, events.slices[i-1].hi)
		}
	}
	per, _, _ := exportNDJSON(t, db, Subject{CustomerID: cust}, 30)
	if per["events"] != 500 {
		t.Fatalf("exported %d events", per["events"])
	}
}

// TestEraseWhileEventsFlow erases a customer while its events and another
// customer's keep flowing through Kafka into the sink and an aggregator
// keeps rolling them up: once the erasure is done nothing of the customer
// is left or comes back, and every event of the other customer is stored
// and counted once.
func TestEraseWhileEventsFlow(t *testing.T) {
	db := engine.Require(t)
	brokers := testenv.KafkaBrokers(t)
	ctx := ctxT(t)
	gone, other := testenv.Unique("flow-gone"), testenv.Unique("flow-other")
	k := ingest.KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 3}.WithDefaults()
	if err := ingest.EnsureTopics(ctx, k); err != nil {
		t.Fatal(err)
	}
	w := testenv.Writer(t, brokers, k.Topic)
	cfg := Config{ErasedRefresh: 200 * time.Millisecond, ErasureCheckInterval: time.Hour}
	reg := prometheus.NewRegistry()
	bl := NewBlocklist(cfg, db, reg, testenv.Log())
	stopSink := runSink(t, k, db, bl, reg)
	runCtx, stopAll := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = bl.Run(runCtx) }()
	agg := aggregate.NewAggregator(aggregate.Config{Interval: 150 * time.Millisecond, Settle: time.Millisecond}, db, nil, testenv.Log())
	go func() { defer wg.Done(); _ = agg.Run(runCtx) }()

	// Producer: batches of 20 events per customer every 20 ms.
	var otherSent atomic.Int64
	stopProducing := make(chan struct{})
	produced := make(chan error, 1)
	go func() {
		now := time.Now().UTC()
		for batch := 0; ; batch++ {
			select {
			case <-stopProducing:
				produced <- nil
				return
			default:
			}
			var msgs []kafka.Message
			for i := 0; i < 20; i++ {
				for _, c := range []string{gone, other} {
					ev := schemas.Event{ID: fmt.Sprintf("%s-%d-%d", c, batch, i), Time: now.Add(-time.Duration(i) * time.Second),
						APIKeyID: c + "-key", CustomerID: c, Method: "GET", Route: "/r", Status: 200, Units: 1}
					b, _ := json.Marshal(ev)
					msgs = append(msgs, kafka.Message{Key: []byte(ev.APIKeyID), Value: b})
				}
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				produced <- err
				return
			}
			otherSent.Add(20)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	testenv.Eventually(t, time.Minute, func() error {
		select {
		case err := <-produced:
			t.Fatalf("producer stopped: %v", err)
		default:
		}
		if n := count(t, db, "SELECT count() FROM usage_minute FINAL WHERE customer_id = {c:String}", store.P("c", gone)); n == 0 {
			stored := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", gone))
			return fmt.Errorf("no rollups of the customer yet (%d raw events stored, %d of the other customer's sent)", stored, otherSent.Load())
		}
		return nil
	})
	svc := NewService(cfg, db, nil, testenv.Log())
	req, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Execute(ctx, req.ID)
	if err != nil || e.Status != StatusDone || e.Removed["events"] == 0 {
		t.Fatalf("erasure while events flow: %+v %v", e, err)
	}
	// Keep the flow going a little past the erasure, then drain.
	time.Sleep(time.Second)
	close(stopProducing)
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	want := uint64(otherSent.Load())
	testenv.Eventually(t, time.Minute, func() error {
		if n := count(t, db, "SELECT count() FROM events FINAL WHERE customer_id = {c:String}", store.P("c", other)); n != want {
			return fmt.Errorf("%d of the other customer's %d events stored", n, want)
		}
		if n := count(t, db, "SELECT sum(requests) FROM usage_minute FINAL WHERE customer_id = {c:String}", store.P("c", other)); n != want {
			return fmt.Errorf("other customer's rollups count %d of %d", n, want)
		}
		return nil
	})
	stopAll()
	wg.Wait()
	if err := stopSink(); err != nil {
		t.Fatal(err)
	}
	if _, err := agg.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	left, err := Remaining(ctx, db, gone)
	if err != nil {
		t.Fatal(err)
	}
	if sum(left) != 0 {
		t.Fatalf("rows of the erased customer after the flow: %v", left)
	}
	if v := metricValue(t, reg, "meterline_sink_erased_events_dropped_total"); v == 0 {
		t.Fatal("the sink dropped none of the erased customer's events that kept arriving")
	}
}
