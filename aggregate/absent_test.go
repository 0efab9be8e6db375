package aggregate_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/store"
)

// insertLatencies stores one event per entry of lat for a key at t, as the
// sink stores them: nil is an event without latency_ms (and without byte
// counts), stored as NULL.
func insertLatencies(t *testing.T, db store.Conn, customer, key string, at time.Time, lat []any) {
	t.Helper()
	now := time.Now().UTC()
	rows := make([][]any, len(lat))
	for i, l := range lat {
		var bytes any
		if l != nil {
			bytes = uint64(100)
		}
		rows[i] = []any{fmt.Sprintf("%s-%d", key, i), at.Add(time.Duration(i) * time.Millisecond), key, customer, "gw", "GET", "/v1/x", uint16(200),
			l, bytes, bytes, "", "test", json.Number("1"), map[string]string{}, int32(0), int64(i), now}
	}
	if err := db.Insert(testCtx(t), "events", eventColumns, rows, store.InsertOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestAbsentLatencyIsNotZero: of 12 events only 2 carry a latency (10 and
// 20 ms). The percentiles come from those 2, read from the rollups and from
// the raw table alike; a window where no event carried one has no latency,
// and the byte sums count the absent sizes as 0.
func TestAbsentLatencyIsNotZero(t *testing.T) {
	db := requireDB(t)
	customer := testenv.Unique("absent")
	lat := []any{nil, nil, nil, 10.0, nil, nil, nil, nil, 20.0, nil, nil, nil}
	rolled, raw := time.Now().UTC().Add(-2*time.Hour).Truncate(time.Hour), time.Now().UTC().Add(2*time.Minute)
	insertLatencies(t, db, customer, customer+"-rolled", rolled, lat)
	insertLatencies(t, db, customer, customer+"-raw", raw, lat)
	insertLatencies(t, db, customer, customer+"-none", rolled, []any{nil, nil, nil})
	tick(t, aggregate.NewAggregator(testConfig, db, nil, quietLog()))
	q := aggregate.NewQuerier(db)
	for key, at := range map[string]time.Time{customer + "-rolled": rolled, customer + "-raw": raw, customer + "-none": rolled} {
		rows, err := q.Usage(testCtx(t), aggregate.UsageQuery{APIKeyID: key, From: at.Add(-time.Hour), To: at.Add(time.Hour), Window: aggregate.WindowDay})
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, r := range rows {
			n += r.Requests
		}
		if len(rows) != 1 {
			t.Fatalf("%s: %d rows (%d requests), want one window", key, len(rows), n)
		}
		r := rows[0]
		if key == customer+"-none" {
			if r.Requests != 3 || r.LatencyMeasured || r.LatencyP50 != 0 || r.RequestBytes != 0 {
				t.Errorf("%s: %+v, want 3 requests without latency", key, r)
			}
			continue
		}
		if r.Requests != 12 || !r.LatencyMeasured {
			t.Errorf("%s: %d requests, latency measured %v; want 12 requests with a latency", key, r.Requests, r.LatencyMeasured)
		}
		for name, v := range map[string]float64{"p50": r.LatencyP50, "p95": r.LatencyP95, "p99": r.LatencyP99} {
			if v < 10 || v > 20 {
				t.Errorf("%s: latency %s = %v, want it within the 2 measured latencies [10, 20]", key, name, v)
			}
		}
		if r.RequestBytes != 200 || r.ResponseBytes != 200 {
			t.Errorf("%s: bytes %d/%d, want 200/200 (absent sizes add nothing)", key, r.RequestBytes, r.ResponseBytes)
		}
	}
}
