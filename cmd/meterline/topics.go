package main

import "github.com/meterline/meterline/ingest"

// topicsConfig is the Kafka configuration serve creates and checks the
// topics with: the dead-letter topic keeps messages no longer than the raw
// events table keeps rows (retention.raw_months).
func topicsConfig(c *Config) ingest.KafkaConfig {
	k := c.Kafka
	k.DeadLetterRetention = ingest.DeadLetterRetention(c.Retention.RawMonths)
	return k
}
