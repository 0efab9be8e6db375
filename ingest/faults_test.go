package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// storageFaultConn is a hand-written fault injector around the real
// engine's Conn: while fault is set, inserts fail with that error (into the
// events table only, or into every table with everywhere), as a ClickHouse
// whose disk is full, read-only or refusing access would; otherwise it
// passes through.
type storageFaultConn struct {
	store.Conn
	mu         sync.Mutex
	fault      error
	everywhere bool
	failed     atomic.Int32 // inserts that failed because of the fault
}

func (c *storageFaultConn) set(err error, everywhere bool) {
	c.mu.Lock()
	c.fault, c.everywhere = err, everywhere
	c.mu.Unlock()
}

func (c *storageFaultConn) Insert(ctx context.Context, table string, cols []string, rows [][]any, o store.InsertOptions) error {
	c.mu.Lock()
	fault, everywhere := c.fault, c.everywhere
	c.mu.Unlock()
	if fault != nil && (everywhere || table == EventsTable) {
		c.failed.Add(1)
		return fmt.Errorf("store: insert into %s: %w", table, fault)
	}
	return c.Conn.Insert(ctx, table, cols, rows, o)
}

// runSink starts a sink of the fixture's group over db and returns it with
// a stop function that waits for it.
func (f *sinkFixture) runSink(t *testing.T, db store.Conn, reg *prometheus.Registry, events schemas.Options) (*Sink, func() error) {
	t.Helper()
	s, err := NewSink(SinkConfig{GroupID: f.group, BatchSize: 128, FlushInterval: 200 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, LagInterval: 100 * time.Millisecond},
		f.k, events, Anonymizer{}, db, reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(60 * time.Second):
				result = errors.New("sink did not stop within 60s")
			}
		})
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return s, stop
}

func gaugeValue(reg *prometheus.Registry, name string) float64 {
	return testutil.ToFloat64(mustVec(reg, name))
}

func committedLag(t *testing.T, f *sinkFixture) int64 {
	t.Helper()
	lag, err := GroupLag(context.Background(), testenv.KafkaClient(f.k.Brokers), f.group, f.k.Topic)
	if err != nil {
		t.Fatal(err)
	}
	return TotalLag(lag)
}

// TestSinkStallsOnStorageFaults makes every insert into the events table
// fail with each error of the environment (disk full, read-only, access
// denied, cancelled, ...) while the health probe and the canary still
// work. The sink must stall: no dead letter, no offset committed, /readyz
// (Ready) failing and meterline_sink_stalled at 1; and once the fault
// clears it stores every event exactly once by itself and reports 0.
func TestSinkStallsOnStorageFaults(t *testing.T) {
	db := requireDB(t)
	faults := []struct {
		name string
		err  error
	}{
		{"disk full", &store.QueryError{Code: 243, Message: "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)"}},
		{"read-only", &store.QueryError{Code: 164, Message: "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)"}},
		{"access denied", &store.QueryError{Code: 497, Message: "Code: 497. DB::Exception: meterline: Not enough privileges. To execute this query, it's necessary to have the grant INSERT ON meterline.events. (ACCESS_DENIED)"}},
		{"cancelled", &store.QueryError{Code: 394, Message: "Code: 394. DB::Exception: Query was cancelled. (QUERY_WAS_CANCELLED)"}},
		{"no space errno", &store.QueryError{Code: 1001, Message: "Code: 1001. DB::Exception: std::__1::__fs::filesystem::filesystem_error: filesystem error: in create_directories: No space left on device. (STD_EXCEPTION)"}},
		{"schema missing", &store.QueryError{Code: 60, Message: "Code: 60. DB::Exception: Table meterline.events does not exist. (UNKNOWN_TABLE)"}},
	}
	for _, fc := range faults {
		t.Run(fc.name, func(t *testing.T) {
			conn := &storageFaultConn{Conn: db}
			conn.set(fc.err, false)
			f := newSinkFixture(t)
			key := testenv.Unique("key")
			var values [][]byte
			for i := 0; i < 200; i++ {
				values = append(values, eventJSON(t, fmt.Sprintf("sf-%d", i), key))
			}
			f.produce(t, key, values...)
			reg := prometheus.NewRegistry()
			s, stop := f.runSink(t, conn, reg, schemas.Options{})
			waitFor(t, 60*time.Second, func() error {
				if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
					t.Fatalf("%d events dead-lettered during a storage fault (first: %s), want 0", len(dead), headerValue(dead[0], HeaderError))
				}
				if n := conn.failed.Load(); n < 6 {
					return fmt.Errorf("%d failed inserts so far", n)
				}
				if g := gaugeValue(reg, "meterline_sink_stalled"); g != 1 {
					return fmt.Errorf("meterline_sink_stalled = %v during the fault, want 1", g)
				}
				if err := s.Ready(context.Background()); err == nil {
					return errors.New("Ready = nil during the fault")
				}
				return nil
			})
			if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
				t.Fatalf("%d events dead-lettered during a storage fault (first: %s), want 0", len(dead), headerValue(dead[0], HeaderError))
			}
			if lag := committedLag(t, f); lag != 200 {
				t.Fatalf("committed lag %d during the fault, want 200 (no offset moves)", lag)
			}
			conn.set(nil, false)
			waitStored(t, db, key, 200)
			waitFor(t, 30*time.Second, func() error {
				if g := gaugeValue(reg, "meterline_sink_stalled"); g != 0 {
					return fmt.Errorf("meterline_sink_stalled = %v after the fault cleared, want 0", g)
				}
				if err := s.Ready(context.Background()); err != nil {
					return fmt.Errorf("Ready after the fault cleared: %v", err)
				}
				if lag := committedLag(t, f); lag != 0 {
					return fmt.Errorf("committed lag %d after the fault cleared", lag)
				}
				return nil
			})
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if rows, final, distinct := countStored(t, db, key); rows != 200 || final != 200 || distinct != 200 {
				t.Fatalf("rows %d final %d distinct %d, want 200 each (stored exactly once)", rows, final, distinct)
			}
			if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
				t.Fatalf("%d events dead-lettered, want 0", len(dead))
			}
		})
	}
}

