package ingest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/meterline/meterline/internal/testenv"
)

// largeEvent is a valid event of about 11 KB: 32 properties of 320 bytes,
// the most a gateway may send.
func largeEvent(t testing.TB, id, key string) map[string]any {
	t.Helper()
	ev := validEvent(id, key)
	props := map[string]string{}
	for i := 0; i < 32; i++ {
		props[fmt.Sprintf("p%02d%s", i, strings.Repeat("k", 61))] = strings.Repeat("v", 256)
	}
	ev["properties"] = props
	return ev
}

// TestCollectorAcceptsLargeEventsOfOneKey posts 100 events of 11 KB for one
// key: they all go to one partition, 1.1 MB in all, more than the broker's
// default max.message.bytes. The writer's batches must be sized to the
// topic's limit, so the request gets 202 and every event is in the topic.
func TestCollectorAcceptsLargeEventsOfOneKey(t *testing.T) {
	f := newCollectorFixture(t, testenv.KafkaBrokers(t), CollectorConfig{})
	key := testenv.Unique("key")
	var evs []any
	for i := 0; i < 100; i++ {
		evs = append(evs, largeEvent(t, fmt.Sprintf("big-%d", i), key))
	}
	body := mustJSON(t, evs)
	if len(body) < 1_048_588 {
		t.Fatalf("body of %d bytes, want over the broker default of 1,048,588", len(body))
	}
	resp, b := f.post(t, tokIngest, "application/json", body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := len(topicMessages(t, f.brokers, f.kcfg.Topic)); got != 100 {
		t.Fatalf("%d messages in the topic, want 100", got)
	}
}

// TestKafkaMaxMessageBytesSetting: the default and the bounds of
// kafka.max_message_bytes, and the writers' batches below it.
func TestKafkaMaxMessageBytesSetting(t *testing.T) {
	c := KafkaConfig{}.WithDefaults()
	if c.MaxMessageBytes != 1<<20 || c.BatchBytes() != 1<<20-1024 {
		t.Fatalf("default %d, batch %d", c.MaxMessageBytes, c.BatchBytes())
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1000, -5, 64 << 20} {
		c.MaxMessageBytes = n
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kafka.max_message_bytes") {
			t.Errorf("max_message_bytes %d: %v, want an error naming the setting", n, err)
		}
	}
}
