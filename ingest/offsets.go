package ingest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// ResetGroupOffsets sets the committed offsets of consumer group on the
// events topic: partition p to offsets[p], clamped to what the partition
// still holds, and a partition offsets does not name to its first offset.
// It is how a restored database catches up: the sink reads again every
// event after the backup's newest one (and deduplicates what it holds).
// No member of the group may run (Kafka refuses the commit then). It
// returns the offsets committed.
func ResetGroupOffsets(ctx context.Context, c KafkaConfig, group string, offsets map[int]int64) (map[int]int64, error) {
	if group == "" {
		return nil, errors.New("kafka: reset offsets: no consumer group")
	}
	tr, err := c.Transport()
	if err != nil {
		return nil, err
	}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.Topic}})
	if err != nil {
		return nil, fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(c.Brokers, ","), c.explain(err))
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("kafka: topic %s: %v", c.Topic, md.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	lo, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.Topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafka: list offsets of %s: %w", c.Topic, err)
	}
	out := map[int]int64{}
	var commits []kafka.OffsetCommit
	for _, po := range lo.Topics[c.Topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("kafka: offsets of %s/%d: %w", c.Topic, po.Partition, po.Error)
		}
		want, ok := offsets[po.Partition]
		if !ok || want < po.FirstOffset {
			want = po.FirstOffset
		}
		if want > po.LastOffset {
			want = po.LastOffset
		}
		out[po.Partition] = want
		commits = append(commits, kafka.OffsetCommit{Partition: po.Partition, Offset: want})
	}
	for p := range offsets {
		if _, ok := out[p]; !ok {
			return nil, fmt.Errorf("kafka: topic %s has no partition %d", c.Topic, p)
		}
	}
	sort.Slice(commits, func(i, j int) bool { return commits[i].Partition < commits[j].Partition })
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{c.Topic: commits}})
	if err != nil {
		return nil, fmt.Errorf("kafka: commit offsets of group %s: %w", group, err)
	}
	for _, tp := range resp.Topics {
		for _, p := range tp {
			if p.Error != nil {
				return nil, fmt.Errorf("kafka: commit offsets of group %s on %s/%d: %w (is a sink of the group running? stop every sink first)", group, c.Topic, p.Partition, p.Error)
			}
		}
	}
	return out, nil
}