// TestSinkBlamesRowsOnlyWhenTheCanaryIsStored fails every insert, the
// canary's too, with an error whose code says nothing about its cause: the
// sink must not split the batch and dead-letter it, but stall until inserts
// work again. A row that fails while the canary is stored is dead-lettered.
func TestSinkBlamesRowsOnlyWhenTheCanaryIsStored(t *testing.T) {
	db := requireDB(t)
	conn := &storageFaultConn{Conn: db}
	conn.set(&store.QueryError{Code: 1002, Message: "Code: 1002. DB::Exception: Unexpected failure. (UNKNOWN_EXCEPTION)"}, true)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 100; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("cn-%d", i), key))
	}
	f.produce(t, key, values...)
	reg := prometheus.NewRegistry()
	_, stop := f.runSink(t, conn, reg, schemas.Options{})
	waitFor(t, 60*time.Second, func() error {
		if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
			t.Fatalf("%d events dead-lettered while the canary failed too, want 0 (first: %s)", len(dead), headerValue(dead[0], HeaderError))
		}
		if n := conn.failed.Load(); n < 12 {
			return fmt.Errorf("%d failed inserts so far", n)
		}
		if g := gaugeValue(reg, "meterline_sink_stalled"); g != 1 {
			return fmt.Errorf("meterline_sink_stalled = %v, want 1 while the canary fails", g)
		}
		return nil
	})
	if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered while the canary failed too, want 0", len(dead))
	}
	conn.set(nil, true)
	waitStored(t, db, key, 100)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if dead := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(dead) != 0 {
		t.Fatalf("%d events dead-lettered, want 0", len(dead))
	}
	if n := testenv.Count(t, db, "SELECT count() FROM sink_canary WHERE sink = {g:String}", store.P("g", f.group)); n != 0 {
		t.Fatalf("%d canary rows stored while the canary failed", n)
	}
}

