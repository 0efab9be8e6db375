package aggregate_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// watermarkConn counts the statements that read the watermark.
type watermarkConn struct {
	store.Conn
	watermarkReads atomic.Int64
}

func (c *watermarkConn) Query(ctx context.Context, q string, params ...store.Param) (store.Rows, error) {
	if strings.Contains(q, "FROM aggregate_state") {
		c.watermarkReads.Add(1)
	}
	return c.Conn.Query(ctx, q, params...)
}

// TestWatermarkReadOncePerQuery counts the watermark reads of a usage
// query: one (rows and freshness from the same read) without an
// aggregator in the process, or before its first tick; none once the
// process's aggregator has saved one, whose value the query then reports.
func TestWatermarkReadOncePerQuery(t *testing.T) {
	db := requireDB(t)
	gen := newGenerator(uint64(time.Now().UnixNano()), testenv.Unique("wm"), 1, 2)
	now := time.Now().UTC()
	var evs []testEvent
	for range 50 {
		evs = append(evs, gen.event(gen.between(now.Add(-3*time.Hour), now.Add(-time.Minute))))
	}
	insertEvents(t, db, evs)
	cc := &watermarkConn{Conn: db}
	q := aggregate.NewQuerier(cc)
	uq := aggregate.UsageQuery{CustomerID: gen.customers[0], From: now.Add(-4 * time.Hour), To: now, Window: aggregate.WindowHour}

	read := func(want int64) ([]aggregate.UsageRow, time.Time) {
		t.Helper()
		cc.watermarkReads.Store(0)
		rows, fresh, err := q.UsageFresh(testCtx(t), uq)
		if err != nil {
			t.Fatal(err)
		}
		if n := cc.watermarkReads.Load(); n != want {
			t.Errorf("%d watermark reads for one query, want %d", n, want)
		}
		return rows, fresh
	}
	read(1)

	agg := aggregate.NewAggregator(testConfig, db, nil, quietLog())
	q.SetLocalAggregator(agg)
	read(1) // no tick yet: the store's watermark
	st := tick(t, agg)
	rows, fresh := read(0)
	if !fresh.Equal(st.Watermark) {
		t.Errorf("freshness %s, want the tick's watermark %s", fresh, st.Watermark)
	}
	var n uint64
	for _, r := range rows {
		n += r.Requests
	}
	if n != uint64(len(evs)) {
		t.Errorf("%d requests, want %d", n, len(evs))
	}
	cc.watermarkReads.Store(0)
	if f, err := q.Freshness(testCtx(t)); err != nil || !f.Equal(st.Watermark) || cc.watermarkReads.Load() != 0 {
		t.Errorf("Freshness = %s, %v after %d reads; want %s from memory", f, err, cc.watermarkReads.Load(), st.Watermark)
	}
}
