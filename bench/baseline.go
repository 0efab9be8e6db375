package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// openStore opens the embedded engine in this process: the run's data
// directory once the sink has stopped, or a temporary one.
func (r *runner) openStore(ctx context.Context) (store.Conn, func(), error) {
	dir := r.dataDir
	cleanup := func() {}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "meterline-bench-ch-")
		if err != nil {
			return nil, nil, err
		}
		dir = filepath.Join(tmp, "clickhouse")
		cleanup = func() { _ = os.RemoveAll(tmp) }
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := store.Open(ctx, store.Config{DataDir: dir}, log)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	if _, err := store.Migrate(ctx, db, store.MigrateOptions{RawRetentionMonths: 12, RollupRetentionMonths: 12}, log); err != nil {
		db.Close()
		cleanup()
		return nil, nil, err
	}
	return db, func() { db.Close(); cleanup() }, nil
}

// check counts the run's events in the stopped sink's table (FINAL) and
// compares them with the distinct ids the collector accepted.
func (r *runner) check(ctx context.Context) {
	c := &r.res.Check
	c.DistinctSent = r.distinctAccepted.Load()
	switch {
	case r.dataDir == "":
		c.Note = "not available when driving a running server"
		return
	case r.failed.Load() > 0:
		c.Note = fmt.Sprintf("%d batches were never accepted; their duplicates make the expected count uncertain", r.failed.Load())
	}
	db, closeDB, err := r.openStore(ctx)
	if err != nil {
		c.Note = "opening the data directory: " + err.Error()
		return
	}
	r.db, r.closeDB = db, closeDB
	rows, err := db.Query(ctx, "SELECT count(), uniqExact(id) FROM events FINAL WHERE startsWith(customer_id, {p:String})",
		store.P("p", r.cfg.Traffic.CustomerPrefix()))
	if err != nil {
		c.Note = "counting: " + err.Error()
		return
	}
	defer rows.Close()
	for rows.Next() {
		var n, d uint64
		if err := rows.Scan(&n, &d); err != nil {
			c.Note = err.Error()
			return
		}
		c.StoredRows, c.StoredDistinct = int64(n), int64(d)
	}
	c.Done = true
	c.OK = c.StoredDistinct == c.DistinctSent && c.StoredRows == c.StoredDistinct
}

