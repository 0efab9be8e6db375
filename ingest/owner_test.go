package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// catalogueOf is a real catalogue registry giving each key to a customer:
// pairs of customer id, key.
func catalogueOf(t testing.TB, pairs ...string) *limits.Registry {
	t.Helper()
	var b strings.Builder
	b.WriteString("plans: [{id: p}]\ncustomers:\n")
	seen := map[string]bool{}
	for i := 0; i+1 < len(pairs); i += 2 {
		if seen[pairs[i]] {
			continue
		}
		seen[pairs[i]] = true
		var keys []string
		for j := i; j+1 < len(pairs); j += 2 {
			if pairs[j] == pairs[i] {
				keys = append(keys, pairs[j+1])
			}
		}
		fmt.Fprintf(&b, "  - id: %q\n    plan: p\n    keys: [%s]\n", pairs[i], strings.Join(keys, ", "))
	}
	return registryFrom(t, b.String())
}

func registryFrom(t testing.TB, yaml string) *limits.Registry {
	t.Helper()
	c, err := limits.ParseCatalogue([]byte(yaml))
	if err != nil {
		t.Fatalf("catalogue: %v\n%s", err, yaml)
	}
	return limits.NewRegistry(c)
}

// ownerSink runs a sink over f's topic that resolves customers from r
// with the given unknown-key policy.
func ownerSink(t *testing.T, f *sinkFixture, db store.Conn, r KeyOwners, policy UnknownKeys) (stop func()) {
	t.Helper()
	s, err := NewSink(SinkConfig{GroupID: f.group, FlushInterval: 100 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond},
		f.k, schemas.Options{}, Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	s.ResolveCustomers(r)
	s.SetUnknownKeys(policy)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sink: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// storedCustomers maps id -> customer_id of the stored events of keys.
func storedCustomers(t testing.TB, db store.Conn, keys ...string) map[string]string {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT id, customer_id, gateway FROM events FINAL WHERE api_key_id IN {k:Array(String)} ORDER BY id", store.P("k", keys))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var id, c, gw string
		if err := rows.Scan(&id, &c, &gw); err != nil {
			t.Fatal(err)
		}
		got[id] = c
	}
	return got
}

// deadLetters waits until the dead-letter topic holds n messages.
func deadLetters(t *testing.T, f *sinkFixture, n int) []kafka.Message {
	t.Helper()
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		if dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != n {
			return fmt.Errorf("%d dead letters, want %d", len(dead), n)
		}
		return nil
	})
	return dead
}

