package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// sinkFixture is a sink on topics of its own, consuming into the shared engine.
type sinkFixture struct {
	k      KafkaConfig
	writer *kafka.Writer
	group  string
}

func newSinkFixture(t *testing.T) *sinkFixture {
	t.Helper()
	brokers := testenv.KafkaBrokers(t)
	k := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 3}.WithDefaults()
	if err := EnsureTopics(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return &sinkFixture{k: k, writer: testenv.Writer(t, brokers, k.Topic), group: testenv.Unique("sink")}
}

// produce writes raw messages as a gateway producing straight to Kafka would.
func (f *sinkFixture) produce(t testing.TB, key string, values ...[]byte) {
	t.Helper()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Key: []byte(key), Value: v}
	}
	if err := f.writer.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// run starts a sink over db and returns a stop function that waits for it.
func (f *sinkFixture) run(t *testing.T, db store.Conn, reg *prometheus.Registry) (stop func() error) {
	t.Helper()
	s, err := NewSink(SinkConfig{GroupID: f.group, BatchSize: 128, FlushInterval: 200 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, LagInterval: 100 * time.Millisecond},
		f.k, schemas.Options{}, Anonymizer{}, db, reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(60 * time.Second):
				result = errors.New("sink did not stop within 60s")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func eventJSON(t testing.TB, id, key string, mut ...func(map[string]any)) []byte {
	t.Helper()
	ev := validEvent(id, key)
	for _, m := range mut {
		m(ev)
	}
	return mustJSON(t, ev)
}

func waitStored(t *testing.T, db store.Conn, key string, want uint64) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		_, final, _ := countStored(t, db, key)
		if final != want {
			return fmt.Errorf("%d events stored for %s, want %d", final, key, want)
		}
		return nil
	})
}

// TestSinkStoresOnceAndDeadLettersInvalid produces valid events, exact
// duplicates (as a retrying gateway or a Kafka redelivery makes them) and
// invalid messages straight to Kafka.
func TestSinkStoresOnceAndDeadLettersInvalid(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 500; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("e-%d", i), key))
	}
	for i := 0; i < 100; i++ { // duplicates, some in the same batch, some far apart
		values = append(values, values[i*3])
	}
	invalid := [][]byte{
		[]byte("not json"),
		eventJSON(t, "bad-status", key, func(m map[string]any) { m["status"] = 70000 }),
		eventJSON(t, "", key, func(m map[string]any) { delete(m, "id") }),
		eventJSON(t, "bad-ip", key, func(m map[string]any) { m["client_ip"] = "999.1.1.1" }),
		nil, // an empty value (a tombstone)
		eventJSON(t, "bad-huge", key, func(m map[string]any) { m["route"] = strings.Repeat("/x", 300_000) }),
		[]byte(`{"id":"bad-nested","properties":{"a":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}}`),
		append(eventJSON(t, "bad-trailing", key), []byte(`{"id":"x"}`)...),
	}
	f.produce(t, key, values...)
	f.produce(t, key, invalid...)
	reg := prometheus.NewRegistry()
	stop := f.run(t, db, reg)
	waitStored(t, db, key, 500)
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) != len(invalid) {
			return fmt.Errorf("%d dead letters, want %d", len(dead), len(invalid))
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_, final, distinct := countStored(t, db, key)
	if final != 500 || distinct != 500 {
		t.Fatalf("final %d distinct %d, want 500", final, distinct)
	}
	for _, d := range dead {
		reason := headerValue(d, HeaderError)
		src := headerValue(d, HeaderSource)
		if reason == "" || !strings.HasPrefix(src, f.k.Topic+"/") || headerValue(d, HeaderErrorReason) != "invalid" {
			t.Errorf("dead letter without reason or source: %q %q", reason, src)
		}
		switch {
		case strings.Contains(string(d.Value), "bad-huge") && !strings.Contains(reason, "route"),
			strings.Contains(string(d.Value), "bad-status") && !strings.Contains(reason, "status"),
			strings.Contains(string(d.Value), "bad-ip") && !strings.Contains(reason, "client_ip"):
			t.Errorf("reason %q does not name the field of %s", reason, d.Value)
		}
	}
	if got := testutil.ToFloat64(mustVec(reg, "meterline_sink_events_dead_lettered_total")); got != float64(len(invalid)) {
		t.Errorf("dead-letter metric %v, want %d", got, len(invalid))
	}
	// The sink anonymises what gateways produced directly, like the collector.
	rows, err := db.Query(context.Background(), "SELECT DISTINCT client_ip FROM events WHERE api_key_id = {k:String}", store.P("k", key))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var ip string
		_ = rows.Scan(&ip)
		if ip != "203.0.113.0" {
			t.Errorf("stored client_ip %q, want 203.0.113.0", ip)
		}
	}
}

