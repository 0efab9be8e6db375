package ingest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
)

// topicConfigs reads settings of a topic from the broker.
func topicConfigs(t *testing.T, c *kafka.Client, topic string, names ...string) map[string]string {
	t.Helper()
	res, err := c.DescribeConfigs(context.Background(), &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names}}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range res.Resources {
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		for _, e := range r.ConfigEntries {
			out[e.ConfigName] = e.ConfigValue
		}
	}
	return out
}

// TestDeadLetterTopicRetention: the dead-letter topic is created with a
// retention no longer than the raw events' (retention.raw_months), a topic
// that exists with a longer one (here infinite, as made by hand) is brought
// to it at start without losing its other settings, and a changed
// retention.raw_months is applied at the next start. The events topic is
// left alone.
func TestDeadLetterTopicRetention(t *testing.T) {
	brokers := testenv.KafkaBrokers(t)
	client := testenv.KafkaClient(brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

	k := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("ret"), Partitions: 1, DeadLetterRetention: DeadLetterRetention(12)}.WithDefaults()
	if err := EnsureTopics(ctx, k); err != nil {
		t.Fatal(err)
	}
	got := topicConfigs(t, client, k.DeadLetterTopic, "retention.ms", "segment.ms")
	if got["retention.ms"] != ms(DeadLetterRetention(12)) || got["segment.ms"] != ms(deadLetterSegment) {
		t.Fatalf("new dead-letter topic: %v, want retention.ms %s and segment.ms %s", got, ms(DeadLetterRetention(12)), ms(deadLetterSegment))
	}
	if ev := topicConfigs(t, client, k.Topic, "retention.ms"); ev["retention.ms"] == got["retention.ms"] {
		t.Errorf("the events topic got the dead-letter retention: %v", ev)
	}

	// A dead-letter topic that already exists, kept forever.
	k2 := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("ret"), Partitions: 1}.WithDefaults()
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: k2.DeadLetterTopic, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: "-1"}, {ConfigName: "max.message.bytes", ConfigValue: "2000000"}}}}})
	if err != nil || res.Errors[k2.DeadLetterTopic] != nil {
		t.Fatal(err, res.Errors)
	}
	for _, months := range []int{12, 3} {
		k2.DeadLetterRetention = DeadLetterRetention(months)
		if err := EnsureTopics(ctx, k2); err != nil {
			t.Fatal(err)
		}
		got := topicConfigs(t, client, k2.DeadLetterTopic, "retention.ms", "segment.ms", "max.message.bytes")
		if got["retention.ms"] != ms(DeadLetterRetention(months)) || got["segment.ms"] != ms(deadLetterSegment) {
			t.Fatalf("existing dead-letter topic, raw_months %d: %v, want retention.ms %s", months, got, ms(DeadLetterRetention(months)))
		}
		if got["max.message.bytes"] != "2000000" {
			t.Fatalf("aligning the retention lost the topic's other settings: %v", got)
		}
	}

	// Whatever retention.raw_months, a dead letter is deleted (with its
	// segment) before the shortest calendar span of that many months.
	for m := 1; m <= 1200; m++ {
		if life := DeadLetterRetention(m) + deadLetterSegment; life <= 0 || life > time.Duration(m)*28*24*time.Hour {
			t.Fatalf("raw_months %d: a dead letter may live %s", m, life)
		}
	}
}
