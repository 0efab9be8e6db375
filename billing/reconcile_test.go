package billing

import (
	"bytes"
	"encoding/csv"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
	"github.com/meterline/meterline/privacy"
)

// TestBillingReconcileFindsUnreportedUsage: settled usage the worker has
// not reported is an unexplained difference; once reported, the
// difference is zero, except the fraction a usage record cannot carry,
// which is explained. The CSV has one row per customer.
func TestBillingReconcileFindsUnreportedUsage(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeUsageRecords)
	meter, usage := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	cfg := f.config(s.URL)
	at := hoursAgo(4)
	f.addUsage(meter, at, "2", "1.5")
	f.addUsage(usage, at, "2", "1.5")
	line := func(rec *Reconciliation, id string) ReconLine {
		for _, l := range rec.Lines {
			if l.CustomerID == id {
				return l
			}
		}
		t.Fatalf("customer %s missing: %+v", id, rec.Lines)
		return ReconLine{}
	}
	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if l := line(rec, meter.id); l.Unexplained.String() != "3.5" || !strings.Contains(strings.Join(l.Reasons, ";"), "UNEXPLAINED") {
		t.Fatalf("unreported meter usage: %+v", l)
	}
	if l := line(rec, usage.id); l.Unexplained.String() != "3" || l.Difference.String() != "3.5" {
		t.Fatalf("unreported usage records: %+v", l)
	}
	if !rec.Unexplained() {
		t.Fatal("Unexplained() is false")
	}

	f.runUntilClean(f.worker(cfg), 2)
	rec, err = Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if l := line(rec, meter.id); !l.Difference.IsZero() || !l.Unexplained.IsZero() || l.Acknowledged.String() != "3.5" {
		t.Fatalf("reported meter usage: %+v", l)
	}
	l := line(rec, usage.id)
	if l.Acknowledged.String() != "3" || l.Difference.String() != "0.5" || !l.Unexplained.IsZero() || !strings.Contains(l.Reasons[0], "fraction") {
		t.Fatalf("reported usage records: %+v", l)
	}
	var buf bytes.Buffer
	if err := rec.WriteCSV(&buf); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range rows[1:] {
		if r[1] == meter.id || r[1] == usage.id {
			found++
			if r[0] != at.Format("2006-01") || len(r) != len(rows[0]) {
				t.Errorf("csv row %v", r)
			}
		}
	}
	if rows[0][1] != "customer_id" || found != 2 {
		t.Fatalf("csv: %v", rows)
	}
}

// TestBillingReconcileAfterErasure: once a billed customer is erased, its
// rollups are gone and its ledger rows carry a pseudonym; the
// reconciliation shows the pseudonymised reports as explained, and the
// other customer's line is unchanged.
func TestBillingReconcileAfterErasure(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeMeterEvents)
	gone, kept := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	cfg := f.config(s.URL)
	at := hoursAgo(4)
	f.addUsage(gone, at, "2", "1.5")
	f.addUsage(kept, at, "4")
	f.runUntilClean(f.worker(cfg), 2)

	svc := privacy.NewService(privacy.Config{ErasedRefresh: 10 * time.Millisecond}, f.db, nil, nil)
	req, err := svc.Request(testCtx(t), privacy.Request{CustomerID: gone.id, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Execute(testCtx(t), req.ID)
	if err != nil || e.Pseudonymised["billing_ledger"] == 0 {
		t.Fatalf("erasure: %+v %v", e, err)
	}
	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var seen int
	for _, l := range rec.Lines {
		switch l.CustomerID {
		case e.Pseudonym:
			seen++
			if !l.Unexplained.IsZero() || l.Acknowledged.String() != "3.5" || !strings.Contains(strings.Join(l.Reasons, ";"), "erased") {
				t.Errorf("pseudonymised line: %+v", l)
			}
		case gone.id:
			if !l.Rollup.IsZero() || !l.Acknowledged.IsZero() || !l.Unexplained.IsZero() {
				t.Errorf("erased customer's own line: %+v", l)
			}
		case kept.id:
			seen++
			if !l.Difference.IsZero() || l.Acknowledged.String() != "4" {
				t.Errorf("other customer's line: %+v", l)
			}
		}
	}
	if seen != 2 { // other tests share the database: only these lines count
		t.Fatalf("reconciliation after erasure: %+v", rec.Lines)
	}
	// Against what Stripe holds: the erased customer, still in the
	// mapping, shares its Stripe customer with its pseudonym's line, which
	// alone compares Stripe's units; nothing is unexplained.
	rec, err = ReconcileWithStripe(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), NewStripeAPI(cfg), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rec.Lines {
		switch l.CustomerID {
		case e.Pseudonym:
			if !l.StripeRead || l.Stripe.String() != "3.5" || !l.Unexplained.IsZero() {
				t.Errorf("pseudonymised line against Stripe: %+v", l)
			}
		case gone.id, kept.id:
			if !l.Unexplained.IsZero() {
				t.Errorf("line of %s against Stripe: %+v", l.CustomerID, l)
			}
		}
	}
}
