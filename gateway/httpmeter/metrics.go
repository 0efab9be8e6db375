package httpmeter

import "github.com/prometheus/client_golang/prometheus"

var (
	descEnqueued = prometheus.NewDesc("meterline_client_events_enqueued_total",
		"Events queued for sending to the Meterline collector.", nil, nil)
	descSent = prometheus.NewDesc("meterline_client_events_sent_total",
		"Events the collector accepted.", nil, nil)
	descRejected = prometheus.NewDesc("meterline_client_events_rejected_total",
		"Events refused one by one for an invalid field (logged with the reason, not retried).", nil, nil)
	descRetries = prometheus.NewDesc("meterline_client_retries_total",
		"Repeated POSTs of a batch after a network error, 429 or 5xx.", nil, nil)
	descDropped = prometheus.NewDesc("meterline_client_events_dropped_total",
		"Events not sent: queue_full, refused (a 4xx for the whole batch), retries_exhausted, unsent (Close's deadline), closed (request ended after Close).", []string{"reason"}, nil)
	descDepth = prometheus.NewDesc("meterline_client_queue_depth",
		"Events held: queued, or in a batch being sent.", nil, nil)
	descCapacity = prometheus.NewDesc("meterline_client_queue_capacity",
		"Events the queue holds when full (Config.QueueSize).", nil, nil)
)

// metrics exposes a Meter's counters; reading them costs the requests
// nothing.
type metrics struct{ m *Meter }

func (c *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEnqueued, descSent, descRejected, descRetries, descDropped, descDepth, descCapacity} {
		ch <- d
	}
}

func (c *metrics) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descEnqueued, s.Enqueued)
	counter(descSent, s.Sent)
	counter(descRejected, s.Rejected)
	counter(descRetries, s.Retries)
	counter(descDropped, s.DroppedQueueFull, "queue_full")
	counter(descDropped, s.DroppedRefused, "refused")
	counter(descDropped, s.DroppedRetriesExhausted, "retries_exhausted")
	counter(descDropped, s.DroppedUnsent, "unsent")
	counter(descDropped, s.DroppedClosed, "closed")
	ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(s.QueueDepth))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(c.m.queue.capacity))
}