// mustVec sums a metric family of reg by name.
func mustVec(reg *prometheus.Registry, name string) prometheus.Collector {
	return prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "sum", nil, nil), prometheus.GaugeValue, sum)
		}
	})
}

// faultyConn is a hand-written fault injector around the real engine: it
// fails inserts as a failing ClickHouse would, and otherwise passes through.
type faultyConn struct {
	store.Conn
	failFirst atomic.Int32 // this many inserts fail as unavailable
	poisonID  string       // inserts holding this id fail as a data error
	inserts   atomic.Int32
}

func (c *faultyConn) Insert(ctx context.Context, table string, cols []string, rows [][]any, o store.InsertOptions) error {
	c.inserts.Add(1)
	if c.failFirst.Add(-1) >= 0 {
		return fmt.Errorf("injected: connection refused: %w", store.ErrUnavailable)
	}
	if c.poisonID != "" {
		for _, r := range rows {
			if r[0] == c.poisonID {
				return errors.New("injected: Code: 53. Type mismatch")
			}
		}
	}
	return c.Conn.Insert(ctx, table, cols, rows, o)
}

// TestSinkRetriesWhileClickHouseFails makes the first inserts fail: the sink
// retries with backoff and stores everything once, without moving offsets
// past what was not stored.
func TestSinkRetriesWhileClickHouseFails(t *testing.T) {
	db := &faultyConn{Conn: requireDB(t)}
	db.failFirst.Store(5)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 300; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("r-%d", i), key))
	}
	f.produce(t, key, values...)
	reg := prometheus.NewRegistry()
	stop := f.run(t, db, reg)
	waitStored(t, db, key, 300)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rows, final, _ := countStored(t, db, key)
	if rows != 300 || final != 300 {
		t.Fatalf("rows %d final %d, want 300 each (a retried batch must not be stored twice)", rows, final)
	}
	if got := testutil.ToFloat64(mustVec(reg, "meterline_sink_retries_total")); got < 5 {
		t.Errorf("retries metric %v, want >= 5", got)
	}
}

// TestSinkDeadLettersUnstorableRows makes one event fail every insert as a
// data error: it goes to the dead-letter topic, the others are stored.
func TestSinkDeadLettersUnstorableRows(t *testing.T) {
	db := &faultyConn{Conn: requireDB(t), poisonID: "poison"}
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 50; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("p-%d", i), key))
	}
	values = append(values, eventJSON(t, "poison", key))
	f.produce(t, key, values...)
	stop := f.run(t, db, prometheus.NewRegistry())
	waitStored(t, db, key, 50)
	waitFor(t, 30*time.Second, func() error {
		dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) != 1 || headerValue(dead[0], HeaderErrorReason) != "unstorable" || !strings.Contains(string(dead[0].Value), "poison") {
			return fmt.Errorf("dead letters: %d", len(dead))
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestSinkResumesFromCommittedOffsets stops a sink and starts another in the
// same group: it reads only what came after, so nothing is stored twice.
func TestSinkResumesFromCommittedOffsets(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	batch := func(from, n int) [][]byte {
		var v [][]byte
		for i := from; i < from+n; i++ {
			v = append(v, eventJSON(t, fmt.Sprintf("c-%d", i), key))
		}
		return v
	}
	f.produce(t, key, batch(0, 200)...)
	stop := f.run(t, db, prometheus.NewRegistry())
	waitStored(t, db, key, 200)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	f.produce(t, key, batch(200, 200)...)
	stop = f.run(t, db, prometheus.NewRegistry())
	waitStored(t, db, key, 400)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rows, _, _ := countStored(t, db, key)
	if rows != 400 {
		t.Fatalf("%d physical rows, want 400: the second sink re-read committed events", rows)
	}
}

// TestSinkResolvesMissingCustomer fills customer_id from the catalogue
// when the event has none, keeps one that names the key's owner, stores
// an unknown key's event unassigned whatever it claims, and dead-letters
// an event that names another customer (the catalogue decides, not the
// producer).
func TestSinkResolvesMissingCustomer(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	noCustomer := func(m map[string]any) { delete(m, "customer_id") }
	claims := func(c string) func(map[string]any) { return func(m map[string]any) { m["customer_id"] = c } }
	f.produce(t, key,
		eventJSON(t, "rc-1", key, noCustomer),
		eventJSON(t, "rc-2", key, claims("acme")),
		eventJSON(t, "rc-3", key+"-unknown", noCustomer),
		eventJSON(t, "rc-4", key+"-unknown", claims("globex")),
		eventJSON(t, "rc-5", key), // claims cust-1, which does not hold the key
	)
	s, err := NewSink(SinkConfig{GroupID: f.group, FlushInterval: 100 * time.Millisecond}, f.k, schemas.Options{}, Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	s.ResolveCustomers(catalogueOf(t, "acme", key))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitStored(t, db, key, 2)
	waitStored(t, db, key+"-unknown", 2)
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		if dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 1 {
			return fmt.Errorf("%d dead letters, want 1", len(dead))
		}
		return nil
	})
	cancel()
	<-done
	rows, err := db.Query(context.Background(), "SELECT id, customer_id FROM events FINAL WHERE api_key_id IN ({a:String}, {b:String}) ORDER BY id",
		store.P("a", key), store.P("b", key+"-unknown"))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var id, c string
		_ = rows.Scan(&id, &c)
		got[id] = c
	}
	want := map[string]string{"rc-1": "acme", "rc-2": "acme", "rc-3": "", "rc-4": ""}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("customer ids: %v, want %v", got, want)
	}
	if !strings.Contains(string(dead[0].Value), `"rc-5"`) || headerValue(dead[0], HeaderErrorReason) != DeadLetterOwnership ||
		!strings.Contains(headerValue(dead[0], HeaderError), `"cust-1" does not hold api_key_id`) {
		t.Fatalf("dead letter %s, class %q, reason %q", dead[0].Value, headerValue(dead[0], HeaderErrorReason), headerValue(dead[0], HeaderError))
	}
}

