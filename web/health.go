package web

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// A role's metrics are registered when the role starts; a metric family
// that is always exported (a plain counter or gauge, no labels) tells
// whether the role runs in this process.
const (
	markerCollector = "meterline_collector_events_accepted_total"
	markerSink      = "meterline_sink_events_stored_total"
	markerBilling   = "meterline_billing_last_run_timestamp_seconds"
)

// notHere is the value of a line whose role does not run in this process.
const notHere = "not available in this process"

// healthLine is one line of the pipeline health: a label for people, the
// role whose metrics it reads, and how it turns them into a value.
type healthLine struct {
	id, name, marker string
	value            func(m metrics, now time.Time) string
}

// metrics are the gathered families by name.
type metrics map[string]*dto.MetricFamily

// sum adds every series of the family (0 when none was exported yet).
func (m metrics) sum(name string) float64 {
	var total float64
	mf := m[name]
	if mf == nil {
		return 0
	}
	for _, s := range mf.GetMetric() {
		switch {
		case s.GetCounter() != nil:
			total += s.GetCounter().GetValue()
		case s.GetGauge() != nil:
			total += s.GetGauge().GetValue()
		}
	}
	return total
}

// with sums the series whose label has value v.
func (m metrics) with(name, label, v string) float64 {
	var total float64
	if mf := m[name]; mf != nil {
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == label && l.GetValue() == v {
					total += s.GetCounter().GetValue() + s.GetGauge().GetValue()
				}
			}
		}
	}
	return total
}

func count(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// rate is the ingest rate between two views of the page (the counter's
// increase over the time between them), or the average since the process
// started on the first view.
type rate struct {
	mu   sync.Mutex
	at   time.Time
	seen float64
}

func (r *rate) value(m metrics, now time.Time) string {
	accepted := m.sum("meterline_collector_events_accepted_total")
	r.mu.Lock()
	defer r.mu.Unlock()
	prevAt, prev := r.at, r.seen
	r.at, r.seen = now, accepted
	if !prevAt.IsZero() && now.Sub(prevAt) >= time.Second && accepted >= prev {
		d := now.Sub(prevAt)
		return fmt.Sprintf("%.1f events/s over the last %s", (accepted-prev)/d.Seconds(), ago(d))
	}
	if start := m.sum("process_start_time_seconds"); start > 0 {
		if up := now.Sub(time.Unix(int64(start), 0)); up >= time.Second {
			return fmt.Sprintf("%.1f events/s on average since the process started", accepted/up.Seconds())
		}
	}
	return "measured from the next view of this page"
}

func healthLines() []healthLine {
	r := &rate{}
	return []healthLine{
		{"accepted", "Events accepted", markerCollector, func(m metrics, _ time.Time) string {
			return count(m.sum("meterline_collector_events_accepted_total"))
		}},
		{"ingest-rate", "Ingest rate", markerCollector, r.value},
		{"rejected", "Events rejected (invalid, refused)", markerCollector, func(m metrics, _ time.Time) string {
			return count(m.sum("meterline_collector_events_rejected_total"))
		}},
		{"stored", "Events stored", markerSink, func(m metrics, _ time.Time) string {
			return count(m.sum("meterline_sink_events_stored_total"))
		}},
		{"lag", "Kafka consumer lag (messages)", markerSink, func(m metrics, _ time.Time) string {
			if m["meterline_sink_consumer_lag_messages"] == nil {
				return "not measured yet"
			}
			return count(m.sum("meterline_sink_consumer_lag_messages"))
		}},
		{"dead-lettered", "Dead-lettered events", markerSink, func(m metrics, _ time.Time) string {
			return count(m.sum("meterline_sink_events_dead_lettered_total"))
		}},
		{"sink-state", "Sink", markerSink, func(m metrics, _ time.Time) string {
			if m.sum("meterline_sink_stalled") > 0 {
				return "stalled: storage or broker failing, offsets held until it recovers"
			}
			return "running"
		}},
		{"billing", "Billing worker: last run / state", markerBilling, func(m metrics, now time.Time) string {
			last := m.sum("meterline_billing_last_run_timestamp_seconds")
			state := fmt.Sprintf("%s open reports, %s failed runs, %s errors",
				count(m.sum("meterline_billing_open_reports")), count(m.with("meterline_billing_runs_total", "result", "error")),
				count(m.sum("meterline_billing_errors_total")))
			if last == 0 {
				return "no run completed yet; " + state
			}
			t := time.Unix(int64(last), 0)
			return t.UTC().Format(time.RFC3339) + " (" + ago(now.Sub(t)) + " ago); " + state
		}},
	}
}

// RegistryHealth reads the pipeline's health from what the process already
// exports through g: events accepted and rejected and the ingest rate
// (collector), events stored, consumer lag, dead letters and stalls
// (sink), and the billing worker's last run and state. A line whose role
// does not run in the process says so. The overview adds data freshness,
// the aggregator's watermark as the store holds it.
func RegistryHealth(g prometheus.Gatherer) func() []HealthItem {
	lines := healthLines()
	return func() []HealthItem {
		mfs, err := g.Gather()
		if err != nil {
			return []HealthItem{{ID: "metrics", Name: "Metrics", Value: "unreadable: " + err.Error()}}
		}
		m := metrics{}
		for _, mf := range mfs {
			m[mf.GetName()] = mf
		}
		now := time.Now()
		out := make([]HealthItem, 0, len(lines))
		for _, l := range lines {
			it := HealthItem{ID: l.id, Name: l.name, Value: notHere}
			if m[l.marker] != nil {
				it.Value = l.value(m, now)
			}
			out = append(out, it)
		}
		return out
	}
}