// TestSinkJudgesEventTimeByItsOwnClock produces events whose Kafka
// timestamps are their own times, one a month over 15 years, as a gateway
// producing straight to Kafka may stamp them, and recent events after them.
// The window is checked against the sink's clock (the Kafka timestamp only
// within the lateness window): the old events are dead-lettered as invalid
// instead of making inserts that span hundreds of monthly partitions fail
// forever, and the recent ones are stored.
func TestSinkJudgesEventTimeByItsOwnClock(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	now := time.Now().UTC()
	var msgs []kafka.Message
	for i := 0; i < 180; i++ {
		at := now.AddDate(0, -3-i, 0)
		v := eventJSON(t, fmt.Sprintf("old-%d", i), key, func(m map[string]any) { m["time"] = at.Format(time.RFC3339Nano) })
		msgs = append(msgs, kafka.Message{Key: []byte(key), Value: v, Time: at})
	}
	for i := 0; i < 50; i++ {
		msgs = append(msgs, kafka.Message{Key: []byte(key), Value: eventJSON(t, fmt.Sprintf("new-%d", i), key)})
	}
	if err := f.writer.WriteMessages(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	_, stop := f.runSink(t, db, prometheus.NewRegistry(), schemas.Options{})
	waitStored(t, db, key, 50)
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) != 180 {
			return fmt.Errorf("%d dead letters, want the 180 old events", len(dead))
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dead {
		if headerValue(d, HeaderErrorReason) != "invalid" || !strings.Contains(headerValue(d, HeaderError), "time") {
			t.Fatalf("dead letter %s: class %q reason %q, want invalid naming time", d.Value, headerValue(d, HeaderErrorReason), headerValue(d, HeaderError))
		}
	}
	if _, final, _ := countStored(t, db, key); final != 50 {
		t.Fatalf("%d events stored, want the 50 recent ones", final)
	}
}

// TestSinkTruncatesDeadLettersTooLargeForTheTopic produces an invalid
// message just under the events topic's max.message.bytes (1,048,400
// bytes): with the dead-letter headers it no longer fits the dead-letter
// topic, and the broker would refuse it for ever. It is
// truncated, with its original size, source offset and reason in headers,
// and the events after it are stored (the sink does not stall on it).
func TestSinkTruncatesDeadLettersTooLargeForTheTopic(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	big := []byte(`{"id":"huge","route":"` + strings.Repeat("a", 1_048_376) + `"}`)
	f.produce(t, key, big)
	var values [][]byte
	for i := 0; i < 20; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("after-%d", i), key))
	}
	f.produce(t, key, values...)
	reg := prometheus.NewRegistry()
	_, stop := f.runSink(t, db, reg, schemas.Options{})
	waitStored(t, db, key, 20)
	var dead []kafka.Message
	waitFor(t, 30*time.Second, func() error {
		dead = topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)
		if len(dead) != 1 {
			return fmt.Errorf("%d dead letters, want 1", len(dead))
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	d := dead[0]
	if headerValue(d, HeaderTruncated) != "true" || headerValue(d, HeaderOriginalSize) != strconv.Itoa(len(big)) {
		t.Fatalf("headers truncated=%q original-size=%q, want true and %d", headerValue(d, HeaderTruncated), headerValue(d, HeaderOriginalSize), len(big))
	}
	if src := headerValue(d, HeaderSource); !strings.HasPrefix(src, f.k.Topic+"/") || !strings.HasSuffix(src, "/0") {
		t.Fatalf("source header %q, want %s/<partition>/0", src, f.k.Topic)
	}
	if !strings.Contains(headerValue(d, HeaderError), "route") || headerValue(d, HeaderErrorReason) != "invalid" {
		t.Fatalf("reason %q class %q", headerValue(d, HeaderError), headerValue(d, HeaderErrorReason))
	}
	if len(d.Value) >= len(big) || !strings.HasPrefix(string(big), string(d.Value)) {
		t.Fatalf("value of %d bytes, want a prefix of the original %d", len(d.Value), len(big))
	}
	if got := gaugeValue(reg, "meterline_sink_dead_letters_truncated_total"); got != 1 {
		t.Fatalf("truncated metric %v, want 1", got)
	}
}

// TestSinkStallsWhileTheDeadLetterTopicIsUnwritable deletes the dead-letter
// topic: the dead-letter write is retried a bounded number of times, then
// the sink reports itself stalled and commits nothing past the message it
// could not dead-letter; once the topic is back, it resumes.
func TestSinkStallsWhileTheDeadLetterTopicIsUnwritable(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	f.produce(t, key, []byte("not json"))
	var values [][]byte
	for i := 0; i < 10; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("dl-%d", i), key))
	}
	f.produce(t, key, values...)
	client := testenv.KafkaClient(f.k.Brokers)
	res, err := client.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{f.k.DeadLetterTopic}})
	if err != nil || res.Errors[f.k.DeadLetterTopic] != nil {
		t.Fatalf("delete topic: %v %v", err, res)
	}
	waitFor(t, 60*time.Second, func() error {
		md, err := client.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{f.k.DeadLetterTopic}})
		if err != nil {
			return err
		}
		if len(md.Topics) == 1 && md.Topics[0].Error == nil {
			return errors.New("the dead-letter topic still exists")
		}
		return nil
	})
	reg := prometheus.NewRegistry()
	s, stop := f.runSink(t, db, reg, schemas.Options{})
	waitFor(t, 60*time.Second, func() error {
		if g := gaugeValue(reg, "meterline_sink_stalled"); g != 1 {
			return fmt.Errorf("meterline_sink_stalled = %v while the dead-letter topic is missing, want 1", g)
		}
		if err := s.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "dead_letter") {
			return fmt.Errorf("Ready = %v, want the dead-letter stall", err)
		}
		return nil
	})
	if lag := committedLag(t, f); lag != 11 {
		t.Fatalf("committed lag %d while the dead letter is unwritten, want 11", lag)
	}
	waitFor(t, 60*time.Second, func() error { return EnsureTopics(context.Background(), f.k) })
	waitFor(t, 60*time.Second, func() error {
		if n := len(topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic)); n != 1 {
			return fmt.Errorf("%d dead letters, want 1", n)
		}
		if g := gaugeValue(reg, "meterline_sink_stalled"); g != 0 {
			return fmt.Errorf("meterline_sink_stalled = %v after the topic is back", g)
		}
		if lag := committedLag(t, f); lag != 0 {
			return fmt.Errorf("committed lag %d", lag)
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, final, _ := countStored(t, db, key); final != 10 {
		t.Fatalf("%d stored, want 10", final)
	}
}
