package ingest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// benchBatch renders n events of customer cust as a JSON array, spread over
// 1,000 api keys.
func benchBatch(cust string, from, n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	now := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	for i := from; i < from+n; i++ {
		if i > from {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"%s-%d","time":"%s","api_key_id":"key-%d","customer_id":"%s","method":"GET","route":"/v1/items/{id}","status":%d,"latency_ms":%d.5,"request_bytes":310,"response_bytes":%d,"client_ip":"198.51.100.%d","user_agent":"sdk-go/1.2","properties":{"plan":"pro","region":"eu"}}`,
			cust, i, now, i%1000, cust, 200+(i%50)/49*300, i%200, 1000+i%5000, i%250)
	}
	b.WriteByte(']')
	return b.Bytes()
}

func countCustomer(b *testing.B, db store.Conn, cust string) uint64 {
	rows, err := db.Query(context.Background(), "SELECT count() FROM events WHERE customer_id = {c:String}", store.P("c", cust))
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var n uint64
	for rows.Next() {
		_ = rows.Scan(&n)
	}
	return n
}

// BenchmarkPipelineHTTPToStored measures events/s from POST /v1/events
// (1,000-event batches, 4 concurrent clients) through Kafka and the sink
// until the rows are in the embedded engine's raw table. Run with a fixed
// count, e.g. -benchtime=200000x (see docs/performance.md).
func BenchmarkPipelineHTTPToStored(b *testing.B) {
	db := requireDB(b)
	brokers := testenv.KafkaBrokers(b)
	k := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("bench"), Partitions: 6}.WithDefaults()
	if err := EnsureTopics(context.Background(), k); err != nil {
		b.Fatal(err)
	}
	w, err := NewProducer(k)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	srv := httptest.NewServer(NewCollector(CollectorConfig{}, schemas.Options{}, Anonymizer{}, testTokens(b), w, prometheus.NewRegistry(), quietLog()))
	defer srv.Close()
	sink, err := NewSink(SinkConfig{GroupID: k.Topic}, k, schemas.Options{}, Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sink.Run(ctx) }()
	defer func() { cancel(); <-done }()

	cust := testenv.Unique("bench")
	const per = 1000
	batches := (b.N + per - 1) / per
	bodies := make([][]byte, batches)
	for i := range bodies {
		bodies[i] = benchBatch(cust, i*per, min(per, b.N-i*per))
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan []byte)
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range next {
				req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tokIngest)
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != http.StatusAccepted {
					b.Errorf("post: %v %v", err, resp)
					return
				}
				resp.Body.Close()
			}
		}()
	}
	for _, body := range bodies {
		next <- body
	}
	close(next)
	wg.Wait()
	accepted := time.Since(start)
	for countCustomer(b, db, cust) < uint64(b.N) {
		time.Sleep(20 * time.Millisecond)
	}
	stored := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
	b.ReportMetric(float64(b.N)/stored.Seconds(), "stored/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkBaselineInsert is the same rows inserted straight into the
// embedded engine in 10,000-row batches: the ceiling the sink works under.
func BenchmarkBaselineInsert(b *testing.B) {
	db := requireDB(b)
	cust := testenv.Unique("base")
	opts := schemas.Options{}
	now := time.Now()
	const per = 10000
	var batches [][][]any
	for from := 0; from < b.N; from += per {
		results, err := opts.DecodeBatch("application/json", benchBatch(cust, from, min(per, b.N-from)), now)
		if err != nil {
			b.Fatal(err)
		}
		rows := make([][]any, len(results))
		for i, r := range results {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
			rows[i] = eventRow(&r.Event, &kafka.Message{}, now)
		}
		batches = append(batches, rows)
	}
	b.ResetTimer()
	start := time.Now()
	for i, rows := range batches {
		if err := db.Insert(context.Background(), EventsTable, EventColumns, rows, store.InsertOptions{DedupToken: cust + strconv.Itoa(i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "stored/s")
	b.ReportMetric(0, "ns/op")
}