// postBatch posts events as a JSON array and decodes the 202 answer.
func postBatch(t *testing.T, f *collectorFixture, token string, evs ...map[string]any) Response {
	t.Helper()
	resp, body := f.post(t, token, "application/json", mustJSON(t, evs))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func withCustomer(ev map[string]any, c string) map[string]any {
	if c == "" {
		delete(ev, "customer_id")
	} else {
		ev["customer_id"] = c
	}
	return ev
}

// topicIDs returns the ids of the events in the collector's topic.
func topicIDs(t *testing.T, f *collectorFixture) map[string]schemas.Event {
	t.Helper()
	out := map[string]schemas.Event{}
	for _, m := range topicMessages(t, f.brokers, f.kcfg.Topic) {
		ev, err := schemas.Options{}.DecodeEvent(m.Value, time.Now())
		if err != nil {
			t.Fatalf("message in the topic does not decode: %v", err)
		}
		out[ev.ID] = ev
	}
	return out
}

// TestCollectorRejectsForeignCustomer posts, in one batch, events of
// acme's key that name acme, name nobody, and name globex: the one that
// names globex is rejected with a reason, its neighbours are accepted and
// reach Kafka.
func TestCollectorRejectsForeignCustomer(t *testing.T) {
	f := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	key, other := testenv.Unique("key_demo"), testenv.Unique("key_globex")
	f.col.CheckOwners(catalogueOf(t, "acme", key, "globex", other), UnknownKeysAccept)
	r := postBatch(t, f, tokIngest,
		withCustomer(validEvent("fc-0", key), "acme"),
		withCustomer(validEvent("fc-1", key), "globex"),
		withCustomer(validEvent("fc-2", key), ""),
		withCustomer(validEvent("fc-3", other), "globex"),
	)
	if r.Accepted != 3 || len(r.Rejected) != 1 || r.Rejected[0].Index != 1 ||
		!strings.Contains(r.Rejected[0].Error, `event 1: field "customer_id": "globex" does not hold api_key_id`) {
		t.Fatalf("answer %+v, want 3 accepted and event 1 rejected for its customer_id", r)
	}
	if strings.Contains(r.Rejected[0].Error, "acme") {
		t.Errorf("the rejection names the key's owner: %q", r.Rejected[0].Error)
	}
	ids := topicIDs(t, f)
	if len(ids) != 3 || ids["fc-1"].ID != "" || ids["fc-0"].ID == "" || ids["fc-2"].ID == "" || ids["fc-3"].ID == "" {
		t.Fatalf("topic holds %v, want fc-0, fc-2, fc-3", ids)
	}
}

// TestUnknownKeysRejected: with events.unknown_keys: reject, an event of a
// key the catalogue does not know is rejected by the collector and
// dead-lettered by the sink; known neighbours are accepted and stored.
func TestUnknownKeysRejected(t *testing.T) {
	db := requireDB(t)
	key, unknown := testenv.Unique("key"), testenv.Unique("key-unknown")
	reg := catalogueOf(t, "acme", key)

	col := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	col.col.CheckOwners(reg, UnknownKeysReject)
	r := postBatch(t, col, tokIngest, withCustomer(validEvent("uk-0", unknown), ""), withCustomer(validEvent("uk-1", key), ""))
	if r.Accepted != 1 || len(r.Rejected) != 1 || r.Rejected[0].Index != 0 ||
		!strings.Contains(r.Rejected[0].Error, `field "api_key_id"`) || !strings.Contains(r.Rejected[0].Error, "events.unknown_keys: reject") {
		t.Fatalf("answer %+v, want the unknown key's event rejected", r)
	}

	f := newSinkFixture(t)
	f.produce(t, key, eventJSON(t, "uk-2", key, func(m map[string]any) { delete(m, "customer_id") }))
	f.produce(t, unknown, eventJSON(t, "uk-3", unknown), eventJSON(t, "uk-4", unknown, func(m map[string]any) { delete(m, "customer_id") }))
	stop := ownerSink(t, f, db, reg, UnknownKeysReject)
	waitStored(t, db, key, 1)
	dead := deadLetters(t, f, 2)
	stop()
	for _, d := range dead {
		if headerValue(d, HeaderErrorReason) != DeadLetterOwnership || !strings.Contains(headerValue(d, HeaderError), "belongs to no customer") {
			t.Errorf("dead letter %s: class %q reason %q", d.Value, headerValue(d, HeaderErrorReason), headerValue(d, HeaderError))
		}
	}
	if got := storedCustomers(t, db, key, unknown); fmt.Sprint(got) != fmt.Sprint(map[string]string{"uk-2": "acme"}) {
		t.Fatalf("stored %v, want only uk-2 for acme", got)
	}
}

// TestUnknownKeysAcceptedUnassigned: with events.unknown_keys: accept, the
// unknown key's events (whatever customer they claim) are accepted by the
// collector and stored unassigned by the sink, beside known ones.
func TestUnknownKeysAcceptedUnassigned(t *testing.T) {
	db := requireDB(t)
	key, unknown := testenv.Unique("key"), testenv.Unique("key-unknown")
	reg := catalogueOf(t, "acme", key)
	col := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	col.col.CheckOwners(reg, UnknownKeysAccept)
	if r := postBatch(t, col, tokIngest, withCustomer(validEvent("ua-0", unknown), "globex"), withCustomer(validEvent("ua-1", key), "")); r.Accepted != 2 {
		t.Fatalf("answer %+v, want both accepted", r)
	}
	f := newSinkFixture(t)
	f.produce(t, unknown, eventJSON(t, "ua-2", unknown), eventJSON(t, "ua-3", unknown, func(m map[string]any) { delete(m, "customer_id") }))
	f.produce(t, key, eventJSON(t, "ua-4", key, func(m map[string]any) { m["customer_id"] = "acme" }))
	stop := ownerSink(t, f, db, reg, UnknownKeysAccept)
	waitStored(t, db, unknown, 2)
	waitStored(t, db, key, 1)
	stop()
	want := map[string]string{"ua-2": "", "ua-3": "", "ua-4": "acme"}
	if got := storedCustomers(t, db, key, unknown); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
}

// TestSinkAttributesByEventTime: a key that moved from acme to globex at T
// bills acme for events before T and globex from T on, whenever they
// arrive; an event after T that still names acme is dead-lettered.
func TestSinkAttributesByEventTime(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key-moved")
	move := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	reg := registryFrom(t, fmt.Sprintf(`
plans: [{id: p}]
customers:
  - id: acme
    plan: p
    key_periods: [{key: %q, until: %s}]
  - id: globex
    plan: p
    key_periods: [{key: %q, from: %s}]
`, key, move.Format(time.RFC3339), key, move.Format(time.RFC3339)))
	at := func(d time.Duration, customer string) func(map[string]any) {
		return func(m map[string]any) {
			m["time"] = move.Add(d).Format(time.RFC3339Nano)
			withCustomer(m, customer)
		}
	}
	f.produce(t, key,
		eventJSON(t, "mv-0", key, at(-30*time.Minute, "")),
		eventJSON(t, "mv-1", key, at(-time.Millisecond, "acme")),
		eventJSON(t, "mv-2", key, at(0, "")),
		eventJSON(t, "mv-3", key, at(30*time.Minute, "globex")),
		eventJSON(t, "mv-4", key, at(time.Minute, "acme")),
	)
	stop := ownerSink(t, f, db, reg, UnknownKeysAccept)
	waitStored(t, db, key, 4)
	dead := deadLetters(t, f, 1)
	stop()
	want := map[string]string{"mv-0": "acme", "mv-1": "acme", "mv-2": "globex", "mv-3": "globex"}
	if got := storedCustomers(t, db, key); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	if !strings.Contains(string(dead[0].Value), `"mv-4"`) || headerValue(dead[0], HeaderErrorReason) != DeadLetterOwnership {
		t.Fatalf("dead letter %s (%s), want mv-4", dead[0].Value, headerValue(dead[0], HeaderError))
	}
}

// TestCollectorTokenBindings: a token bound to a gateway stores its
// gateway whatever the event says; a token bound to acme may send acme's
// keys only (another customer's key and an unknown key are rejected one
// by one). The sink stores the token's gateway.
func TestCollectorTokenBindings(t *testing.T) {
	db := requireDB(t)
	brokers := testenv.KafkaBrokers(t)
	f := newCollectorFixture(t, brokers, CollectorConfig{})
	tokens, err := auth.New([]auth.TokenConfig{
		{Name: "edge", SHA256: auth.Hash("bound-token"), Scopes: []string{"ingest"}, Gateway: "edge-eu-1", Customers: []string{"acme"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The fixture's collector with these tokens, on the same topic.
	col := NewCollector(CollectorConfig{}, schemas.Options{}, Anonymizer{}, tokens, f.writer, prometheus.NewRegistry(), quietLog())
	key, other, unknown := testenv.Unique("key-acme"), testenv.Unique("key-globex"), testenv.Unique("key-unknown")
	col.CheckOwners(catalogueOf(t, "acme", key, "globex", other), UnknownKeysAccept)
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	f.srv = srv

	spoofed := validEvent("tb-0", key)
	spoofed["gateway"] = "someone-else"
	r := postBatch(t, f, "bound-token",
		withCustomer(spoofed, ""),
		withCustomer(validEvent("tb-1", other), ""),
		withCustomer(validEvent("tb-2", unknown), ""),
		withCustomer(validEvent("tb-3", key), "acme"),
	)
	if r.Accepted != 2 || len(r.Rejected) != 2 || r.Rejected[0].Index != 1 || r.Rejected[1].Index != 2 ||
		!strings.Contains(r.Rejected[0].Error, `token "edge" may send events for`) || !strings.Contains(r.Rejected[1].Error, "belongs to no customer") {
		t.Fatalf("answer %+v, want events 1 and 2 rejected", r)
	}
	ids := topicIDs(t, f)
	if len(ids) != 2 || ids["tb-0"].Gateway != "edge-eu-1" || ids["tb-3"].Gateway != "edge-eu-1" {
		t.Fatalf("topic holds %+v, want tb-0 and tb-3 from gateway edge-eu-1", ids)
	}

	sf := &sinkFixture{k: f.kcfg, writer: f.writer, group: testenv.Unique("sink")}
	stop := ownerSink(t, sf, db, catalogueOf(t, "acme", key, "globex", other), UnknownKeysAccept)
	waitStored(t, db, key, 2)
	stop()
	n := testenv.Count(t, db, "SELECT count() FROM events FINAL WHERE api_key_id = {k:String} AND gateway = 'edge-eu-1' AND customer_id = 'acme'", store.P("k", key))
	if n != 2 {
		t.Fatalf("%d stored events of gateway edge-eu-1 for acme, want 2", n)
	}
}
