package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
)

// clusterLoad posts batches to the collectors from a few workers each, as
// gateways would: a batch answered 503 is sent again (same ids, same
// times) until it gets 202, so every batch sent is in the end acknowledged,
// and a partly written batch reaches Kafka more than once.
type clusterLoad struct {
	t          *testing.T
	keys       []string // keys[0] is the busy key: half of every batch
	batch      int
	clientWait time.Duration // the collector's produce_timeout plus a margin

	mu       sync.Mutex
	acks     []ackRecord    // every 202, in the order answered
	sentIDs  int            // events of the batches acknowledged
	batches  map[string]int // per worker, batches acknowledged (numbered from 0)
	n503     int
	fails    []time.Time // when each 503 was answered
	slowest  time.Duration
	bad      []string // answers other than 202 and 503, transport errors, timeouts
	stop     chan struct{}
	finished sync.WaitGroup
}

type ackRecord struct {
	sent, answered time.Time
	events         int
}

func (l *clusterLoad) run(addrs []string, workersPer int) {
	l.stop = make(chan struct{})
	l.batches = map[string]int{}
	for c, addr := range addrs {
		for w := range workersPer {
			l.finished.Add(1)
			go l.worker(fmt.Sprintf("c%dw%d", c, w), addr)
		}
	}
}

func (l *clusterLoad) worker(name, addr string) {
	defer l.finished.Done()
	client := &http.Client{Timeout: l.clientWait}
	for b := 0; ; b++ {
		select {
		case <-l.stop:
			return
		default:
		}
		now := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
		var evs []any
		for i := range l.batch {
			key := l.keys[0]
			if i%2 == 1 {
				key = l.keys[1+(i/2)%(len(l.keys)-1)]
			}
			ev := event(fmt.Sprintf("%s-b%d-e%d", name, b, i), key)
			ev["time"] = now
			evs = append(evs, ev)
		}
		body, _ := json.Marshal(evs)
		// Until 202: a gateway that got 503 retries the same batch. The
		// pause is shorter than Retry-After so that recovery is seen within
		// a fraction of a second.
		for attempt := 0; ; attempt++ {
			sent := time.Now()
			status, msg := l.post(client, addr, body)
			l.mu.Lock()
			l.slowest = max(l.slowest, time.Since(sent))
			switch status {
			case http.StatusAccepted:
				l.acks = append(l.acks, ackRecord{sent: sent, answered: time.Now(), events: l.batch})
				l.sentIDs += l.batch
				l.batches[name]++
			case http.StatusServiceUnavailable:
				l.n503++
				l.fails = append(l.fails, time.Now())
			default:
				l.bad = append(l.bad, fmt.Sprintf("%s batch %d attempt %d after %s: %s", name, b, attempt, time.Since(sent).Round(time.Millisecond), msg))
			}
			l.mu.Unlock()
			if status == http.StatusAccepted {
				break
			}
			if status != http.StatusServiceUnavailable && status != 0 {
				return // a wrong answer: the test fails on it
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// post sends one batch; status 0 is a transport error or a timeout.
func (l *clusterLoad) post(client *http.Client, addr string, body []byte) (int, string) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e2eIngestToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
		return -1, "503 without Retry-After"
	}
	return resp.StatusCode, fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
}

// finish stops the workers once their batch in flight is acknowledged.
func (l *clusterLoad) finish() {
	close(l.stop)
	l.finished.Wait()
}

// ackedAfter counts the events of batches that were sent at or after t and
// answered 202, and the time of the first such answer.
func (l *clusterLoad) ackedAfter(t time.Time) (events int, first time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.acks {
		if !a.sent.Before(t) {
			events += a.events
			if first.IsZero() || a.answered.Before(first) {
				first = a.answered
			}
		}
	}
	return events, first
}

// ackedBetween counts the events answered 202 within [from, to).
func (l *clusterLoad) ackedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.acks {
		if !a.answered.Before(from) && a.answered.Before(to) {
			n += a.events
		}
	}
	return n
}

// outage returns, for the answers after t: how many were 503, when the
// last 503 came, and the longest time between two 202s (or from t to the
// first one).
func (l *clusterLoad) outage(t time.Time) (n503 int, last time.Time, gap time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.fails {
		if !f.Before(t) {
			n503++
			last = f
		}
	}
	prev := t
	for _, a := range l.acks {
		if a.answered.Before(t) {
			continue
		}
		gap = max(gap, a.answered.Sub(prev))
		prev = a.answered
	}
	return n503, last, gap
}

func (l *clusterLoad) badAnswers() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.bad...)
}

