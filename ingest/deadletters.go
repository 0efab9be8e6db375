package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// HeaderReplayedFrom marks an event that `meterline dlq replay` wrote back
// to the events topic: the dead-letter topic/partition/offset it came from.
const HeaderReplayedFrom = "meterline-replayed-from"

// DeadLetter is one message of the dead-letter topic, with its headers read.
type DeadLetter struct {
	Partition int
	Offset    int64
	// Time is the message's Kafka timestamp (when it was dead-lettered).
	Time time.Time
	// Class is "invalid" (the event fails validation) or "unstorable" (the
	// engine refused its row while accepting others); Reason is the error.
	Class, Reason string
	// Source is where the event was read: topic/partition/offset.
	Source string
	// Size is the value's size here; OriginalSize the size before it was
	// truncated to fit the topic (equal to Size unless Truncated).
	Size, OriginalSize int
	Truncated          bool
	Key, Value         []byte
	Headers            []kafka.Header
}

func newDeadLetter(m kafka.Message) DeadLetter {
	d := DeadLetter{
		Partition: m.Partition, Offset: m.Offset, Time: m.Time,
		Class: headerValue(m, HeaderErrorReason), Reason: headerValue(m, HeaderError), Source: headerValue(m, HeaderSource),
		Size: len(m.Value), OriginalSize: len(m.Value), Truncated: headerValue(m, HeaderTruncated) == "true",
		Key: m.Key, Value: m.Value, Headers: m.Headers,
	}
	if n, err := strconv.Atoi(headerValue(m, HeaderOriginalSize)); err == nil && d.Truncated {
		d.OriginalSize = n
	}
	return d
}

// DeadLetterFilter selects dead letters. The zero value (with Partition -1,
// From and To -1) selects all of them.
type DeadLetterFilter struct {
	// Partition is the one partition to read, or -1 for all.
	Partition int
	// From and To bound the offsets (inclusive) within Partition; -1 for
	// no bound.
	From, To int64
	// Class keeps only dead letters of this class ("" for any).
	Class string
	// Reason keeps only dead letters whose error contains this text,
	// ignoring case ("" for any).
	Reason string
}

// AllDeadLetters selects every dead letter.
var AllDeadLetters = DeadLetterFilter{Partition: -1, From: -1, To: -1}

// Validate reports an inconsistent filter.
func (f DeadLetterFilter) Validate() error {
	switch {
	case f.Partition < -1:
		return fmt.Errorf("partition %d is negative", f.Partition)
	case (f.From >= 0 || f.To >= 0) && f.Partition < 0:
		return errors.New("an offset range needs a partition (offsets are per partition)")
	case f.From < -1 || f.To < -1:
		return errors.New("offsets must not be negative")
	case f.From >= 0 && f.To >= 0 && f.From > f.To:
		return fmt.Errorf("offset range %d-%d is empty (from is after to)", f.From, f.To)
	}
	return nil
}

// Match tells whether d is selected.
func (f DeadLetterFilter) Match(d DeadLetter) bool {
	if f.Partition >= 0 && d.Partition != f.Partition {
		return false
	}
	if (f.From >= 0 && d.Offset < f.From) || (f.To >= 0 && d.Offset > f.To) {
		return false
	}
	if f.Class != "" && d.Class != f.Class {
		return false
	}
	return f.Reason == "" || strings.Contains(strings.ToLower(d.Reason), strings.ToLower(f.Reason))
}

// deadLetterRange is the offsets [start, end) of one partition to scan.
type deadLetterRange struct {
	partition  int
	start, end int64
}

// deadLetterRanges lists what is in the dead-letter topic now, within f.
func deadLetterRanges(ctx context.Context, c KafkaConfig, f DeadLetterFilter) ([]deadLetterRange, error) {
	tr, err := c.Transport()
	if err != nil {
		return nil, err
	}
	defer tr.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.DeadLetterTopic}})
	if err != nil {
		return nil, fmt.Errorf("connecting to Kafka at %s: %w", strings.Join(c.Brokers, ","), c.explain(err))
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		var terr error
		if len(md.Topics) == 1 {
			terr = md.Topics[0].Error
		}
		return nil, fmt.Errorf("dead-letter topic %q: %v", c.DeadLetterTopic, terr)
	}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, p := range md.Topics[0].Partitions {
		if f.Partition >= 0 && p.ID != f.Partition {
			continue
		}
		req.Topics[c.DeadLetterTopic] = append(req.Topics[c.DeadLetterTopic], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	if len(req.Topics[c.DeadLetterTopic]) == 0 {
		return nil, fmt.Errorf("dead-letter topic %q has no partition %d", c.DeadLetterTopic, f.Partition)
	}
	res, err := client.ListOffsets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("reading the offsets of %q: %w", c.DeadLetterTopic, err)
	}
	var out []deadLetterRange
	for _, p := range res.Topics[c.DeadLetterTopic] {
		if p.Error != nil {
			return nil, fmt.Errorf("dead-letter topic %q partition %d: %w", c.DeadLetterTopic, p.Partition, p.Error)
		}
		r := deadLetterRange{partition: p.Partition, start: p.FirstOffset, end: p.LastOffset}
		if f.From >= 0 {
			r.start = max(r.start, f.From)
		}
		if f.To >= 0 {
			r.end = min(r.end, f.To+1)
		}
		if r.end > r.start {
			out = append(out, r)
		}
	}
	sortRanges(out)
	return out, nil
}

func sortRanges(rs []deadLetterRange) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].partition < rs[j-1].partition; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// DeadLetterScan reads the dead-letter topic as it is when Scan starts.
type DeadLetterScan struct {
	cfg    KafkaConfig
	filter DeadLetterFilter
	ranges []deadLetterRange
}

