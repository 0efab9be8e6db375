package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// deadLetterSegment is the dead-letter topic's segment.ms. Kafka deletes
// whole segments, once their newest message is older than retention.ms, so
// a message can stay up to retention.ms + segment.ms: DeadLetterRetention
// leaves room for one segment.
const deadLetterSegment = 12 * time.Hour

// DeadLetterRetention is the retention.ms of the dead-letter topic for a
// raw events retention of rawMonths (retention.raw_months): rawMonths
// times 28 days (the shortest month) less a day, so that a dead-lettered
// message, whose segment is deleted at most deadLetterSegment after it
// expires, is never kept longer than the raw events are.
func DeadLetterRetention(rawMonths int) time.Duration {
	return time.Duration(rawMonths)*28*24*time.Hour - 24*time.Hour
}

// deadLetterConfigs are the topic settings that bound the dead-letter
// topic's retention, empty when c.DeadLetterRetention is not set.
func (c KafkaConfig) deadLetterConfigs() map[string]string {
	if c.DeadLetterRetention <= 0 {
		return nil
	}
	return map[string]string{
		"retention.ms": strconv.FormatInt(c.DeadLetterRetention.Milliseconds(), 10),
		"segment.ms":   strconv.FormatInt(deadLetterSegment.Milliseconds(), 10),
	}
}

// withDeadLetterRetention adds the retention settings to the dead-letter
// topic of a creation request.
func (c KafkaConfig) withDeadLetterRetention(req *kafka.CreateTopicsRequest) {
	for i := range req.Topics {
		if req.Topics[i].Topic != c.DeadLetterTopic {
			continue
		}
		for name, value := range c.deadLetterConfigs() {
			req.Topics[i].ConfigEntries = append(req.Topics[i].ConfigEntries, kafka.ConfigEntry{ConfigName: name, ConfigValue: value})
		}
	}
}

// alignDeadLetterRetention brings the settings of an existing dead-letter
// topic to deadLetterConfigs, as start-up brings the raw table's TTL to
// retention.raw_months: a topic created by an older version or by hand,
// or under another retention.raw_months, is changed in place
// (IncrementalAlterConfigs, which leaves the topic's other settings alone).
func (c KafkaConfig) alignDeadLetterRetention(ctx context.Context, client *kafka.Client) error {
	want := c.deadLetterConfigs()
	if len(want) == 0 {
		return nil
	}
	// A topic created a moment ago may not be known to every broker yet.
	for {
		err := topicsLed(ctx, client, c.DeadLetterTopic)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	res, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: c.DeadLetterTopic, ConfigNames: names}}})
	if err != nil {
		return fmt.Errorf("reading the settings of Kafka topic %q: %w", c.DeadLetterTopic, err)
	}
	have := map[string]string{}
	for _, r := range res.Resources {
		if r.Error != nil {
			return fmt.Errorf("reading the settings of Kafka topic %q: %w", c.DeadLetterTopic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			have[e.ConfigName] = e.ConfigValue
		}
	}
	var set []kafka.IncrementalAlterConfigsRequestConfig
	for _, n := range names {
		if have[n] != want[n] {
			set = append(set, kafka.IncrementalAlterConfigsRequestConfig{Name: n, Value: want[n], ConfigOperation: kafka.ConfigOperationSet})
		}
	}
	if len(set) == 0 {
		return nil
	}
	ares, err := client.IncrementalAlterConfigs(ctx, &kafka.IncrementalAlterConfigsRequest{Resources: []kafka.IncrementalAlterConfigsRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: c.DeadLetterTopic, Configs: set}}})
	if err == nil {
		for _, r := range ares.Resources {
			err = errors.Join(err, r.Error)
		}
	}
	if err != nil {
		return fmt.Errorf("setting the retention of Kafka topic %q: %w", c.DeadLetterTopic, err)
	}
	return nil
}
