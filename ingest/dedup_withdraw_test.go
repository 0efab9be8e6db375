package ingest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// rowRefusingConn is a stand-in around the real engine that refuses, while
// on is set, every insert into the events table holding the row with id
// refuse: a failure of that row (not of the environment), which the sink
// isolates by bisection while its canary insert succeeds.
type rowRefusingConn struct {
	store.Conn
	refuse string
	on     atomic.Bool
}

func (c *rowRefusingConn) Insert(ctx context.Context, table string, cols []string, rows [][]any, o store.InsertOptions) error {
	if table == EventsTable && c.on.Load() {
		for _, r := range rows {
			if r[idColumn] == c.refuse {
				return &store.QueryError{Code: 1002, Message: "Code: 1002. DB::Exception: the row is refused by the test. (UNKNOWN_EXCEPTION)"}
			}
		}
	}
	return c.Conn.Insert(ctx, table, cols, rows, o)
}

// TestSinkWithdrawsClaimsOfUnstorableRows: a row the engine refuses is
// dead-lettered as unstorable and its id claim is withdrawn, so the
// producer's retry after the fix (the same id, another time) is stored,
// once.
func TestSinkWithdrawsClaimsOfUnstorableRows(t *testing.T) {
	db := requireDB(t)
	key := testenv.Unique("key")
	conn := &rowRefusingConn{Conn: db, refuse: "refused-" + key}
	conn.on.Store(true)
	f := newSinkFixture(t)
	at := func(d time.Duration) func(map[string]any) { return func(m map[string]any) { m["time"] = ts(d) } }
	f.produce(t, key, eventJSON(t, conn.refuse, key, at(-2*time.Minute)), eventJSON(t, "good-1", key), eventJSON(t, "good-2", key))
	reg := prometheus.NewRegistry()
	_, stop := f.runSink(t, conn, reg, schemas.Options{})
	defer stop()
	waitStored(t, db, key, 2)
	waitFor(t, 60*time.Second, func() error {
		if d := topicMessages(t, f.k.Brokers, f.k.DeadLetterTopic); len(d) != 1 {
			return fmt.Errorf("%d dead letters, want 1", len(d))
		}
		return nil
	})
	if n := testenv.Count(t, db, "SELECT count() FROM event_ids WHERE api_key_id = {k:String} AND id = {id:String}",
		store.P("k", key), store.P("id", conn.refuse)); n != 0 {
		t.Errorf("%d claims of the dead-lettered row left, want 0", n)
	}
	// The cause is fixed; the producer retries the event, re-stamped, and
	// sends one more after it (same key: same partition, read after it).
	conn.on.Store(false)
	f.produce(t, key, eventJSON(t, conn.refuse, key, at(-time.Minute)), eventJSON(t, "good-3", key))
	waitFor(t, 60*time.Second, func() error {
		if got := storedTimes(t, db, key, "good-3"); len(got) != 1 {
			return fmt.Errorf("good-3 stored %d times", len(got))
		}
		return nil
	})
	if got := storedTimes(t, db, key, conn.refuse); len(got) != 1 {
		t.Fatalf("the retried event is stored %d times after the fix, want 1 (meterline_sink_duplicates_stored_total %v)",
			len(got), testutil.ToFloat64(counterNamed(t, reg, "meterline_sink_duplicates_stored_total")))
	}
}
