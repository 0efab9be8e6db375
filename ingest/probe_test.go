package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// TestKafkaProbeReportsTheTopic runs probes against the real broker: one of
// an existing topic answers nil, one of a missing topic answers an error
// naming it, and Check before any check finished gives up with its context.
func TestKafkaProbeReportsTheTopic(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	topic := testenv.Unique("probe")
	testenv.CreateTopic(t, brokers, topic, 1)
	for _, tc := range []struct {
		topic string
		want  string
	}{{topic, ""}, {topic + "-missing", topic + "-missing"}} {
		p, err := NewKafkaProbe(KafkaConfig{Brokers: brokers, Topic: tc.topic}.WithDefaults(), 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		early, cancel := context.WithCancel(context.Background())
		cancel()
		if err := p.Check(early); err == nil {
			t.Errorf("%s: Check before the first check answered nil", tc.topic)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
		err = p.Check(wctx)
		wcancel()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.topic, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error naming the topic", tc.topic, err)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}
