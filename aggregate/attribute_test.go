package aggregate_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// owners is the catalogue's ownership list as a test changes it.
type owners struct {
	mu   sync.Mutex
	list []aggregate.KeyOwner
}

func (o *owners) set(l ...aggregate.KeyOwner) { o.mu.Lock(); o.list = l; o.mu.Unlock() }
func (o *owners) get() []aggregate.KeyOwner {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]aggregate.KeyOwner(nil), o.list...)
}

// keyRequests sums the requests of one key over [from, to) in window w,
// read through the query path (rollups before the watermark).
func keyRequests(t *testing.T, db store.Conn, customer, key string, from, to time.Time, w aggregate.Window) uint64 {
	t.Helper()
	rows, err := aggregate.NewQuerier(db).Usage(testCtx(t), aggregate.UsageQuery{CustomerID: customer, APIKeyID: key, From: from, To: to, Window: w, TZ: time.UTC})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		n += r.Requests
	}
	return n
}

// TestAttributionMovesUnassignedEventsOnce stores events of keys the
// catalogue does not know (unassigned), rolls them up, then adds one key
// to the catalogue with a move at T (one customer before, another after):
// the next ticks attribute each event by its time, remove the unassigned
// copies, and every level of the rollups counts each event exactly once;
// the still unknown key stays unassigned, visible in the metric and the
// listing, and a repeated pass changes nothing.
func TestAttributionMovesUnassignedEventsOnce(t *testing.T) {
	db := requireDB(t)
	p := testenv.Unique("attr")
	key, other, acme, globex := p+"-k", p+"-k2", p+"-acme", p+"-globex"
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
	move := base.Add(20 * time.Minute)
	var evs []testEvent
	for i := range 30 {
		// Two events in some minutes, one on the move's instant.
		at := base.Add(time.Duration(i) * time.Minute).Add(time.Duration(i%2) * 30 * time.Second)
		if i == 20 {
			at = move
		}
		evs = append(evs, testEvent{ID: fmt.Sprintf("a-%d", i), Key: key, Gateway: "gw", Method: "GET", Route: "/r", Status: 200, Time: at, Units: "1.5"})
	}
	for i := range 10 {
		evs = append(evs, testEvent{ID: fmt.Sprintf("b-%d", i), Key: other, Gateway: "gw", Method: "GET", Route: "/r", Status: 200, Time: base.Add(time.Duration(i) * time.Minute), Units: "1"})
	}
	insertEvents(t, db, evs)

	reg := prometheus.NewRegistry()
	a := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	var own owners
	a.SetAttribution(aggregate.Attribution{Owners: own.get}, reg)
	tick(t, a)
	from, to := base.Add(-time.Hour), base.Add(2*time.Hour)
	if n := keyRequests(t, db, "", key, from, to, aggregate.WindowHour); n != 30 {
		t.Fatalf("before attribution: %d requests of the unknown key in the rollups, want 30", n)
	}
	if got := testutil.ToFloat64(metric(t, reg, "meterline_aggregate_unassigned_events")); got < 40 {
		t.Fatalf("unassigned events metric %v, want at least this test's 40", got)
	}

	own.set(
		aggregate.KeyOwner{APIKeyID: key, CustomerID: acme, Until: move},
		aggregate.KeyOwner{APIKeyID: key, CustomerID: globex, From: move},
		aggregate.KeyOwner{APIKeyID: p + "-never-used", CustomerID: acme},
	)
	tick(t, a) // attributes, then rolls up
	tick(t, a) // a second pass finds nothing more to move
	count := func(q string) uint64 {
		return testenv.Count(t, db, q, store.P("k", key), store.P("o", other), store.P("a", acme), store.P("g", globex))
	}
	if n := count(`SELECT count() FROM events FINAL WHERE api_key_id = {k:String} AND customer_id = {a:String}`); n != 20 {
		t.Errorf("%d events attributed to the first owner, want 20 (before the move)", n)
	}
	if n := count(`SELECT count() FROM events FINAL WHERE api_key_id = {k:String} AND customer_id = {g:String}`); n != 10 {
		t.Errorf("%d events attributed to the second owner, want 10 (from the move on)", n)
	}
	if n := count(`SELECT count() FROM events WHERE api_key_id = {k:String} AND customer_id = ''`); n != 0 {
		t.Errorf("%d unassigned rows of the attributed key left, want 0", n)
	}
	if n := count(`SELECT count() FROM events FINAL WHERE api_key_id = {o:String} AND customer_id = ''`); n != 10 {
		t.Errorf("%d unassigned events of the unknown key, want 10", n)
	}
	for _, w := range []aggregate.Window{aggregate.WindowMinute, aggregate.WindowHour, aggregate.WindowDay} {
		if n := keyRequests(t, db, "", key, from, to, w); n != 30 {
			t.Errorf("window %s: the key has %d requests over all customers, want 30 (each once)", w, n)
		}
		if n := keyRequests(t, db, acme, key, from, to, w); n != 20 {
			t.Errorf("window %s: first owner %d requests, want 20", w, n)
		}
		if n := keyRequests(t, db, globex, key, from, to, w); n != 10 {
			t.Errorf("window %s: second owner %d requests, want 10", w, n)
		}
		if n := keyRequests(t, db, "", other, from, to, w); n != 10 {
			t.Errorf("window %s: unknown key %d requests, want 10", w, n)
		}
	}
	units, err := aggregate.NewQuerier(db).UnitsByCustomer(testCtx(t), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if units[acme] != 30 || units[globex] != 15 {
		t.Errorf("units by customer: %s %v, %s %v; want 30 and 15", acme, units[acme], globex, units[globex])
	}
	if got := testutil.ToFloat64(metric(t, reg, "meterline_aggregate_events_attributed_total")); got != 30 {
		t.Errorf("attributed metric %v, want 30", got)
	}
	list, err := aggregate.UnassignedKeys(testCtx(t), db)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, k := range list {
		if k.APIKeyID == key {
			t.Errorf("the attributed key is still listed as unassigned: %+v", k)
		}
		if k.APIKeyID == other {
			found = true
			if k.Events != 10 || k.Units != 10 || !k.FirstTime.Equal(base) || !k.LastTime.Equal(base.Add(9*time.Minute)) {
				t.Errorf("unassigned listing %+v, want 10 events, 10 units, %s to %s", k, base, base.Add(9*time.Minute))
			}
		}
	}
	if !found {
		t.Errorf("the unknown key is not in the unassigned listing: %+v", list)
	}
}

// TestAttributionSkipsErasedCustomers: a catalogue entry that gives an
// unassigned key to an erased customer does not bring usage back.
func TestAttributionSkipsErasedCustomers(t *testing.T) {
	db := requireDB(t)
	p := testenv.Unique("attr-erased")
	key, gone := p+"-k", p+"-gone"
	insertEvents(t, db, []testEvent{{ID: "e-1", Key: key, Method: "GET", Route: "/r", Status: 200, Time: time.Now().UTC().Add(-time.Hour), Units: "1"}})
	a := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	a.SetAttribution(aggregate.Attribution{
		Owners: func() []aggregate.KeyOwner { return []aggregate.KeyOwner{{APIKeyID: key, CustomerID: gone}} },
		Erased: func(context.Context) (map[string]struct{}, error) { return map[string]struct{}{gone: {}}, nil },
	}, nil)
	tick(t, a)
	if n := testenv.Count(t, db, `SELECT count() FROM events WHERE api_key_id = {k:String} AND customer_id != ''`, store.P("k", key)); n != 0 {
		t.Fatalf("%d events attributed to an erased customer, want 0", n)
	}
}

// metric finds a collector of reg by name.
func metric(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			for _, m := range mf.GetMetric() {
				switch {
				case m.GetGauge() != nil:
					v += m.GetGauge().GetValue()
				case m.GetCounter() != nil:
					v += m.GetCounter().GetValue()
				}
			}
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
			g.Set(v)
			return g
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}
