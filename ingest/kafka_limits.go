package ingest

import (
	"context"
	"fmt"
	"strconv"

	"github.com/segmentio/kafka-go"
)

// DefaultMaxMessageBytes is kafka.max_message_bytes when unset: Kafka's own
// default (message.max.bytes is 1 MiB plus 12 bytes of framing).
const DefaultMaxMessageBytes = 1 << 20

// Bounds of kafka.max_message_bytes. The largest valid event is about 75 KB
// of JSON (32 properties of 320 bytes, every byte escaped), so the lower
// bound keeps any one event within a batch; the upper one stays within the
// sink's fetch size.
const (
	minMaxMessageBytes = 128 << 10
	maxMaxMessageBytes = 16 << 20
)

// batchFraming is the headroom each writer's batch keeps below the topics'
// max.message.bytes: the broker measures the record batch with its header
// (61 bytes) and per-record varints, while kafka-go sizes a batch by its
// own estimate of each message.
const batchFraming = 1 << 10

func validMaxMessageBytes(n int) error {
	if n < minMaxMessageBytes || n > maxMaxMessageBytes {
		return fmt.Errorf("kafka.max_message_bytes: %d is out of range %d-%d", n, minMaxMessageBytes, maxMaxMessageBytes)
	}
	return nil
}

func (c KafkaConfig) maxMessageBytes() int {
	if c.MaxMessageBytes <= 0 {
		return DefaultMaxMessageBytes
	}
	return c.MaxMessageBytes
}

// BatchBytes is the most bytes any Meterline writer puts in one batch to a
// partition (kafka-go's Writer.BatchBytes): below the topics'
// max.message.bytes, so that the broker never refuses a batch as too large
// however many events of one key a request holds. A single message larger
// than this cannot be written at all (the dead-letter writer truncates).
func (c KafkaConfig) BatchBytes() int64 {
	return int64(c.maxMessageBytes() - batchFraming)
}

// checkMessageLimits reads the effective max.message.bytes of the events and
// dead-letter topics and refuses a topic that accepts less than the writers
// send. A broker that does not let this client describe configurations
// (ACLs) is not an error: the writers' failures would then tell.
func checkMessageLimits(ctx context.Context, client *kafka.Client, c KafkaConfig) error {
	req := &kafka.DescribeConfigsRequest{}
	for _, t := range []string{c.Topic, c.DeadLetterTopic} {
		req.Resources = append(req.Resources, kafka.DescribeConfigRequestResource{
			ResourceType: kafka.ResourceTypeTopic, ResourceName: t, ConfigNames: []string{"max.message.bytes"},
		})
	}
	res, err := client.DescribeConfigs(ctx, req)
	if err != nil {
		return nil
	}
	for _, r := range res.Resources {
		if r.Error != nil {
			continue
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName != "max.message.bytes" {
				continue
			}
			n, err := strconv.Atoi(e.ConfigValue)
			if err == nil && n < c.maxMessageBytes() {
				return fmt.Errorf("kafka topic %q accepts batches of at most %d bytes (max.message.bytes) but kafka.max_message_bytes is %d: lower the setting or raise the topic's max.message.bytes", r.ResourceName, n, c.maxMessageBytes())
			}
		}
	}
	return nil
}
