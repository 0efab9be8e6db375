package aggregate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/ingest"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// seedEnv reproduces a property test run: METERLINE_TEST_SEED=<seed>.
const seedEnv = "METERLINE_TEST_SEED"

// pipeline is a real sink consuming a topic of its own into the engine,
// and a writer producing to that topic as a gateway would.
type pipeline struct {
	writer   *kafka.Writer
	brokers  []string
	topic    string
	group    string
	produced int
}

func newPipeline(t *testing.T, db store.Conn) *pipeline {
	t.Helper()
	brokers := testenv.KafkaBrokers(t)
	k := ingest.KafkaConfig{Brokers: brokers, Topic: testenv.Unique("aggregate-events"), Partitions: 3}.WithDefaults()
	if err := ingest.EnsureTopics(testCtx(t), k); err != nil {
		t.Fatal(err)
	}
	p := &pipeline{brokers: brokers, topic: k.Topic, group: testenv.Unique("aggregate-sink")}
	p.writer = testenv.Writer(t, brokers, k.Topic)
	p.writer.BatchSize = 500
	sink, err := ingest.NewSink(ingest.SinkConfig{GroupID: p.group, BatchSize: 2000, FlushInterval: 200 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, SessionTimeout: 6 * time.Second},
		k, schemas.Options{}, ingest.Anonymizer{}, db, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sink.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sink: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("sink did not stop within 60s")
		}
	})
	return p
}

// produce sends events in the given order, keyed by api_key_id.
func (p *pipeline) produce(t *testing.T, evs []testEvent) {
	t.Helper()
	msgs := make([]kafka.Message, len(evs))
	for i, e := range evs {
		msgs[i] = kafka.Message{Key: []byte(e.Key), Value: e.json()}
	}
	if err := p.writer.WriteMessages(testCtx(t), msgs...); err != nil {
		t.Fatal(err)
	}
	p.produced += len(evs)
}

// drain waits until the sink has committed every produced message, which
// it does only after their insert succeeded.
func (p *pipeline) drain(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func() error {
		c := testenv.KafkaClient(p.brokers)
		lag, err := ingest.GroupLag(context.Background(), c, p.group, p.topic)
		if err != nil {
			return err
		}
		if n := ingest.TotalLag(lag); n != 0 {
			return fmt.Errorf("sink lag %d", n)
		}
		return nil
	})
}

// wave builds one delivery: fresh events, late events into windows that
// earlier waves filled, duplicates sent next to the original (same sink
// batch) and re-sends of earlier events; shuffled (out of order).
type wave struct {
	fresh, lateOld int
	dupRate        float64
}

func (g *generator) wave(w wave, now time.Time, earlier []testEvent) (out []testEvent) {
	for range w.fresh {
		var at time.Time
		switch x := g.r.IntN(10); {
		case x < 6: // the last three hours
			at = g.between(now.Add(-3*time.Hour), now)
		case x < 8: // hours back
			at = g.between(now.Add(-48*time.Hour), now.Add(-3*time.Hour))
		default: // days back, within the 35-day acceptance window
			at = g.between(now.Add(-34*24*time.Hour), now.Add(-2*24*time.Hour))
		}
		out = append(out, g.event(at))
	}
	for i := 0; i < w.lateOld && len(earlier) > 0; i++ {
		// The same minute and key as an event already rolled up.
		old := earlier[g.r.IntN(len(earlier))]
		e := g.event(old.Time.Truncate(time.Minute).Add(time.Duration(g.r.Int64N(int64(time.Minute)))))
		e.Key, e.Customer = old.Key, old.Customer
		out = append(out, e)
	}
	g.r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	n := len(out)
	for range int(float64(n) * w.dupRate) {
		if len(earlier) > 0 && g.r.IntN(2) == 0 {
			out = append(out, earlier[g.r.IntN(len(earlier))]) // re-sent much later
			continue
		}
		i := g.r.IntN(n)
		j := min(len(out), i+1+g.r.IntN(20)) // close by: usually the same batch
		out = append(out[:j], append([]testEvent{out[i]}, out[j:]...)...)
	}
	return out
}

