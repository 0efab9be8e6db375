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

// movedKeyCatalogue: key k belonged to gone until move, and to heir since.
func movedKeyCatalogue(t *testing.T, gone, heir, k string, move time.Time) *limits.Registry {
	t.Helper()
	cat := &limits.Catalogue{Plans: []limits.Plan{{ID: "p", IncludedUnits: 100}},
		Customers: []limits.Customer{
			{ID: gone, Plan: "p", KeyPeriods: []limits.KeyPeriod{{Key: k, Until: move}}},
			{ID: heir, Plan: "p", KeyPeriods: []limits.KeyPeriod{{Key: k, From: move}}},
		}}
	if err := cat.Validate(); err != nil {
		t.Fatal(err)
	}
	return limits.NewRegistry(cat)
}

// TestErasureOfAKeysPreviousOwnerKeepsTheNewOwners: a key moved from gone
// to heir. Erasing gone removes gone's rows of the key, but does not record
// the key (heir holds it now): heir's unassigned row of the key stays, and
// heir's new events of the key are stored, also when the key was recorded
// by an erasure (as before key owners were consulted).
func TestErasureOfAKeysPreviousOwnerKeepsTheNewOwners(t *testing.T) {
	db := engine.Require(t)
	brokers := testenv.KafkaBrokers(t)
	ctx := ctxT(t)
	gone, heir := testenv.Unique("gone"), testenv.Unique("heir")
	k := gone + "-moved"
	move := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Second)
	insertEvents(t, db, gone, k, 10, move.Add(-time.Hour), time.Second) // gone's usage before the move
	insertEvents(t, db, "", k, 3, move.Add(time.Minute), time.Second)   // heir's, stored before the key was known
	registry := movedKeyCatalogue(t, gone, heir, k, move)
	keysOf := func(c string) []string {
		if cu, ok := registry.Customer(c); ok {
			return cu.AllKeys()
		}
		return nil
	}
	owners := func(key string) []string {
		var out []string
		for _, o := range registry.Ownerships() {
			if o.APIKeyID == key {
				out = append(out, o.CustomerID)
			}
		}
		return out
	}

	svc := NewService(fastConfig(), db, nil, testenv.Log())
	svc.CatalogueKeys(keysOf)
	svc.KeyOwners(owners)
	req, err := svc.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Execute(ctx, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(e.APIKeyIDs, k) {
		t.Errorf("erasure of %s recorded the key %s that %s holds now: %v", gone, k, heir, e.APIKeyIDs)
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
		t.Errorf("%d rows of the erased customer left", n)
	}
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = '' AND api_key_id = {k:String}", store.P("k", k)); n != 3 {
		t.Errorf("%d unassigned rows of the new owner's key left, want 3", n)
	}

	// A second erasure of gone made without the key owners records the key,
	// as erasures did before: the sink still stores heir's events of it.
	old := NewService(fastConfig(), db, nil, testenv.Log())
	old.CatalogueKeys(keysOf)
	req2, err := old.Request(ctx, Request{CustomerID: gone, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if e2, err := old.Execute(ctx, req2.ID); err != nil {
		t.Fatal(err)
	} else if !slices.Contains(e2.APIKeyIDs, k) {
		t.Fatalf("the erasure without key owners did not record %s: %v", k, e2.APIKeyIDs)
	}

	kc := ingest.KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 1}.WithDefaults()
	if err := ingest.EnsureTopics(ctx, kc); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	bl := NewBlocklist(fastConfig(), db, reg, testenv.Log())
	blCtx, stopBL := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = bl.Run(blCtx) }()
	defer func() { stopBL(); wg.Wait() }()
	testenv.Eventually(t, time.Minute, func() error {
		if !bl.KeyErased(k) {
			return fmt.Errorf("the blocklist has not loaded the erasure yet")
		}
		return nil
	})
	stop := runSinkResolving(t, kc, db, bl, reg, registry)
	defer stop()
	now := time.Now().UTC()
	var msgs []kafka.Message
	for i := 0; i < 5; i++ {
		ev := schemas.Event{ID: fmt.Sprintf("heir-%d", i), Time: now.Add(-time.Duration(i) * time.Second),
			APIKeyID: k, Method: "GET", Route: "/r", Status: 200}
		b, _ := json.Marshal(ev)
		msgs = append(msgs, kafka.Message{Key: []byte(k), Value: b})
	}
	// One more event, of the erased customer's time: it must be dropped.
	b, _ := json.Marshal(schemas.Event{ID: "gone-late", Time: move.Add(-time.Minute), APIKeyID: k, Method: "GET", Route: "/r", Status: 200})
	msgs = append(msgs, kafka.Message{Key: []byte(k), Value: b})
	if err := testenv.Writer(t, brokers, kc.Topic).WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Minute, func() error {
		if d := metricValue(t, reg, "meterline_sink_erased_events_dropped_total"); d < 1 {
			return fmt.Errorf("the late event of the erased customer is not dropped yet")
		}
		if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", heir)); n != 5 {
			return fmt.Errorf("heir (the key's owner since %s) has %d of its 5 events stored; %v dropped as an erased customer's",
				move.Format(time.RFC3339), n, metricValue(t, reg, "meterline_sink_erased_events_dropped_total"))
		}
		return nil
	})
	if n := count(t, db, "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", gone)); n != 0 {
		t.Errorf("%d rows of the erased customer stored after its erasure", n)
	}
}
