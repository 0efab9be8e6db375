package billing

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
)

// reportOf names the report of a request: its identifier (the idempotency
// key without its "-n" generation).
func reportOf(r *billingtest.Request) string {
	if i := strings.LastIndex(r.IdempotencyKey, "-"); i > 0 {
		return r.IdempotencyKey[:i]
	}
	return r.IdempotencyKey
}

// reconcileClean checks, with what the stand-in holds, that every fixture
// customer's line has no unexplained difference and that Stripe holds
// exactly the rollups (usage records: their whole part).
func reconcileClean(t *testing.T, f *fixture, s *billingtest.StripeStandIn, cfg Config) {
	t.Helper()
	rec, err := ReconcileWithStripe(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), NewStripeAPI(cfg), time.Now(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range f.customers {
		i := slices.IndexFunc(rec.Lines, func(l ReconLine) bool { return l.CustomerID == c.id })
		if i < 0 {
			t.Errorf("customer %s missing from the reconciliation", c.id)
			continue
		}
		l := rec.Lines[i]
		want := l.Rollup
		if c.mode == ModeUsageRecords {
			want = want.Floor()
		}
		if !l.StripeRead || !l.Stripe.Equal(want) || !l.Unexplained.IsZero() {
			t.Errorf("reconciliation of %s (%s): Stripe holds %s (read %v), rollups %s, unexplained %s %v",
				c.id, c.mode, l.Stripe, l.StripeRead, l.Rollup, l.Unexplained, l.Reasons)
		}
	}
}

// TestBillingFaultAfterApplyBillsOnce injects, on the first request of
// every report (and for one case on the second too), a fault after Stripe
// applied it (a 500, a dropped connection, a timeout) or before; then late
// usage grows a reported window. Stripe must end with exactly the rollups
// (the stand-in's applied sums, repeats refused as Stripe does), the
// ledger must agree, and the reconciliation against Stripe must show
// nothing unexplained.
func TestBillingFaultAfterApplyBillsOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		plan   []billingtest.Fault // faults of a report's 1st, 2nd, ... request
		refuse bool                // a duplicate identifier must have been refused
	}{
		{"500 after applied", []billingtest.Fault{billingtest.ServerErrorApplied}, true},
		{"500 after applied then refused", []billingtest.Fault{billingtest.ServerErrorApplied, billingtest.Refused}, true},
		{"500 after applied twice", []billingtest.Fault{billingtest.ServerErrorApplied, billingtest.ServerErrorApplied}, true},
		{"dropped after applied", []billingtest.Fault{billingtest.Dropped}, false},
		{"timeout after applied", []billingtest.Fault{billingtest.Timeout}, false},
		{"dropped then 500 after applied", []billingtest.Fault{billingtest.Dropped, billingtest.ServerErrorApplied}, false},
		{"500 before applying", []billingtest.Fault{billingtest.ServerError}, false},
		{"dropped before applying", []billingtest.Fault{billingtest.DroppedBefore}, false},
		{"timeout before applying", []billingtest.Fault{billingtest.TimeoutBefore}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, ModeMeterEvents, ModeUsageRecords)
			s := billingtest.New()
			defer s.Close()
			s.Delay = time.Second
			seen := map[string]int{}
			injected := 0
			s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
				k := reportOf(r)
				seen[k]++
				if seen[k] <= len(tc.plan) {
					injected++
					return tc.plan[seen[k]-1]
				}
				return billingtest.None
			})
			for _, c := range f.customers {
				f.addUsage(c, hoursAgo(5).Add(time.Minute), "100.25", "76.26")
				f.addUsage(c, hoursAgo(4).Add(time.Minute), "100")
			}
			cfg := f.config(s.URL)
			cfg.RequestTimeout = 300 * time.Millisecond
			w := f.worker(cfg)
			if _, err := w.RunOnce(testCtx(t), time.Now()); err != nil {
				t.Fatal(err)
			}
			// Late usage in a window already reported (or being reported).
			for _, c := range f.customers {
				f.addUsage(c, hoursAgo(5).Add(30*time.Minute), "59.59")
			}
			var runs []RunStats
			for range 10 {
				st, err := w.RunOnce(testCtx(t), time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if runs = append(runs, st); st.Open == 0 && st.Failed == 0 {
					break
				}
			}
			checkBilledOnce(t, f, s)
			reconcileClean(t, f, s, cfg)
			if st := runs[len(runs)-1]; st.Open != 0 || st.Failed != 0 {
				t.Errorf("still open or failed after %d runs: %+v", len(runs), runs)
			}
			if injected == 0 {
				t.Fatal("no fault was injected")
			}
			if tc.refuse && s.DuplicatesRefused() == 0 {
				t.Errorf("Stripe never refused a repeated identifier: %+v", s.Requests())
			}
			// A run with nothing new sends nothing.
			before := len(s.Requests())
			if st, err := w.RunOnce(testCtx(t), time.Now()); err != nil || len(s.Requests()) != before {
				t.Errorf("a run with nothing new sent %d requests (%+v, %v)", len(s.Requests())-before, st, err)
			}
		})
	}
}

