package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
)

// The alert lease fences deliveries with its generation.
var _ limits.AlertFence = (*ingest.Lease)(nil)

// TestAlertsThroughServe: serve with a catalogue whose plan has alert
// thresholds sends one signed webhook per crossed threshold, from the
// process holding the alert lease (elected through the real broker). A
// second query process joining the lease leaves exactly one sender, and
// takes over when the first is killed.
func TestAlertsThroughServe(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	const secret = "e2e-webhook-secret-0123456789"
	var mu sync.Mutex
	var got []string // "delivery threshold" per valid request
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := limits.VerifySignature(secret, r.Header.Get(limits.HeaderSignature), body, 0); err != nil {
			t.Errorf("webhook signature: %v", err)
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, r.Header.Get(limits.HeaderDelivery)+" "+string(body))
		mu.Unlock()
	}))
	defer rc.Close()
	received := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}

	customer := testenv.Unique("alerted")
	dir := t.TempDir()
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(fmt.Sprintf(`plans:
  - {id: small, included_units: 10, alert_thresholds: [0.8, 1.0]}
customers:
  - {id: %s, plan: small, keys: [%s-key], alert_webhook: %q}
`, customer, customer, rc.URL+"/hook")), 0o600); err != nil {
		t.Fatal(err)
	}
	limitsSection := fmt.Sprintf(`aggregate:
  interval: 200ms
  settle: 10ms
limits:
  catalogue_file: %s
  refresh: 100ms
  webhook_secret: %s
  alert_lease_timeout: 6s
  retry_min: 50ms
  retry_max: 200ms
`, catalogue, secret)
	topic := testenv.Unique("alerts")
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, limitsSection)
	p1, _ := start(t, cfgPath, addr)
	testenv.Eventually(t, time.Minute, func() error {
		if v, err := metric(addr, "meterline_alerts_sender"); err != nil || v != 1 {
			return fmt.Errorf("meterline_alerts_sender = %v (%v), want 1 on the only process", v, err)
		}
		return nil
	})
	postEvents(t, addr, customerEvents("a", customer, 9)) // 90 %: the 0.8 threshold
	testenv.Eventually(t, time.Minute, func() error {
		if n := len(received()); n != 1 {
			return fmt.Errorf("%d webhooks, want 1", n)
		}
		return nil
	})
	postEvents(t, addr, customerEvents("b", customer, 2)) // 110 %: the 1.0 threshold
	testenv.Eventually(t, time.Minute, func() error {
		if n := len(received()); n != 2 {
			return fmt.Errorf("%d webhooks, want 2", n)
		}
		return nil
	})
	// A repeat would be queued by a later refresh: let five more refreshes
	// pass (each evaluates the thresholds again) with every attempt counted.
	afterRefreshes(t, addr, 5)
	testenv.Eventually(t, time.Minute, func() error {
		if n, err := metric(addr, "meterline_alerts_pending"); err != nil || n != 0 {
			return fmt.Errorf("meterline_alerts_pending = %v (%v), want 0", n, err)
		}
		return nil
	})
	if n, err := metric(addr, "meterline_alerts_deliveries_total"); err != nil || n != 2 {
		t.Fatalf("meterline_alerts_deliveries_total = %v (%v), want 2 attempts", n, err)
	}
	r := received()
	if len(r) != 2 || !strings.Contains(r[0], `"threshold":0.8`) || !strings.Contains(r[1], `"threshold":1`) ||
		strings.Fields(r[0])[0] == strings.Fields(r[1])[0] {
		t.Fatalf("webhooks %q: want one for 0.8 then one for 1.0, with distinct delivery ids", r)
	}

	// A second query process (its own engine directory: the embedded
	// engine cannot be shared, so it sees no usage) joins the lease. The
	// group rebalances; the lease stays with the first process.
	cfg2, addr2 := writeConfig(t, strings.Join(brokers, ","), topic, limitsSection)
	start(t, cfg2, addr2, "--roles=query")
	senders := func() (float64, float64, error) {
		v1, err1 := metric(addr, "meterline_alerts_sender")
		v2, err2 := metric(addr2, "meterline_alerts_sender")
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("%v; %v", err1, err2)
		}
		return v1, v2, nil
	}
	testenv.Eventually(t, time.Minute, func() error {
		if v2, err := metric(addr2, "meterline_limits_staleness_seconds"); err != nil || v2 < 0 {
			return fmt.Errorf("second process not serving limits yet: %v (%v)", v2, err)
		}
		return nil
	})
	kc := testenv.KafkaClient(brokers)
	testenv.Eventually(t, time.Minute, func() error {
		g, err := kc.DescribeGroups(context.Background(), &kafka.DescribeGroupsRequest{GroupIDs: []string{"meterline-" + topic + "-lease-alerts"}})
		if err != nil || len(g.Groups) != 1 {
			return fmt.Errorf("describe the lease group: %v", err)
		}
		if st, n := g.Groups[0].GroupState, len(g.Groups[0].Members); st != "Stable" || n != 2 {
			return fmt.Errorf("lease group %s with %d members, want Stable with 2", st, n)
		}
		return nil
	})
	// The group is Stable, but each process sees the new generation's
	// result only after its assignment (and, on the holder, an
	// acknowledged heartbeat). Once both have made the same generation's
	// result visible (the second can only be in one with both members),
	// the first must be the sender and the second not.
	testenv.Eventually(t, time.Minute, func() error {
		g1, err1 := metric(addr, "meterline_lease_generation")
		g2, err2 := metric(addr2, "meterline_lease_generation")
		if err1 != nil || err2 != nil || g1 != g2 || g2 == 0 {
			return fmt.Errorf("lease generations %v and %v (%v; %v), want the same", g1, g2, err1, err2)
		}
		if v1, v2, err := senders(); err != nil || v1 != 1 || v2 != 0 {
			return fmt.Errorf("meterline_alerts_sender: %v and %v (%v), want the first process to keep sending alone", v1, v2, err)
		}
		return nil
	})
	// It stays there: through three more acknowledged heartbeats of the
	// holder the second never sends (a rebalance on a loaded machine may
	// leave a moment without a sender; the lease stays with the first).
	const acks = `meterline_lease_heartbeats_total{lease="alerts",result="acked"}`
	acked, _ := metric(addr, acks)
	testenv.Eventually(t, time.Minute, func() error {
		v1, v2, err := senders()
		if err == nil && v2 != 0 {
			t.Fatalf("meterline_alerts_sender: %v and %v, want the first process to keep sending alone", v1, v2)
		}
		if n, err := metric(addr, acks); err != nil || n < acked+3 || v1 != 1 {
			return fmt.Errorf("%v acknowledged heartbeats (want %v), sender %v (%v)", n, acked+3, v1, err)
		}
		return nil
	})
	// The first process dies without leaving the group: after the lease
	// timeout the second sends.
	p1.kill()
	testenv.Eventually(t, time.Minute, func() error {
		if v, err := metric(addr2, "meterline_alerts_sender"); err != nil || v != 1 {
			return fmt.Errorf("second process: meterline_alerts_sender = %v (%v), want 1 after the first was killed", v, err)
		}
		return nil
	})
}

// afterRefreshes waits until the limits view of the process at addr has
// completed n more refreshes than now.
func afterRefreshes(t *testing.T, addr string, n float64) {
	t.Helper()
	const name = "meterline_limits_refresh_duration_seconds_count"
	before, err := metric(addr, name)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, func() error {
		if v, err := metric(addr, name); err != nil || v < before+n {
			return fmt.Errorf("%s = %v (%v), want %v", name, v, err, before+n)
		}
		return nil
	})
}