// TestPropertyRollupsEqualRecount is the exactness property: random
// streams with Zipf-distributed keys, random dimensions, 5-20 % duplicates
// (in the same batch and re-sent later), late events into windows already
// rolled up, and out-of-order delivery go through Kafka and the real sink;
// between waves the aggregator ticks. For every window, group_by sets and
// zones, Usage must equal the recount over distinct ids from raw (latency
// within latencyRankTolerance). Events stored after the last tick must
// show from raw at once, except late ones, which show after the next tick.
func TestPropertyRollupsEqualRecount(t *testing.T) {
	db := requireDB(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", seedEnv, err)
		}
	}
	seedMsg := fmt.Sprintf("seed %d (rerun with %s=%d)", seed, seedEnv, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(seedMsg)
		}
	})
	p := newPipeline(t, db)
	gen := newGenerator(seed, testenv.Unique("prop"), 4, 12)
	dupRate := 0.05 + gen.r.Float64()*0.15
	t.Logf("%s, duplicate rate %.0f %%", seedMsg, dupRate*100)
	agg := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	berlin, kolkata := mustLoad(t, "Europe/Berlin"), mustLoad(t, "Asia/Kolkata")
	start := time.Now().UTC()
	// Unaligned bounds: windows at both ends are cut.
	from, to := start.Add(-36*24*time.Hour-17*time.Second), start.Add(time.Hour+1234*time.Millisecond)

	var all []testEvent
	send := func(evs []testEvent) {
		p.produce(t, evs)
		p.drain(t)
		seen := map[string]bool{}
		for _, e := range all {
			seen[e.ID] = true
		}
		for _, e := range evs {
			if !seen[e.ID] {
				all = append(all, e)
				seen[e.ID] = true
			}
		}
	}
	for i, w := range []wave{{fresh: 3000, dupRate: dupRate}, {fresh: 1500, lateOld: 800, dupRate: dupRate}, {fresh: 1000, lateOld: 800, dupRate: dupRate}} {
		send(gen.wave(w, time.Now().UTC(), all))
		st := tick(t, agg)
		t.Logf("wave %d: %d distinct events so far, %d messages produced, tick: %d dirty groups in %s", i+1, len(all), p.produced, st.DirtyGroups, st.Duration)
		if i == 1 {
			checkAll(t, db, gen, from, to, []*time.Location{time.UTC}, nil, seedMsg+fmt.Sprintf(", after wave %d", i+1))
		}
	}
	stored := countRows(t, db, "SELECT uniqExact(customer_id, api_key_id, id) FROM events WHERE customer_id IN {c:Array(String)}", store.P("c", gen.customers))
	if stored != uint64(len(all)) {
		t.Fatalf("%s: %d distinct events stored, %d produced", seedMsg, stored, len(all))
	}
	checkAll(t, db, gen, from, to, []*time.Location{time.UTC, berlin, kolkata}, nil, seedMsg+", after the last tick")

	// The open edge: events stored after the last tick are read from raw
	// at once, except those older than the frontier (late), which count
	// from the next tick on.
	w, err := aggregate.NewQuerier(db).Freshness(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	rolledUp := idSet(all)
	edge := gen.wave(wave{fresh: 0, lateOld: 100, dupRate: dupRate}, time.Now().UTC(), all)
	for range 400 {
		edge = append(edge, gen.event(gen.between(w, time.Now().UTC())))
	}
	gen.r.Shuffle(len(edge), func(i, j int) { edge[i], edge[j] = edge[j], edge[i] })
	send(edge)
	checkAll(t, db, gen, from, to, []*time.Location{time.UTC}, visibleAt(w, rolledUp), seedMsg+", open edge before the tick")
	if err := checkEdgeCounted(t, db, gen, w, rolledUp); err != nil {
		t.Error(err)
	}
	tick(t, agg)
	checkAll(t, db, gen, from, to, []*time.Location{time.UTC, kolkata}, nil, seedMsg+", after the tick that follows the edge")
	t.Logf("property test took %s", time.Since(start))
}

// checkEdgeCounted makes sure the open-edge check was not vacuous: some
// events stored after the watermark are counted before any tick, and some
// late ones are not yet.
func checkEdgeCounted(t *testing.T, db store.Conn, gen *generator, w time.Time, rolledUp map[string]bool) error {
	var fresh, late int
	vis := visibleAt(w, rolledUp)
	for _, e := range fetchStored(t, db, gen.customers) {
		if !rolledUp[e.ID] {
			if vis(e) {
				fresh++
			} else {
				late++
			}
		}
	}
	if fresh == 0 || late == 0 {
		return errors.New("the open-edge wave had no fresh or no late events: the check proved nothing")
	}
	t.Logf("open edge: %d events counted from raw before the tick, %d late ones after it", fresh, late)
	return nil
}

func mustLoad(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}
