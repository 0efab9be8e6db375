package web

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRegistryHealthPerRole: lines read the registry the process exports
// (here a registry holding the sink's metric names only, as a sink-only
// process has); the collector's and billing's lines say they are not
// available, and a stalled sink says so.
func TestRegistryHealthPerRole(t *testing.T) {
	reg := prometheus.NewRegistry()
	stored := prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_sink_events_stored_total", Help: "h"})
	dead := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_sink_events_dead_lettered_total", Help: "h"}, []string{"reason"})
	lag := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meterline_sink_consumer_lag_messages", Help: "h"}, []string{"partition"})
	stalled := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_sink_stalled", Help: "h"})
	reg.MustRegister(stored, dead, lag, stalled)
	health := RegistryHealth(reg)
	byID := func() map[string]HealthItem {
		m := map[string]HealthItem{}
		for _, it := range health() {
			m[it.ID] = it
		}
		return m
	}
	got := byID()
	for _, id := range []string{"accepted", "ingest-rate", "rejected", "billing"} {
		if got[id].Value != notHere {
			t.Errorf("%s (%s) = %q in a sink-only process", id, got[id].Name, got[id].Value)
		}
	}
	if got["lag"].Value != "not measured yet" || got["stored"].Value != "0" || got["dead-lettered"].Value != "0" || got["sink-state"].Value != "running" {
		t.Errorf("fresh sink: %+v", got)
	}
	stored.Add(40)
	dead.WithLabelValues("invalid").Add(3)
	dead.WithLabelValues("unknown_key").Add(2)
	lag.WithLabelValues("0").Set(7)
	lag.WithLabelValues("1").Set(5)
	stalled.Set(1)
	got = byID()
	if got["stored"].Value != "40" || got["dead-lettered"].Value != "5" || got["lag"].Value != "12" || !strings.HasPrefix(got["sink-state"].Value, "stalled") {
		t.Errorf("busy sink: %+v", got)
	}
	if got["lag"].Name != "Kafka consumer lag (messages)" || got["dead-lettered"].Name != "Dead-lettered events" {
		t.Errorf("labels: %q, %q", got["lag"].Name, got["dead-lettered"].Name)
	}

	// The billing worker's line, with its gauges as the worker sets them.
	last := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_billing_last_run_timestamp_seconds", Help: "h"})
	open := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_billing_open_reports", Help: "h"})
	runs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_runs_total", Help: "h"}, []string{"result"})
	reg.MustRegister(last, open, runs)
	if v := byID()["billing"].Value; !strings.HasPrefix(v, "no run completed yet") {
		t.Errorf("billing before a run: %q", v)
	}
	at := time.Date(2026, 11, 3, 4, 5, 6, 0, time.UTC)
	last.Set(float64(at.Unix()))
	open.Set(2)
	runs.WithLabelValues("ok").Add(9)
	runs.WithLabelValues("error").Add(1)
	if v := byID()["billing"].Value; !strings.HasPrefix(v, "2026-11-03T04:05:06Z (") || !strings.Contains(v, "2 open reports, 1 failed runs") {
		t.Errorf("billing after runs: %q", v)
	}
	if it := freshnessItem(at, at.Add(90*time.Second)); it.Name != "Data freshness" || it.Value != "rollups complete up to 2026-11-03T04:05:06Z (1m30s behind)" {
		t.Errorf("freshness line %+v", it)
	}
}
