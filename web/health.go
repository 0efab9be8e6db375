package web

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// HealthMetrics are the metrics the overview's pipeline health shows,
// each summed over its labels, when the process exports them (a process
// runs only some roles).
var HealthMetrics = []string{
	"meterline_collector_events_accepted_total",
	"meterline_collector_events_rejected_total",
	"meterline_sink_events_stored_total",
	"meterline_sink_events_dead_lettered_total",
	"meterline_sink_stalled",
	"meterline_sink_consumer_lag_messages",
	"meterline_billing_errors_total",
}

// RegistryHealth reads the pipeline's health from what the process already
// exports: the named metric families of g, each summed over its series.
func RegistryHealth(g prometheus.Gatherer, names []string) func() []HealthItem {
	return func() []HealthItem {
		mfs, err := g.Gather()
		if err != nil {
			return []HealthItem{{Name: "metrics", Value: "unreadable: " + err.Error()}}
		}
		var out []HealthItem
		for _, name := range names {
			for _, mf := range mfs {
				if mf.GetName() != name {
					continue
				}
				var total float64
				for _, m := range mf.GetMetric() {
					switch {
					case m.GetCounter() != nil:
						total += m.GetCounter().GetValue()
					case m.GetGauge() != nil:
						total += m.GetGauge().GetValue()
					}
				}
				out = append(out, HealthItem{Name: name, Value: strconv.FormatFloat(total, 'f', -1, 64)})
			}
		}
		return out
	}
}