// faultReport is what one fault cost: how long until acknowledgements
// resumed, and the rate meanwhile against the rate before it.
type faultReport struct {
	name           string
	leaderMoved    time.Duration // from the fault to a new leader of every partition the node led
	n503           int           // 503 answers from the fault until in sync again
	lastFail       time.Duration // from the fault to the last of them: ingest is back after it
	gap            time.Duration // the longest time without a 202
	healed         time.Duration // from the fault to every replica back in sync
	rate, baseline float64       // events/s acknowledged from the fault until healed, and in the window before it
}

func (r faultReport) String() string {
	if r.leaderMoved == 0 { // no election: the quorum was lost
		return fmt.Sprintf("%-32s %3d answers 503 until %6s, longest without 202 %6s, in sync again %6s; %5.0f events/s from fault to in sync (%5.0f before: ratio %.2f)",
			r.name, r.n503, r.lastFail.Round(10*time.Millisecond), r.gap.Round(10*time.Millisecond),
			r.healed.Round(10*time.Millisecond), r.rate, r.baseline, r.rate/r.baseline)
	}
	return fmt.Sprintf("%-32s new leader %6s, %3d answers 503 until %6s, longest without 202 %6s, in sync again %6s; %5.0f events/s from fault to in sync (%5.0f before: ratio %.2f)",
		r.name, r.leaderMoved.Round(10*time.Millisecond), r.n503, r.lastFail.Round(10*time.Millisecond), r.gap.Round(10*time.Millisecond),
		r.healed.Round(10*time.Millisecond), r.rate, r.baseline, r.rate/r.baseline)
}

