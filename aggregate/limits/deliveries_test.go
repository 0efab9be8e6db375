package limits

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// TestRecentDeliveries lets a View deliver real alerts to a receiver that
// takes the first and refuses the second, and reads them back through
// RecentDeliveries: newest first, one customer's only, without the
// fencing rows, the receiver's status on each.
func TestRecentDeliveries(t *testing.T) {
	db := requireDB(t)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 1 {
			return http.StatusGone // refused for good: recorded as failed
		}
		return http.StatusOK
	})
	cust, other := testenv.Unique("acme"), testenv.Unique("globex")
	reg := NewRegistry(alertCatalogue(t, map[string]string{cust: rc.srv.URL + "/hook"}))
	src := &settableSource{}
	now := time.Now().UTC()
	period, _ := periodOf(now)

	v := newTestView(t, alertConfig(), reg, src, db)
	v.now = func() time.Time { return now }
	src.set(cust, 850)
	refresh(t, v)
	rc.waitRequests(1)
	waitIdle(t, v)
	src.set(cust, 1200)
	refresh(t, v)
	rc.waitRequests(2)
	waitIdle(t, v)
	v.Close()

	// Another customer's attempt in the same table must not show.
	reg2 := NewRegistry(alertCatalogue(t, map[string]string{other: rc.srv.URL + "/other"}))
	src2 := &settableSource{}
	v2 := newTestView(t, alertConfig(), reg2, src2, db)
	v2.now = func() time.Time { return now }
	src2.set(other, 900)
	refresh(t, v2)
	rc.waitRequests(3)
	waitIdle(t, v2)
	v2.Close()

	got, err := RecentDeliveries(context.Background(), db, cust, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d deliveries, want 2: %+v", len(got), got)
	}
	newest, oldest := got[0], got[1]
	if newest.Threshold != 1 || newest.State != "failed" || newest.StatusCode != http.StatusGone || newest.Attempt != 1 ||
		newest.DeliveryID != DeliveryID(cust, period, 1) || !newest.PeriodStart.Equal(period) {
		t.Errorf("newest %+v, want the refused 100 %% alert", newest)
	}
	if oldest.Threshold != 0.8 || oldest.State != "delivered" || oldest.StatusCode != http.StatusOK ||
		oldest.DeliveryID != DeliveryID(cust, period, 0.8) {
		t.Errorf("oldest %+v, want the delivered 80 %% alert", oldest)
	}
	if newest.AttemptedAt.Before(oldest.AttemptedAt) || newest.AttemptedAt.Location() != time.UTC {
		t.Errorf("order or zone: %v then %v", newest.AttemptedAt, oldest.AttemptedAt)
	}

	// n bounds the answer and keeps the newest.
	one, err := RecentDeliveries(context.Background(), db, cust, 1)
	if err != nil || len(one) != 1 || one[0] != newest {
		t.Fatalf("n=1: %+v (%v), want the newest only", one, err)
	}
	o, err := RecentDeliveries(context.Background(), db, other, MaxRecentDeliveries)
	if err != nil || len(o) != 1 || o[0].Threshold != 0.8 {
		t.Fatalf("other customer: %+v (%v)", o, err)
	}
	// A hostile id is a bound parameter, not SQL: it matches nothing.
	none, err := RecentDeliveries(context.Background(), db, cust+"' OR 1=1 --", 10)
	if err != nil || len(none) != 0 {
		t.Fatalf("hostile id: %+v (%v), want none", none, err)
	}
}

func TestRecentDeliveriesBadInput(t *testing.T) {
	db := requireDB(t)
	for _, c := range []struct {
		customer string
		n        int
	}{
		{"", 10},
		{strings.Repeat("c", maxIDBytes+1), 10},
		{"acme", 0},
		{"acme", -1},
		{"acme", MaxRecentDeliveries + 1},
	} {
		if got, err := RecentDeliveries(context.Background(), db, c.customer, c.n); err == nil {
			t.Errorf("customer %.10q n %d: %+v, want an error", c.customer, c.n, got)
		}
	}
	if _, err := RecentDeliveries(context.Background(), nil, "acme", 10); err == nil {
		t.Error("no database: no error")
	}
}
