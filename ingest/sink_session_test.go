package ingest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
)

// TestSinkSessionTimeoutReachesTheBroker checks that sink.session_timeout
// is the session timeout the sink joins its consumer group with, on the
// real broker. A sink with a 6s session timeout and a reference member
// with 20s (plain kafka-go) share a group; a proxy then drops every byte
// of both, as a network partition would, so neither heartbeats nor
// leaves. The broker must drop the sink first, while the reference member
// is still listed: a sink joining with any session timeout of 20s or more
// (such as a fixed 30s) would outlive it. Nothing here is timed: only the
// order in which the broker gives up on the two members is checked.
func TestSinkSessionTimeoutReachesTheBroker(t *testing.T) {
	db := requireDB(t)
	brokers := testenv.KafkaBrokers(t)
	k := KafkaConfig{Brokers: brokers, Topic: testenv.Unique("events"), Partitions: 2}.WithDefaults()
	if err := EnsureTopics(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	group := testenv.Unique("sink")
	px := newBlackholeProxy(t)

	sinkID, refID := testenv.Unique("sink-member"), testenv.Unique("reference-member")
	sk := k
	sk.ClientID = sinkID
	sk.dial = px.dial
	s, err := NewSink(SinkConfig{GroupID: group, FlushInterval: 100 * time.Millisecond, SessionTimeout: 6 * time.Second},
		sk, schemas.Options{}, Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		// Close the proxy's connections first, so that the sink's stop
		// does not wait on a blackholed broker.
		px.mu.Lock()
		for _, ln := range px.lns {
			_ = ln.Close()
		}
		for _, c := range px.open {
			_ = c.Close()
		}
		px.mu.Unlock()
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Error("the sink did not stop")
		}
	})

	ref := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           brokers,
		GroupID:           group,
		Topic:             k.Topic,
		Dialer:            &kafka.Dialer{ClientID: refID, Timeout: 5 * time.Second, DialFunc: px.dial},
		HeartbeatInterval: time.Second,
		SessionTimeout:    20 * time.Second,
		RebalanceTimeout:  20 * time.Second,
		ErrorLogger:       kafka.LoggerFunc(func(string, ...any) {}),
	})
	refCtx, refCancel := context.WithCancel(context.Background())
	refDone := make(chan struct{})
	go func() {
		defer close(refDone)
		for {
			if _, err := ref.FetchMessage(refCtx); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { refCancel(); <-refDone; _ = ref.Close() })

	kc := testenv.KafkaClient(brokers)
	members := func() (map[string]bool, error) {
		g, err := kc.DescribeGroups(context.Background(), &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err != nil {
			return nil, err
		}
		if len(g.Groups) != 1 {
			return nil, fmt.Errorf("%d groups", len(g.Groups))
		}
		if g.Groups[0].Error != nil {
			return nil, g.Groups[0].Error
		}
		in := map[string]bool{}
		for _, m := range g.Groups[0].Members {
			in[m.ClientID] = true
		}
		return in, nil
	}
	// Both must have joined one generation before the cut.
	testenv.Eventually(t, 2*time.Minute, func() error {
		in, err := members()
		if err != nil {
			return err
		}
		if !in[sinkID] || !in[refID] || len(in) != 2 {
			return fmt.Errorf("group members %v; want the sink and the reference member", in)
		}
		return nil
	})

	px.blackhole()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		in, err := members()
		if err == nil && !in[sinkID] {
			if !in[refID] {
				t.Fatalf("the broker dropped the reference member (session timeout 20s) no later than the sink (sink.session_timeout 6s): members %v", in)
			}
			return
		}
		if err == nil && !in[refID] {
			t.Fatalf("the broker dropped the reference member (session timeout 20s) while the sink (sink.session_timeout 6s) stayed: members %v", in)
		}
		if time.Now().After(deadline) {
			var names []string
			for n := range in {
				names = append(names, n)
			}
			t.Fatalf("the broker never dropped the cut-off sink (members %s, %v)", strings.Join(names, ", "), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