// TestClusterFaultsUnderLoad runs two collector processes (`serve
// --roles=collector`) and one sink process (`serve --roles=sink`, the
// embedded engine) against a three-node Kafka cluster, topics with
// replication factor 3 and min.insync.replicas=2, while six workers post
// batches as gateways do. It SIGKILLs the leader of the busy partition,
// starts it again, SIGKILLs another node and starts it again, restarts
// all three nodes one by one, and last kills two nodes at once (nothing
// may be acknowledged then) and starts them again. Afterwards every event
// answered 202 is stored exactly once, the collectors answered nothing but
// 202 and 503 (within their produce_timeout), nothing was dead-lettered,
// and the sink went on by itself. It logs, per fault, the time until new
// leaders, the 503s and the longest time without a 202, and the
// acknowledged events/s against the rate just before the fault (`make
// faults` runs it alone and shows these lines).
func TestClusterFaultsUnderLoad(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	cl := testenv.StartCluster(t)
	topic := testenv.Unique("e2e-cluster")
	kafkaExtra := "  replication_factor: 3\n"
	sinkCfg, sinkAddr := writeConfigKafka(t, cl.Bootstrap(), topic, kafkaExtra, "")
	sink, sinkLog := start(t, sinkCfg, sinkAddr, "--roles=sink")
	var colAddrs []string
	for range 2 {
		cfg, addr := writeConfigKafka(t, cl.Bootstrap(), topic, kafkaExtra, "")
		start(t, cfg, addr, "--roles=collector")
		colAddrs = append(colAddrs, addr)
	}
	ctx := context.Background()
	offsets := "__consumer_offsets"
	testenv.Eventually(t, 60*time.Second, func() error { return cl.FullyReplicated(ctx, topic, topic+".dlq") })
	parts, err := cl.Partitions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if len(p.ISR) != 3 {
			t.Fatalf("partition %d has replicas %v in sync, want 3", p.Partition, p.ISR)
		}
	}
	checkTopicConfig(t, cl, topic)

	// Six keys over the three partitions, each partition with at least one,
	// so that every batch needs every partition's leader.
	partitionOf := func(key string) int {
		return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(key)}, 0, 1, 2)
	}
	keys := []string{testenv.Unique("key")} // the busy key
	for p := range 3 {
		for {
			if k := testenv.Unique("key"); partitionOf(k) == p {
				keys = append(keys, k)
				break
			}
		}
	}
	keys = append(keys, testenv.Unique("key"), testenv.Unique("key"))
	busy := partitionOf(keys[0])
	load := &clusterLoad{t: t, keys: keys, batch: 100, clientWait: 3*time.Second + 5*time.Second}
	load.run(colAddrs, 3)
	stopped := false
	defer func() {
		if !stopped {
			load.finish()
		}
	}()

	// The load is up when the sink committed offsets past some events (the
	// group's offsets topic exists from then on).
	testenv.Eventually(t, 90*time.Second, func() error {
		if n, err := metric(sinkAddr, "meterline_sink_events_stored_total"); err != nil || n < 2000 {
			return fmt.Errorf("%v events stored so far (%v)", n, err)
		}
		return nil
	})
	testenv.Eventually(t, 60*time.Second, func() error { return cl.FullyReplicated(ctx, offsets) })

	var reports []faultReport
	// baseline measures the acknowledged rate over the next 3,000 events.
	baseline := func() float64 {
		t0 := time.Now()
		testenv.Eventually(t, 60*time.Second, func() error {
			if n, _ := load.ackedAfter(t0); n < 3000 {
				return fmt.Errorf("%d events acknowledged since %s", n, t0.Format(time.TimeOnly))
			}
			return nil
		})
		return float64(load.ackedBetween(t0, time.Now())) / time.Since(t0).Seconds()
	}
	// fault breaks node id (kill or stop), waits for the signals of
	// recovery, starts the node again and waits until it is in sync.
	fault := func(name string, id int, crash bool) {
		t.Helper()
		r := faultReport{name: name, baseline: baseline()}
		storedBefore, _ := metric(sinkAddr, "meterline_sink_events_stored_total")
		led, _ := cl.Partitions(ctx, topic)
		// A crash counts from the moment the process is gone; a controlled
		// shutdown from SIGTERM (leadership moves before the process exits).
		var t0 time.Time
		if crash {
			cl.Kill(id)
			t0 = time.Now()
		} else {
			t0 = time.Now()
			cl.StopNode(id)
		}
		// Leadership of every partition the node led moves to another node.
		testenv.Eventually(t, 60*time.Second, func() error {
			for _, p := range led {
				if p.Leader == id {
					if err := cl.LeaderOtherThan(ctx, topic, p.Partition, id); err != nil {
						return err
					}
				}
			}
			return nil
		})
		r.leaderMoved = time.Since(t0)
		moved := time.Now()
		// Batches sent after the new leaders are known are acknowledged
		// (every batch holds events of every partition), and the sink goes
		// on storing.
		testenv.Eventually(t, 60*time.Second, func() error {
			if n, _ := load.ackedAfter(moved); n < 2000 {
				return fmt.Errorf("%d events acknowledged from batches sent since the partitions of node %d have new leaders", n, id)
			}
			return nil
		})
		testenv.Eventually(t, 90*time.Second, func() error {
			n, err := metric(sinkAddr, "meterline_sink_events_stored_total")
			if err != nil || n < storedBefore+2000 {
				return fmt.Errorf("the sink stored %v events since node %d went down (%v)", n-storedBefore, id, err)
			}
			return nil
		})
		cl.StartNode(id)
		testenv.Eventually(t, 120*time.Second, func() error { return cl.FullyReplicated(ctx, topic, topic+".dlq", offsets) })
		r.healed = time.Since(t0)
		var last time.Time
		r.n503, last, r.gap = load.outage(t0)
		if !last.IsZero() {
			r.lastFail = last.Sub(t0)
		}
		r.rate = float64(load.ackedBetween(t0, time.Now())) / r.healed.Seconds()
		reports = append(reports, r)
		t.Logf("%s", r)
		if bad := load.badAnswers(); len(bad) > 0 {
			t.Fatalf("the collectors answered %d times with something else than 202 or 503 within %s; first: %s", len(bad), load.clientWait, bad[0])
		}
	}

	leader, err := cl.Leader(ctx, topic, busy)
	if err != nil || leader == 0 {
		t.Fatalf("leader of the busy partition %d: %d, %v", busy, leader, err)
	}
	fault(fmt.Sprintf("kill -9 leader of p%d (node %d)", busy, leader), leader, true)
	// Another node: the busy partition's leader now if it is not the one
	// just restarted, else the next node.
	other, err := cl.Leader(ctx, topic, busy)
	if err != nil || other == 0 || other == leader {
		other = leader%3 + 1
	}
	fault(fmt.Sprintf("kill -9 another node (node %d)", other), other, true)
	for id := 1; id <= 3; id++ {
		fault(fmt.Sprintf("rolling restart: node %d", id), id, false)
	}

	// Two of three nodes down: one replica cannot make min.insync.replicas=2,
	// so with acks=all no batch may be acknowledged; the collectors answer
	// 503 and the gateways keep their batches. Then both come back.
	a, b := leader, leader%3+1
	base := baseline()
	cl.Kill(a)
	cl.Kill(b)
	down := time.Now()
	// Requests in flight at the kills end within produce_timeout; count
	// refusals from then on.
	settled := down.Add(3 * time.Second)
	testenv.Eventually(t, 60*time.Second, func() error {
		if n, _, _ := load.outage(settled); n < 12 {
			return fmt.Errorf("%d answers 503 since nodes %d and %d went down", n, a, b)
		}
		return nil
	})
	if n, _ := load.ackedAfter(down); n != 0 {
		t.Fatalf("%d events acknowledged with 202 while only one of three replicas was up (min.insync.replicas=2)", n)
	}
	refused, _, _ := load.outage(down)
	cl.StartNode(a)
	cl.StartNode(b)
	back := time.Now()
	testenv.Eventually(t, 120*time.Second, func() error {
		if n, _ := load.ackedAfter(back); n < 2000 {
			return fmt.Errorf("%d events acknowledged since nodes %d and %d are back", n, a, b)
		}
		return nil
	})
	testenv.Eventually(t, 120*time.Second, func() error { return cl.FullyReplicated(ctx, topic, topic+".dlq", offsets) })
	r := faultReport{name: fmt.Sprintf("kill -9 two nodes (%d, %d)", a, b), baseline: base, healed: time.Since(down)}
	var last time.Time
	r.n503, last, r.gap = load.outage(down)
	r.lastFail = last.Sub(down)
	r.rate = float64(load.ackedBetween(down, time.Now())) / r.healed.Seconds()
	reports = append(reports, r)
	t.Logf("%s; 0 accepted while down (%d answers 503)", r, refused)

	load.finish()
	stopped = true
	load.mu.Lock()
	acked, n503, batches, slowest := load.sentIDs, load.n503, len(load.acks), load.slowest
	load.mu.Unlock()
	if bad := load.badAnswers(); len(bad) > 0 {
		t.Fatalf("the collectors answered %d times with something else than 202 or 503; first: %s", len(bad), bad[0])
	}

	// The sink catches up by itself: it was never restarted.
	lagClient := testenv.KafkaClient(cl.Addrs)
	testenv.Eventually(t, 180*time.Second, func() error {
		select {
		case <-sink.exited:
			t.Fatalf("the sink exited:\n%s", sinkLog.String())
		default:
		}
		lag, err := ingest.GroupLag(ctx, lagClient, topic+"-sink", topic)
		if err != nil {
			return err
		}
		if n := ingest.TotalLag(lag); n > 0 {
			return fmt.Errorf("sink lag %d", n)
		}
		return nil
	})
	// Every message the topic holds (a never-committing group's lag):
	// more than the events acknowledged when retried batches were partly
	// written before their 503.
	all, err := ingest.GroupLag(ctx, lagClient, testenv.Unique("nobody"), topic)
	if err != nil {
		t.Fatal(err)
	}
	inKafka := ingest.TotalLag(all)
	dlq, err := ingest.GroupLag(ctx, lagClient, testenv.Unique("nobody"), topic+".dlq")
	if err != nil {
		t.Fatal(err)
	}
	stopGracefully(t, sink)

	inKeys := "('" + strings.Join(keys, "','") + "')"
	count := func(q string) string {
		return strings.Join(strings.Fields(sqlRows(t, sinkCfg, q)[0]), " ")
	}
	physical := count("SELECT count() FROM events WHERE api_key_id IN " + inKeys)
	final := count("SELECT count(), uniqExact(id) FROM events FINAL WHERE api_key_id IN " + inKeys)
	// Which ids: every worker's batches 0..n-1, each of load.batch events.
	stored := sqlRows(t, sinkCfg, "SELECT id FROM events FINAL WHERE api_key_id IN "+inKeys+" ORDER BY id")
	lost, extra := compareIDs(load, stored)

	t.Logf("sent and acknowledged: %d events in %d batches (503 answers retried: %d; slowest answer %s); in Kafka: %d messages (%d written twice by retried batches); dead-lettered: %d",
		acked, batches, n503, slowest.Round(time.Millisecond), inKafka, inKafka-int64(acked), ingest.TotalLag(dlq))
	t.Logf("stored: count(), uniqExact(id) FINAL = %s; physical rows before merge %s; lost %d, not sent %d", final, physical, lost, extra)
	for _, r := range reports {
		t.Logf("%s", r)
	}
	if want := fmt.Sprintf("%d %d", acked, acked); final != want {
		t.Fatalf("stored count(), uniqExact(id) = %s, want %s (every acknowledged event exactly once)", final, want)
	}
	if lost != 0 || extra != 0 {
		t.Fatalf("%d acknowledged events are not stored, %d stored events were never sent", lost, extra)
	}
	if n := ingest.TotalLag(dlq); n != 0 {
		t.Fatalf("%d events dead-lettered, want 0 (faults stall, they do not discard)", n)
	}
	if inKafka < int64(acked) {
		t.Fatalf("%d messages in the topic for %d acknowledged events: acknowledged writes were lost by the brokers", inKafka, acked)
	}
}

