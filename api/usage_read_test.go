package api

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/store"
)

// watermarkConn counts the statements that read the aggregator's
// watermark.
type watermarkConn struct {
	store.Conn
	reads atomic.Int64
}

func (c *watermarkConn) Query(ctx context.Context, q string, params ...store.Param) (store.Rows, error) {
	if strings.Contains(q, "FROM aggregate_state") {
		c.reads.Add(1)
	}
	return c.Conn.Query(ctx, q, params...)
}

// TestReadUsageReadsTheWatermarkOnce: GET /v1/usage and every page read
// through ReadUsage, which asks the store for the watermark once and
// reports as freshness the watermark the rows were read at.
func TestReadUsageReadsTheWatermarkOnce(t *testing.T) {
	f := newFixture(t)
	wc := &watermarkConn{Conn: requireDB(t)}
	q := aggregate.NewQuerier(wc)
	uq := aggregate.UsageQuery{CustomerID: acme, From: f.start, To: f.start.Add(3 * time.Hour), Window: aggregate.WindowHour, TZ: time.UTC}
	resp, err := ReadUsage(context.Background(), q, uq)
	if err != nil {
		t.Fatal(err)
	}
	if n := wc.reads.Load(); n != 1 {
		t.Errorf("%d watermark reads for one usage read, want 1", n)
	}
	fresh, err := q.Freshness(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Freshness.IsZero() || resp.Freshness.After(fresh) {
		t.Errorf("freshness %s, store's watermark now %s", resp.Freshness, fresh)
	}
	if len(resp.Rows) != 3 || resp.Rows[0].Requests != 20 || resp.Rows[0].DistinctClientIPs != 2 {
		t.Errorf("rows %+v", resp.Rows)
	}
}