// NewDeadLetterScan looks up what the dead-letter topic holds within f.
func NewDeadLetterScan(ctx context.Context, c KafkaConfig, f DeadLetterFilter) (*DeadLetterScan, error) {
	c = c.WithDefaults()
	if err := f.Validate(); err != nil {
		return nil, err
	}
	rs, err := deadLetterRanges(ctx, c, f)
	if err != nil {
		return nil, err
	}
	return &DeadLetterScan{cfg: c, filter: f, ranges: rs}, nil
}

// Offsets is how many offsets the scan reads (an upper bound of the
// messages it yields), for progress.
func (s *DeadLetterScan) Offsets() int64 {
	var n int64
	for _, r := range s.ranges {
		n += r.end - r.start
	}
	return n
}

// Each calls fn with every selected dead letter, by partition then offset,
// and progress with the offsets read so far. fn returning an error stops
// the scan with that error.
func (s *DeadLetterScan) Each(ctx context.Context, fn func(DeadLetter) error, progress func(read int64)) error {
	dialer, err := s.cfg.Dialer()
	if err != nil {
		return err
	}
	var read int64
	for _, rg := range s.ranges {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers: s.cfg.Brokers, Topic: s.cfg.DeadLetterTopic, Partition: rg.partition, Dialer: dialer,
			MinBytes: 1, MaxBytes: maxMaxMessageBytes, MaxWait: 250 * time.Millisecond,
		})
		if err := r.SetOffset(rg.start); err != nil {
			r.Close()
			return err
		}
		for next := rg.start; next < rg.end; {
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			m, err := r.ReadMessage(rctx)
			cancel()
			if err != nil {
				r.Close()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("reading %s/%d at offset %d: %w", s.cfg.DeadLetterTopic, rg.partition, next, err)
			}
			if m.Offset >= rg.end {
				break
			}
			read += m.Offset + 1 - next
			next = m.Offset + 1
			if d := newDeadLetter(m); s.filter.Match(d) {
				if err := fn(d); err != nil {
					r.Close()
					return err
				}
			}
			if progress != nil {
				progress(read)
			}
		}
		r.Close()
	}
	return nil
}

// ReadDeadLetter returns the dead letter at partition/offset.
func ReadDeadLetter(ctx context.Context, c KafkaConfig, partition int, offset int64) (DeadLetter, error) {
	scan, err := NewDeadLetterScan(ctx, c, DeadLetterFilter{Partition: partition, From: offset, To: offset})
	if err != nil {
		return DeadLetter{}, err
	}
	var found *DeadLetter
	err = scan.Each(ctx, func(d DeadLetter) error { found = &d; return nil }, nil)
	if err != nil {
		return DeadLetter{}, err
	}
	if found == nil {
		return DeadLetter{}, fmt.Errorf("no dead letter at %s/%d/%d", c.WithDefaults().DeadLetterTopic, partition, offset)
	}
	return *found, nil
}

// ReplayResult counts what a replay did.
type ReplayResult struct {
	// Replayed dead letters were written back to the events topic.
	Replayed int
	// Truncated dead letters were skipped: they no longer hold the event.
	Truncated int
}

// ReplayDeadLetters writes the dead letters of scan back to the events
// topic with their original key and value (and the producer's headers,
// plus HeaderReplayedFrom), so that the sink reads them again after a fix.
// The sink stores an event id once however often it is replayed. Truncated
// dead letters are skipped. With dryRun nothing is written.
func ReplayDeadLetters(ctx context.Context, scan *DeadLetterScan, dryRun bool, progress func(read int64, res ReplayResult)) (ReplayResult, error) {
	var res ReplayResult
	c := scan.cfg
	tr, err := c.Transport()
	if err != nil {
		return res, err
	}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{
		Addr: kafka.TCP(c.Brokers...), Topic: c.Topic, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 2 * time.Millisecond, BatchBytes: c.BatchBytes(),
		MaxAttempts: 5, Transport: tr,
	}
	defer w.Close()
	var pending []kafka.Message
	var pendingBytes int64
	flush := func() error {
		if len(pending) == 0 || dryRun {
			pending, pendingBytes = pending[:0], 0
			return nil
		}
		if err := w.WriteMessages(ctx, pending...); err != nil {
			return fmt.Errorf("writing to %q: %w", c.Topic, err)
		}
		res.Replayed += len(pending)
		pending, pendingBytes = pending[:0], 0
		return nil
	}
	var read int64
	err = scan.Each(ctx, func(d DeadLetter) error {
		if d.Truncated {
			res.Truncated++
			return nil
		}
		var hs []kafka.Header
		for _, h := range d.Headers {
			if !strings.HasPrefix(h.Key, "meterline-") {
				hs = append(hs, h)
			}
		}
		hs = append(hs, kafka.Header{Key: HeaderReplayedFrom, Value: []byte(c.DeadLetterTopic + "/" + strconv.Itoa(d.Partition) + "/" + strconv.FormatInt(d.Offset, 10))})
		pending = append(pending, kafka.Message{Key: d.Key, Value: d.Value, Headers: hs})
		pendingBytes += int64(len(d.Value))
		if dryRun {
			res.Replayed++
		}
		if len(pending) >= 500 || pendingBytes >= 4<<20 {
			return flush()
		}
		return nil
	}, func(n int64) {
		read = n
		if progress != nil {
			progress(read, res)
		}
	})
	if err != nil {
		return res, err
	}
	if err := flush(); err != nil {
		return res, err
	}
	if progress != nil {
		progress(read, res)
	}
	return res, nil
}