// compareIDs checks the stored ids against the batches the load sent:
// lost counts acknowledged ids missing from stored, extra the stored ids
// never sent and the ones stored twice.
func compareIDs(l *clusterLoad, stored []string) (lost, extra int) {
	l.mu.Lock()
	want := map[string]bool{}
	for w, n := range l.batches {
		for b := range n {
			for e := range l.batch {
				want[fmt.Sprintf("%s-b%d-e%d", w, b, e)] = true
			}
		}
	}
	l.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range stored {
		id = strings.TrimSpace(id)
		if seen[id] || !want[id] {
			extra++
		}
		seen[id] = true
	}
	for id := range want {
		if !seen[id] {
			lost++
		}
	}
	return lost, extra
}

// checkTopicConfig reads the events topic's configuration from a broker:
// the settings the collector's acks=all relies on.
func checkTopicConfig(t *testing.T, cl *testenv.Cluster, topic string) {
	t.Helper()
	res, err := testenv.KafkaClient(cl.Addrs).DescribeConfigs(context.Background(), &kafka.DescribeConfigsRequest{
		Resources: []kafka.DescribeConfigRequestResource{{ResourceType: kafka.ResourceTypeTopic, ResourceName: topic,
			ConfigNames: []string{"min.insync.replicas", "unclean.leader.election.enable"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range res.Resources {
		if r.Error != nil {
			t.Fatal(r.Error)
		}
		for _, e := range r.ConfigEntries {
			got[e.ConfigName] = e.ConfigValue
		}
	}
	if got["min.insync.replicas"] != "2" || got["unclean.leader.election.enable"] != "false" {
		t.Fatalf("topic %s: %v, want min.insync.replicas=2 and unclean.leader.election.enable=false", topic, got)
	}
}
