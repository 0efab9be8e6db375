package ingest

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// GroupLag returns, per partition of topic, how many messages the consumer
// group has not committed yet: the partition's end offset minus the group's
// committed offset (the whole partition when the group never committed).
// This is the lag that matters for exactly-once storage: a message counts
// until the insert that holds it is durable and its offset committed.
func GroupLag(ctx context.Context, c *kafka.Client, group, topic string) (map[int]int64, error) {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("group lag: metadata: %w", err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("group lag: topic %s: %v", topic, md.Topics)
	}
	var parts []int
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		parts = append(parts, p.ID)
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	ends, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("group lag: end offsets: %w", err)
	}
	committed, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, fmt.Errorf("group lag: committed offsets: %w", err)
	}
	if committed.Error != nil {
		return nil, fmt.Errorf("group lag: committed offsets: %w", committed.Error)
	}
	done := map[int]int64{}
	for _, p := range committed.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("group lag: committed offset of partition %d: %w", p.Partition, p.Error)
		}
		done[p.Partition] = max(p.CommittedOffset, 0) // -1: nothing committed yet
	}
	lag := make(map[int]int64, len(parts))
	for _, p := range ends.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("group lag: end offset of partition %d: %w", p.Partition, p.Error)
		}
		lag[p.Partition] = max(p.LastOffset-done[p.Partition], 0)
	}
	return lag, nil
}

// TotalLag sums a GroupLag answer.
func TotalLag(lag map[int]int64) int64 {
	var n int64
	for _, l := range lag {
		n += l
	}
	return n
}

// watchLag sets the lag gauge every interval until ctx ends. A failed
// measurement keeps the last values and is logged once per failure streak
// (a broker outage is reported by the fetch retries already).
func (s *Sink) watchLag(ctx context.Context, interval time.Duration) {
	tr, err := s.kcfg.Transport()
	if err != nil {
		s.log.Warn("consumer lag not measured", "err", err)
		return
	}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(s.kcfg.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lag, err := GroupLag(mctx, client, s.cfg.GroupID, s.kcfg.Topic)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			s.log.Warn("measuring consumer lag failed; keeping the last values", "err", err)
			failing = true
		case err == nil:
			failing = false
			for p, l := range lag {
				s.m.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(l))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// newLagGauge is meterline_sink_consumer_lag_messages.
func newLagGauge() *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meterline_sink_consumer_lag_messages",
		Help: "Messages of the events topic the sink's consumer group has not committed yet (end offset minus committed offset), by partition. " +
			"Every sink of a group reports the whole group: aggregate with max by (partition), then sum.",
	}, []string{"partition"})
}