// gaugeByLabel reads a gauge vector from reg: label value -> value.
func gaugeByLabel(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			label := ""
			for _, lp := range m.GetLabel() {
				label = lp.GetValue()
			}
			out[label] = m.GetGauge().GetValue()
		}
	}
	return out
}

// TestSinkReportsCommittedLag: the lag gauge counts messages whose offsets
// are not committed, per partition, so events read but not yet stored (an
// engine that keeps failing) still count as lag, and it drops to 0 once
// they are stored.
func TestSinkReportsCommittedLag(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	keys := []string{testenv.Unique("key"), testenv.Unique("key"), testenv.Unique("key")}
	for _, key := range keys {
		var values [][]byte
		for i := 0; i < 100; i++ {
			values = append(values, eventJSON(t, fmt.Sprintf("l-%d", i), key))
		}
		f.produce(t, key, values...)
	}
	conn := &faultyConn{Conn: db}
	conn.failFirst.Store(1 << 30) // ClickHouse down until further notice
	reg := prometheus.NewRegistry()
	f.run(t, conn, reg)
	waitFor(t, 30*time.Second, func() error {
		if conn.inserts.Load() < 2 {
			return errors.New("no insert attempted yet")
		}
		lag := gaugeByLabel(t, reg, "meterline_sink_consumer_lag_messages")
		var sum float64
		for _, v := range lag {
			sum += v
		}
		if len(lag) != 3 || sum != 300 {
			return fmt.Errorf("lag gauge %v, want 300 over 3 partitions while nothing is stored", lag)
		}
		return nil
	})
	conn.failFirst.Store(0) // ClickHouse is back
	for _, key := range keys {
		waitStored(t, db, key, 100)
	}
	waitFor(t, 30*time.Second, func() error {
		lag := gaugeByLabel(t, reg, "meterline_sink_consumer_lag_messages")
		for p, v := range lag {
			if v != 0 {
				return fmt.Errorf("partition %s: lag %v after everything was stored", p, v)
			}
		}
		return nil
	})
	c := testenv.KafkaClient(f.k.Brokers)
	lag, err := GroupLag(context.Background(), c, f.group, f.k.Topic)
	if err != nil || TotalLag(lag) != 0 {
		t.Fatalf("GroupLag = %v, %v; want 0", lag, err)
	}
}

// TestSinkFlushesBatchInHandOnStop: a stop request (SIGTERM in serve)
// stores and commits the batch the sink has read but not yet flushed,
// instead of leaving it to be re-read.
func TestSinkFlushesBatchInHandOnStop(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 300; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("s-%d", i), key))
	}
	f.produce(t, key, values...)
	// Neither the size (10,000) nor the time (10 minutes) would flush it.
	s, err := NewSink(SinkConfig{GroupID: f.group, BatchSize: 10000, FlushInterval: 10 * time.Minute}, f.k, schemas.Options{}, Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var read int64
	waitFor(t, 60*time.Second, func() error {
		if read += s.reader.Stats().Messages; read < 300 { // Stats counts since its last call
			return fmt.Errorf("the sink has read %d of 300 messages", read)
		}
		return nil
	})
	if _, final, _ := countStored(t, db, key); final != 0 {
		t.Fatalf("%d events stored before the stop: the batch was not held", final)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the sink did not stop")
	}
	if rows, final, distinct := countStored(t, db, key); rows != 300 || final != 300 || distinct != 300 {
		t.Fatalf("after the stop: %d rows, %d final, %d distinct; want the 300 read", rows, final, distinct)
	}
	c := testenv.KafkaClient(f.k.Brokers)
	lag, err := GroupLag(context.Background(), c, f.group, f.k.Topic)
	if err != nil || TotalLag(lag) != 0 {
		t.Fatalf("committed lag after the stop: %v, %v; want 0", lag, err)
	}
}