// baselines measures, on events generated like the run's: kafka-go
// producing them to a fresh topic (the collector's writer settings) and
// consuming them in a consumer group (the sink's reader settings), and the
// engine inserting the same rows in one bulk insert.
func (r *runner) baselines(ctx context.Context) Baseline {
	b := Baseline{Events: r.cfg.BaselineEvents}
	n := r.cfg.BaselineEvents
	tr := r.cfg.Traffic
	tr.Prefix = "b" + r.runID + "base"
	g := NewGenerator(tr, "base", r.cfg.Seed)
	now := time.Now()
	buf := make([]byte, 0, n*600)
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		s := len(buf)
		var key string
		buf, key, _ = g.Append(buf, now)
		msgs[i] = kafka.Message{Key: []byte(key), Value: buf[s:len(buf):len(buf)]}
	}
	// Rows first (untimed), and the insert while Kafka is idle.
	rows := make([][]any, 0, n)
	ref := time.Now()
	for i := range msgs {
		ev, err := (schemas.Options{}).DecodeEvent(msgs[i].Value, ref)
		if err != nil {
			b.Error = "decoding baseline events: " + err.Error()
			return b
		}
		rows = append(rows, ingest.EventRow(&ev, i%r.cfg.Partitions, int64(i), ref.UTC()))
	}
	if r.db == nil {
		db, closeDB, err := r.openStore(ctx)
		if err != nil {
			b.Error = "opening the engine: " + err.Error()
		} else {
			r.db, r.closeDB = db, closeDB
		}
	}
	if r.db != nil {
		t0 := time.Now()
		err := r.db.Insert(ctx, ingest.EventsTable, ingest.EventColumns, rows, store.InsertOptions{DedupToken: tr.Prefix})
		if err != nil {
			b.Error = "bulk insert: " + err.Error()
		} else {
			b.InsertSeconds = time.Since(t0).Seconds()
			b.Insert = float64(n) / b.InsertSeconds
		}
		r.closeDB()
		r.db, r.closeDB = nil, nil
	}
	rows = nil

	k := r.kcfg
	k.Topic = "bench-raw-" + r.runID
	k.DeadLetterTopic = k.Topic + ".dlq"
	k.Partitions = r.cfg.Partitions
	if err := ingest.EnsureTopics(ctx, k); err != nil {
		b.Error = join(b.Error, "raw topic: "+err.Error())
		return b
	}
	w, err := ingest.NewProducer(k)
	if err != nil {
		b.Error = join(b.Error, err.Error())
		return b
	}
	// The collector's shape: concurrent writers of BatchEvents messages.
	t0 := time.Now()
	var wg sync.WaitGroup
	var werr error
	var mu sync.Mutex
	per := r.cfg.BatchEvents
	next := make(chan []kafka.Message)
	for c := 0; c < r.cfg.Connections; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range next {
				if err := w.WriteMessages(ctx, m...); err != nil {
					mu.Lock()
					werr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i += per {
		next <- msgs[i:min(i+per, n)]
	}
	close(next)
	wg.Wait()
	_ = w.Close()
	if werr != nil {
		b.Error = join(b.Error, "raw produce: "+werr.Error())
		return b
	}
	b.KafkaProduce = float64(n) / time.Since(t0).Seconds()

	rate, err := consume(ctx, k, "bench-raw-"+r.runID, n)
	if err != nil {
		b.Error = join(b.Error, "raw consume: "+err.Error())
		return b
	}
	b.KafkaConsume = rate
	deleteTopics(ctx, k, k.Topic, k.DeadLetterTopic)
	return b
}

// consume reads n messages with the sink's reader settings, committing
// every 10,000 like the sink's default batch, and returns messages/s from
// the first message (the group join is not counted).
func consume(ctx context.Context, k ingest.KafkaConfig, group string, n int) (float64, error) {
	dialer, err := k.Dialer()
	if err != nil {
		return 0, err
	}
	rd := kafka.NewReader(kafka.ReaderConfig{
		Brokers: k.Brokers, GroupID: group, Topic: k.Topic, Dialer: dialer,
		QueueCapacity: 10000, MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond,
		CommitInterval: 0, StartOffset: kafka.FirstOffset, HeartbeatInterval: 3 * time.Second,
		SessionTimeout: 30 * time.Second, RebalanceTimeout: 30 * time.Second,
	})
	defer rd.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	batch := make([]kafka.Message, 0, 10000)
	var t0 time.Time
	for got := 0; got < n; got++ {
		m, err := rd.FetchMessage(cctx)
		if err != nil {
			return 0, err
		}
		if got == 0 {
			t0 = time.Now()
		}
		batch = append(batch, m)
		if len(batch) == cap(batch) || got == n-1 {
			if err := rd.CommitMessages(cctx, batch...); err != nil {
				return 0, err
			}
			batch = batch[:0]
		}
	}
	return float64(n-1) / time.Since(t0).Seconds(), nil
}

func deleteTopics(ctx context.Context, k ingest.KafkaConfig, topics ...string) {
	tr, err := k.Transport()
	if err != nil {
		return
	}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(k.Brokers...), Transport: tr, Timeout: 10 * time.Second}
	_, _ = c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics})
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// ratio relates the throughput phase to the slower baseline.
func (r *runner) ratio() {
	b := r.res.Baseline
	// A fixed-rate phase measures the offered rate, not what the pipeline can do.
	if len(r.res.Phases) == 0 || r.cfg.Rate > 0 || b.KafkaConsume == 0 || b.Insert == 0 {
		return
	}
	lim, name := b.KafkaConsume, "kafka consume"
	if b.Insert < lim {
		lim, name = b.Insert, "engine insert"
	}
	r.res.Ratio = r.res.Phases[0].Rate / lim
	r.res.Limit = name
}