// TestBillingReconcileShowsWhatOnlyStripeHolds: once everything is
// reported, Stripe holds more than the ledger says (a meter event and a
// usage record no report of the worker sent). The ledger-only
// reconciliation cannot see it; the reconciliation against Stripe shows it
// as unexplained, naming the reason, and exits with Unexplained() true.
func TestBillingReconcileShowsWhatOnlyStripeHolds(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeUsageRecords)
	meter, usage := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	cfg := f.config(s.URL)
	at := hoursAgo(4)
	f.addUsage(meter, at.Add(time.Minute), "2", "1.5")
	f.addUsage(usage, at.Add(time.Minute), "7")
	f.runUntilClean(f.worker(cfg), 2)
	reconcileClean(t, f, s, cfg)

	s.AddMeterEvent(billingtest.MeterEvent{EventName: testEventName, Identifier: "by_hand_1", Customer: meter.stripe, Value: "5", Timestamp: at.Unix()})
	var last *report
	for _, r := range f.ledger(usage) {
		if last == nil || later(r, last) {
			last = r
		}
	}
	extra := *last
	extra.quantity, extra.stripeTimestamp = decimal.NewFromInt(9), last.stripeTimestamp.Add(time.Second)
	if a := NewStripeAPI(cfg).UsageRecord(testCtx(t), &extra, "by-hand-1"); a.outcome() != resultAcknowledged {
		t.Fatalf("setting a usage record by hand: %+v", a)
	}

	ledgerOnly, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	withStripe, err := ReconcileWithStripe(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), NewStripeAPI(cfg), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	line := func(rec *Reconciliation, id string) ReconLine {
		t.Helper()
		i := slices.IndexFunc(rec.Lines, func(l ReconLine) bool { return l.CustomerID == id })
		if i < 0 {
			t.Fatalf("customer %s missing: %+v", id, rec.Lines)
		}
		return rec.Lines[i]
	}
	for _, c := range f.customers {
		if l := line(ledgerOnly, c.id); !l.Unexplained.IsZero() || l.StripeRead {
			t.Errorf("ledger-only reconciliation of %s: %+v", c.id, l)
		}
	}
	l := line(withStripe, meter.id)
	if l.Stripe.String() != "8.5" || l.Unexplained.String() != "5" || l.Difference.String() != "-5" ||
		!strings.Contains(strings.Join(l.Reasons, ";"), "UNEXPLAINED: -5 Stripe's meter summaries hold more than the ledger reported") {
		t.Errorf("meter events line: %+v", l)
	}
	l = line(withStripe, usage.id)
	if l.Stripe.String() != "9" || l.Unexplained.String() != "2" || !strings.Contains(strings.Join(l.Reasons, ";"), "UNEXPLAINED") ||
		!strings.Contains(strings.Join(l.Reasons, ";"), "usage record summary holds 9") {
		t.Errorf("usage records line: %+v", l)
	}
	if !withStripe.Unexplained() {
		t.Error("Unexplained() is false")
	}
}
