package billing

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
)

// TestBillingAbandonsReportsOpenLongerThanStripeRemembers: a report sent
// 25 h ago without a recorded answer is not re-sent (Stripe may no longer
// drop a repeat of its identifier): it is recorded as abandoned, counts as
// covered (no new report for its window) and the reconciliation flags it.
// A report refused 30 h ago and sent again an hour ago is resumed.
func TestBillingAbandonsReportsOpenLongerThanStripeRemembers(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeMeterEvents)
	old, fresh := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	w1 := hoursAgo(40)
	f.addUsage(old, w1, "5")
	f.addUsage(fresh, w1, "5")
	now := time.Now().UTC()
	mk := func(c customerSpec) *report {
		u := decimal.NewFromInt(5)
		return &report{customerID: c.id, stripeCustomerID: c.stripe, mode: ModeMeterEvents, target: testEventName,
			periodStart: periodStart(w1), windowStart: w1, windowEnd: w1.Add(time.Hour), stripeTimestamp: w1,
			quantity: u, cumulative: u, identifier: meterIdentifier(c.id, testEventName, w1, u)}
	}
	ro, rf := mk(old), mk(fresh)
	k0 := idempotencyKey(rf.identifier, 0)
	if err := appendRows(testCtx(t), f.db,
		ro.row(idempotencyKey(ro.identifier, 0), resultPending, answer{}, 1, "", now.Add(-25*time.Hour)),
		ro.row(idempotencyKey(ro.identifier, 0), resultRetrying, answer{}, 1, "no answer: EOF", now.Add(-25*time.Hour+time.Second)),
		rf.row(k0, resultPending, answer{}, 1, "", now.Add(-30*time.Hour)),
		rf.row(k0, resultFailed, answer{status: 400}, 1, "HTTP 400 refused", now.Add(-30*time.Hour+time.Second)),
		rf.row(idempotencyKey(rf.identifier, 1), resultPending, answer{}, 2, "", now.Add(-time.Hour)),
	); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(s.URL)
	st := f.runUntilClean(f.worker(cfg), 1)
	if st[0].Abandoned != 1 || st[0].Acknowledged != 1 {
		t.Fatalf("want one abandoned and one resumed report: %+v", st[0])
	}
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].IdempotencyKey != idempotencyKey(rf.identifier, 1) {
		t.Fatalf("want only the fresh report resumed with its pending key: %+v", reqs)
	}
	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), w1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rec.Lines {
		switch l.CustomerID {
		case old.id:
			if l.Unexplained.String() != "5" || !strings.Contains(strings.Join(l.Reasons, ";"), "outcome unknown") {
				t.Errorf("abandoned report not flagged: %+v", l)
			}
		case fresh.id:
			if !l.Unexplained.IsZero() || !l.Difference.IsZero() {
				t.Errorf("resumed report: %+v", l)
			}
		}
	}
}
