package privacy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// TestErasureCoversKeysWithoutCustomer erases a customer whose keys also
// have events stored without a customer_id (sent before the catalogue knew
// the key, or by a key only its events named): those rows go too, other
// customers' and unrelated keys' rows stay, and the keys are recorded with
// the erasure. Then the customer's catalogue entry is removed and its keys
// send events through Kafka, without customer_id and with it: the sink,
// which no longer resolves the keys to anyone, stores none of them.
func TestErasureCoversKeysWithoutCustomer(t *testing.T) {
	db := engine.Require(t)
	brokers := testenv.KafkaBrokers(t)
	ctx := ctxT(t)
	gone, other := testenv.Unique("gone"), testenv.Unique("other")
	// k1 and k3 are in the catalogue; k2 only in the customer's events;
	// k3 has no event with the customer id at all.
	k1, k2, k3, ko, stranger := gone+"-k1", gone+"-k2", gone+"-k3", other+"-k", testenv.Unique("stranger")
	start := time.Now().UTC().Add(-time.Hour)
	insertEvents(t, db, gone, k1, 20, start, time.Second)
	insertEvents(t, db, gone, k2, 10, start, time.Second)
	insertEvents(t, db, "", k1, 5, start, time.Second)
	insertEvents(t, db, "", k2, 3, start, time.Second)
	insertEvents(t, db, "", k3, 5, start, time.Second)
	insertEvents(t, db, other, ko, 10, start, time.Second)
	insertEvents(t, db, "", stranger, 4, start, time.Second)
	keysOf := func(c string) uint64 {
		return count(t, db, "SELECT count() FROM events WHERE api_key_id = {k:String}", store.P("k", c))
	}
	strangerBefore, otherBefore := keysOf(stranger), keysOf(ko)

	cat := func(withGone bool) *limits.Catalogue {
		c := &limits.Catalogue{Plans: []limits.Plan{{ID: "p", IncludedUnits: 100}},
			Customers: []limits.Customer{{ID: other, Plan: "p", Keys: []string{ko}}}}
		if withGone {
			c.Customers = append(c.Customers, limits.Customer{ID: gone, Plan: "p", Keys: []string{k1, k3}})
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	registry := limits.NewRegistry(cat(true))
	svc := NewService(fastConfig(), db, nil, testenv.Log())
	svc.CatalogueKeys(func(c string) []string {
		if cu, ok := registry.Customer(c); ok {
			return cu.Keys
		}
		return nil
	})
	req, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Execute(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{k1, k2, k3}; !slices.Equal(e.APIKeyIDs, want) {
		t.Fatalf("erasure recorded keys %v, want %v", e.APIKeyIDs, want)
	}
	for _, k := range []string{k1, k2, k3} {
		if n := keysOf(k); n != 0 {
			t.Errorf("%d rows of the erased customer's key %s left in events", n, k)
		}
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
		t.Errorf("%d rows of the erased customer left", n)
	}
	if a, b := keysOf(stranger), keysOf(ko); a != strangerBefore || b != otherBefore {
		t.Errorf("rows of other keys changed: stranger %d → %d, other customer %d → %d", strangerBefore, a, otherBefore, b)
	}
	if got, err := svc.Get(ctx, req.ID); err != nil || !slices.Equal(got.APIKeyIDs, e.APIKeyIDs) {
		t.Fatalf("stored erasure keys %v (%v), want %v", got.APIKeyIDs, err, e.APIKeyIDs)
	}

	// The customer's catalogue entry is removed; a new sink process loads
	// the blocklist from the erasure records alone.
	registry.Swap(cat(false))
	if _, ok := registry.CustomerOfKey(k1); ok {
		t.Fatal("k1 still in the catalogue")
	}
	k := ingest.KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 3}.WithDefaults()
	if err := ingest.EnsureTopics(ctx, k); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	bl := NewBlocklist(fastConfig(), db, reg, testenv.Log())
	stop := runSinkResolving(t, k, db, bl, reg, registry)
	blCtx, stopBL := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = bl.Run(blCtx) }()
	defer func() { stopBL(); wg.Wait() }()

	var msgs []kafka.Message
	sent := 0
	now := time.Now().UTC()
	add := func(key, customer string, n int) {
		for i := 0; i < n; i++ {
			ev := schemas.Event{ID: fmt.Sprintf("late-%s-%s-%d", key, customer, i), Time: now.Add(-time.Duration(i) * time.Second),
				APIKeyID: key, CustomerID: customer, Method: "GET", Route: "/r", Status: 200, ClientIP: "203.0.113.77"}
			b, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, kafka.Message{Key: []byte(key), Value: b})
		}
	}
	for _, key := range []string{k1, k2, k3} {
		add(key, "", 15)
		add(key, gone, 5)
		sent += 20
	}
	add(ko, "", 25)      // resolved to the other customer: stored
	add(stranger, "", 7) // unknown key: stored without a customer
	w := testenv.Writer(t, brokers, k.Topic)
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Minute, func() error {
		if v := metricValue(t, reg, "meterline_sink_erased_events_dropped_total"); v != float64(sent) {
			return fmt.Errorf("dropped %v of the %d events of the erased customer's keys", v, sent)
		}
		if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String} AND id LIKE 'late-%'", store.P("c", other)); n != 25 {
			return fmt.Errorf("%d of the other customer's 25 events stored", n)
		}
		if n := count(t, db, "SELECT count() FROM events WHERE api_key_id = {k:String} AND id LIKE 'late-%'", store.P("k", stranger)); n != 7 {
			return fmt.Errorf("%d of the unknown key's 7 events stored", n)
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{k1, k2, k3} {
		if n := keysOf(key); n != 0 {
			t.Errorf("%d events of the erased customer's key %s stored after the erasure", n, key)
		}
	}
	if v := metricValue(t, reg, "meterline_privacy_erased_keys"); v < 3 {
		t.Errorf("meterline_privacy_erased_keys = %v, want at least 3", v)
	}
}
