package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// TestQuickStartTwiceCountsOnce runs the README's quick start twice: the
// same id req-1 posted again with a new time, through the collector, and an
// id produced straight to Kafka twice with two times. Each id is one stored
// event and one unit in /v1/limits; the stored event of the quick start
// carries no request or response size, and shows none.
func TestQuickStartTwiceCountsOnce(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("e2e-identity")
	dir := t.TempDir()
	customer := testenv.Unique("acme")
	key := customer + "-key"
	catalogue := filepath.Join(dir, "catalogue.yaml")
	if err := os.WriteFile(catalogue, []byte(fmt.Sprintf(`plans:
  - {id: starter, included_units: 1000}
customers:
  - {id: %s, plan: starter, keys: [%s]}
`, customer, key)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath, addr := writeConfig(t, strings.Join(brokers, ","), topic, fmt.Sprintf(`aggregate:
  interval: 200ms
  settle: 10ms
limits:
  catalogue_file: %s
  refresh: 100ms
`, catalogue))
	start(t, cfgPath, addr)

	quickStart := func(at time.Time) {
		postEvents(t, addr, []map[string]any{{"id": "req-1", "time": at.UTC().Format(time.RFC3339Nano), "api_key_id": key,
			"customer_id": customer, "method": "GET", "route": "/v1/pets/{id}", "status": 200, "latency_ms": 12.5,
			"client_ip": "203.0.113.77"}})
	}
	waitMetric := func(name string, want float64) {
		t.Helper()
		testenv.Eventually(t, time.Minute, func() error {
			if n, err := metric(addr, name); err != nil || n < want {
				return fmt.Errorf("%s = %v (%v), want %v", name, n, err, want)
			}
			return nil
		})
	}
	first := time.Now().Add(-2 * time.Minute).Truncate(time.Millisecond)
	quickStart(first)
	waitMetric("meterline_sink_events_stored_total", 1)
	quickStart(time.Now().Add(-time.Minute)) // the second run: same id, a new time

	w := testenv.Writer(t, brokers, topic)
	direct := func(at time.Time) kafka.Message {
		e := event("direct-1", key)
		e["customer_id"], e["time"] = customer, at.UTC().Format(time.RFC3339Nano)
		v, _ := json.Marshal(e)
		return kafka.Message{Key: []byte(key), Value: v}
	}
	if err := w.WriteMessages(t.Context(), direct(first)); err != nil {
		t.Fatal(err)
	}
	waitMetric("meterline_sink_events_stored_total", 2)
	if err := w.WriteMessages(t.Context(), direct(time.Now().Add(-30*time.Second))); err != nil {
		t.Fatal(err)
	}
	// All four copies handled: stored, or dropped as a later copy.
	testenv.Eventually(t, time.Minute, func() error {
		stored, err1 := metric(addr, "meterline_sink_events_stored_total")
		dups, err2 := metric(addr, "meterline_sink_duplicates_stored_total")
		if err2 != nil {
			dups = 0 // not exposed by a sink that does not drop them
		}
		if err1 != nil || stored+dups < 4 {
			return fmt.Errorf("%v stored and %v dropped copies (%v), want 4", stored, dups, err1)
		}
		return nil
	})

	var stored struct {
		Events []map[string]any `json:"events"`
	}
	if err := getJSON(addr, "/v1/events/stored?api_key_id="+url.QueryEscape(key), &stored); err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, e := range stored.Events {
		ids[e["id"].(string)]++
		if e["id"] == "req-1" {
			if e["time"] != first.UTC().Format("2006-01-02T15:04:05.000Z") {
				t.Errorf("req-1 stored at %v, want the first copy's time %s", e["time"], first.UTC().Format(time.RFC3339Nano))
			}
			if _, ok := e["request_bytes"]; ok {
				t.Errorf("req-1 carried no request_bytes but is stored with %v", e["request_bytes"])
			}
			if _, ok := e["response_bytes"]; ok {
				t.Errorf("req-1 carried no response_bytes but is stored with %v", e["response_bytes"])
			}
			if e["latency_ms"] != 12.5 {
				t.Errorf("req-1 latency_ms %v, want 12.5", e["latency_ms"])
			}
		}
	}
	if ids["req-1"] != 1 || ids["direct-1"] != 1 || len(stored.Events) != 2 {
		t.Errorf("stored events by id %v, want req-1 and direct-1 once each", ids)
	}
	if n, err := metric(addr, "meterline_sink_duplicates_stored_total"); err != nil || n != 2 {
		t.Errorf("meterline_sink_duplicates_stored_total = %v (%v), want 2", n, err)
	}
	testenv.Eventually(t, time.Minute, func() error {
		var l struct{ Used float64 }
		if err := getJSON(addr, "/v1/limits/"+key, &l); err != nil {
			return err
		}
		if l.Used != 2 {
			return fmt.Errorf("/v1/limits used %v, want 2", l.Used)
		}
		return nil
	})
}
