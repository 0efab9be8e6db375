package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// storedTimes returns the event times stored (FINAL) for an id of a key.
func storedTimes(t *testing.T, db store.Conn, key, id string) []time.Time {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT time FROM events FINAL WHERE api_key_id = {k:String} AND id = {id:String} ORDER BY time",
		store.P("k", key), store.P("id", id))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []time.Time
	for rows.Next() {
		var tm time.Time
		if err := rows.Scan(&tm); err != nil {
			t.Fatal(err)
		}
		out = append(out, tm)
	}
	return out
}

// TestSinkRestampedCopiesCountOnce produces copies of ids with another
// time straight to Kafka, as a producer that re-stamps its retries would:
// two copies in one batch, copies in batches far apart, and copies in two
// monthly partitions. Each id is stored once, with the first copy's time,
// and every later copy is counted as a stored duplicate.
func TestSinkRestampedCopiesCountOnce(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	now := time.Now().UTC().Truncate(time.Millisecond)
	at := func(tm time.Time) func(map[string]any) {
		return func(m map[string]any) { m["time"] = tm.Format(time.RFC3339Nano) }
	}
	monthStart := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	first, second := now.Add(-2*time.Minute), now.Add(-time.Minute)
	lastMonth := monthStart.Add(-time.Hour) // within the 35 days accepted, in the previous partition
	if now.Sub(monthStart) < 2*time.Minute {
		first, second = monthStart.Add(-2*time.Minute), monthStart.Add(-time.Minute)
	}

	reg := prometheus.NewRegistry()
	stop := f.run(t, db, reg)
	// One batch: the same id twice with different times.
	f.produce(t, key, eventJSON(t, "same-batch", key, at(first)), eventJSON(t, "same-batch", key, at(second)))
	f.produce(t, key, eventJSON(t, "later-batch", key, at(first)), eventJSON(t, "month", key, at(lastMonth)))
	waitStored(t, db, key, 3)
	// Later batches: re-stamped copies, and an exact copy of a stored one
	// (a redelivery), which stays one row.
	f.produce(t, key, eventJSON(t, "later-batch", key, at(second)), eventJSON(t, "month", key, at(now.Add(-30*time.Second))),
		eventJSON(t, "later-batch", key, at(first)), eventJSON(t, "fresh", key, at(second)))
	waitStored(t, db, key, 4)
	waitFor(t, 60*time.Second, func() error {
		if n := testutil.ToFloat64(counterNamed(t, reg, "meterline_sink_duplicates_stored_total")); n != 2 {
			return fmt.Errorf("%v stored duplicates, want 2", n)
		}
		return nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]time.Time{"same-batch": first, "later-batch": first, "month": lastMonth, "fresh": second} {
		got := storedTimes(t, db, key, id)
		if len(got) != 1 || !got[0].Equal(want) {
			t.Errorf("%s stored at %v, want once at %v", id, got, want)
		}
	}
	if rows, final, distinct := countStored(t, db, key); final != 4 || distinct != 4 {
		t.Errorf("rows %d, FINAL %d, distinct %d, want 4 events", rows, final, distinct)
	}
}

// counterNamed finds a registered metric by name.
func counterNamed(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	var found prometheus.Collector
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			found = gatheredCounter{mf.GetMetric()[0].GetCounter().GetValue(), name}
		}
	}
	if found == nil {
		t.Fatalf("metric %s not registered", name)
	}
	return found
}

// gatheredCounter is one gathered counter value, readable by testutil.
type gatheredCounter struct {
	v    float64
	name string
}

func (g gatheredCounter) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc(g.name, "gathered", nil, nil)
}

func (g gatheredCounter) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "gathered", nil, nil), prometheus.CounterValue, g.v)
}

// eventsInsertFails is the real engine with inserts into the raw events
// table failing as an unreachable engine would (a stand-in for a sink that
// dies after writing a batch's claims and before its events): every other
// statement, the claims included, goes to the engine.
type eventsInsertFails struct {
	store.Conn
	claims atomic.Int64 // claim inserts that reached the engine
}

func (c *eventsInsertFails) Insert(ctx context.Context, table string, columns []string, rows [][]any, opts store.InsertOptions) error {
	if table == EventsTable {
		return fmt.Errorf("events insert cut off: %w", store.ErrUnavailable)
	}
	err := c.Conn.Insert(ctx, table, columns, rows, opts)
	if err == nil && table == IDsTable {
		c.claims.Add(1)
	}
	return err
}

// TestSinkClaimsBeforeEventsSurviveACrash: a sink writes a batch's claims,
// then cannot insert the events and stops without committing. The next
// sink re-reads the batch: its copies match their claims and are stored
// exactly once, and a re-stamped copy that comes after is still dropped.
func TestSinkClaimsBeforeEventsSurviveACrash(t *testing.T) {
	db := requireDB(t)
	f := newSinkFixture(t)
	key := testenv.Unique("key")
	var values [][]byte
	for i := 0; i < 50; i++ {
		values = append(values, eventJSON(t, fmt.Sprintf("c-%d", i), key))
	}
	f.produce(t, key, values...)
	cut := &eventsInsertFails{Conn: db}
	stop := f.run(t, cut, prometheus.NewRegistry())
	waitFor(t, 60*time.Second, func() error {
		if cut.claims.Load() == 0 {
			return errors.New("no claims written yet")
		}
		return nil
	})
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) && !strings.Contains(err.Error(), "context canceled") {
		t.Logf("first sink stopped: %v", err)
	}
	if _, final, _ := countStored(t, db, key); final != 0 {
		t.Fatalf("%d events stored by the sink whose inserts failed", final)
	}

	reg := prometheus.NewRegistry()
	f.run(t, db, reg)
	waitStored(t, db, key, 50)
	restamped := eventJSON(t, "c-7", key, func(m map[string]any) { m["time"] = ts(-10 * time.Second) })
	f.produce(t, key, restamped, eventJSON(t, "c-last", key))
	waitStored(t, db, key, 51)
	waitFor(t, 60*time.Second, func() error {
		if n := testutil.ToFloat64(counterNamed(t, reg, "meterline_sink_duplicates_stored_total")); n != 1 {
			return fmt.Errorf("%v stored duplicates, want 1", n)
		}
		return nil
	})
	if rows, final, distinct := countStored(t, db, key); final != 51 || distinct != 51 {
		t.Fatalf("rows %d, FINAL %d, distinct %d, want 51", rows, final, distinct)
	}
}
