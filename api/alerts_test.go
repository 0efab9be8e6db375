package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/internal/testenv"
)

// TestAlertFromRealRollups: events are rolled up, the limits view reads the
// rollups, a threshold is crossed, and exactly one signed webhook per
// threshold reaches a real HTTP receiver, however often the view refreshes.
func TestAlertFromRealRollups(t *testing.T) {
	db := requireDB(t)
	const secret = "alert-test-secret-0123456789"
	var mu sync.Mutex
	var got []limits.AlertEvent
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := limits.VerifySignature(secret, r.Header.Get(limits.HeaderSignature), body, time.Minute); err != nil {
			t.Errorf("signature: %v", err)
		}
		var ev limits.AlertEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("body %s: %v", body, err)
		}
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	}))
	defer recv.Close()

	cust, key := testenv.Unique("alerted"), testenv.Unique("ak")
	now := time.Now().UTC()
	var evs []ev
	for i := 0; i < 9; i++ { // 9 units of 10 included: crosses 80 %, not 100 %
		evs = append(evs, ev{fmt.Sprintf("al-%d", i), key, cust, "/v1/x", now.Add(-time.Duration(i) * time.Second), 200, 1, 5, ""})
	}
	insertRaw(t, db, evs)
	agg := aggregate.NewAggregator(aggregate.Config{Settle: time.Millisecond}, db, prometheus.NewRegistry(), quiet())
	if _, err := agg.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	cat, err := limits.ParseCatalogue([]byte(fmt.Sprintf(`plans:
  - {id: tiny, included_units: 10, alert_thresholds: [0.8, 1.0]}
customers:
  - {id: %s, plan: tiny, keys: [%s], alert_webhook: %s}
`, cust, key, recv.URL)))
	if err != nil {
		t.Fatal(err)
	}
	prom := prometheus.NewRegistry()
	view := limits.NewView(limits.Config{WebhookSecret: secret}, limits.NewRegistry(cat), aggregate.NewQuerier(db), db, prom, quiet())
	defer view.Close()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	for i := 0; i < 5; i++ {
		if err := view.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(); n != 1 {
			return fmt.Errorf("%d webhooks", n)
		}
		return nil
	})
	// Two more units cross 100 %: one more webhook, for that threshold.
	insertRaw(t, db, []ev{{"al-9", key, cust, "/v1/x", now, 200, 2, 5, ""}})
	if _, err := agg.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := view.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := count(); n != 2 {
			return fmt.Errorf("%d webhooks", n)
		}
		return nil
	})
	// A repeat would be queued by a refresh: refresh again, then wait until
	// nothing is queued or being delivered.
	for i := 0; i < 3; i++ {
		if err := view.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		if n := gauge(t, prom, "meterline_alerts_pending"); n != 0 {
			return fmt.Errorf("%v alerts pending", n)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].Threshold != 0.8 || got[1].Threshold != 1.0 || got[0].CustomerID != cust || got[1].Used != 11 {
		t.Fatalf("webhooks: %+v", got)
	}
}

// gauge reads an unlabelled gauge from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not registered", name)
	return 0
}
