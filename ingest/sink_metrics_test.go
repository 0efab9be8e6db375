package ingest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/schemas"
)

// TestSinkMetricsStartAtZero checks that the dead-letter and retry counters
// expose every known label value at zero before the first event, so that
// alert rules on their rate see the first increase.
func TestSinkMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if _, err := NewSink(SinkConfig{GroupID: "metrics-zero"}, KafkaConfig{Brokers: []string{"127.0.0.1:9"}, Topic: "metrics-zero"},
		schemas.Options{}, Anonymizer{}, nil, reg, quietLog()); err != nil {
		t.Fatal(err)
	}
	want := `# HELP meterline_sink_events_dead_lettered_total Messages sent to the dead-letter topic, by class (invalid, unstorable, ownership).
# TYPE meterline_sink_events_dead_lettered_total counter
meterline_sink_events_dead_lettered_total{class="invalid"} 0
meterline_sink_events_dead_lettered_total{class="ownership"} 0
meterline_sink_events_dead_lettered_total{class="unstorable"} 0
# HELP meterline_sink_retries_total Failed attempts that were retried, by operation (fetch, insert, dead_letter, commit).
# TYPE meterline_sink_retries_total counter
meterline_sink_retries_total{operation="commit"} 0
meterline_sink_retries_total{operation="dead_letter"} 0
meterline_sink_retries_total{operation="fetch"} 0
meterline_sink_retries_total{operation="insert"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meterline_sink_events_dead_lettered_total", "meterline_sink_retries_total"); err != nil {
		t.Fatal(err)
	}
}
