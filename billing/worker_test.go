package billing

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
)

// checkBilledOnce compares what the stand-in keeps with the rollups and
// the ledger: per meter customer and window, the kept events (one per
// identifier) sum to the rollup units; per usage customer and period, the
// last total set is the whole part of the rollup units; every kept event
// is acknowledged in the ledger with the same value and vice versa.
func checkBilledOnce(t *testing.T, f *fixture, s *billingtest.StripeStandIn) {
	t.Helper()
	kept := map[string]billingtest.MeterEvent{}
	for _, e := range s.MeterEvents() {
		kept[e.Identifier] = e
	}
	for _, c := range f.customers {
		roll := f.rollups(c)
		reports := f.ledger(c)
		if c.mode == ModeMeterEvents {
			billed := map[int64]decimal.Decimal{}
			for _, e := range kept {
				if e.Customer == c.stripe {
					billed[e.Timestamp] = billed[e.Timestamp].Add(decimal.RequireFromString(e.Value))
				}
			}
			for ws, u := range roll {
				if !billed[ws].Equal(u) {
					t.Errorf("customer %s window %s: Stripe has %s, rollups %s", c.id, time.Unix(ws, 0).UTC(), billed[ws], u)
				}
			}
			for ws, b := range billed {
				if _, ok := roll[ws]; !ok {
					t.Errorf("customer %s window %s: Stripe has %s, rollups nothing", c.id, time.Unix(ws, 0).UTC(), b)
				}
			}
			acked := map[string]bool{}
			for _, r := range reports {
				if r.state() != resultAcknowledged {
					t.Errorf("customer %s: report %s is %s", c.id, r.identifier, r.state())
					continue
				}
				acked[r.identifier] = true
				e, ok := kept[r.identifier]
				if !ok || !decimal.RequireFromString(e.Value).Equal(r.quantity) {
					t.Errorf("customer %s: ledger acknowledges %s = %s, Stripe has %+v (kept %v)", c.id, r.identifier, r.quantity, e, ok)
				}
			}
			for id, e := range kept {
				if e.Customer == c.stripe && !acked[id] {
					t.Errorf("customer %s: Stripe keeps %s = %s, the ledger does not acknowledge it", c.id, id, e.Value)
				}
			}
			continue
		}
		periods := map[time.Time]decimal.Decimal{}
		for ws, u := range roll {
			p := periodStart(time.Unix(ws, 0))
			periods[p] = periods[p].Add(u)
		}
		for p, u := range periods {
			got, ok := s.UsageTotal(c.item, p, p.AddDate(0, 1, 0))
			if !ok || got != u.Floor().IntPart() {
				t.Errorf("customer %s period %s: Stripe bills %d (set %v), rollups %s", c.id, p.Format("2006-01"), got, ok, u)
			}
		}
	}
	if n := s.IdempotencyMismatches(); n != 0 {
		t.Errorf("%d idempotency keys were reused with other parameters", n)
	}
}

// TestBillingFaultsBillNothingTwiceAndMissNothing runs the worker against
// the recording stand-in while it injects every fault (429 with and
// without Stripe-Should-Retry and Retry-After, 409, 500 before and after
// applying, timeouts, dropped responses, on about half the requests), then
// adds late usage to windows already reported, and checks that Stripe ends
// up with exactly the rollups, once, and that the ledger matches it.
func TestBillingFaultsBillNothingTwiceAndMissNothing(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeMeterEvents, ModeMeterEvents, ModeUsageRecords)
	s := billingtest.New()
	defer s.Close()
	s.Delay = time.Second
	seed := uint64(time.Now().UnixNano())
	t.Logf("fault seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	faults := []billingtest.Fault{billingtest.RateLimited, billingtest.RateLimitedRetry, billingtest.RateLimitedNoRetry,
		billingtest.Conflict, billingtest.ServerError, billingtest.ServerErrorApplied, billingtest.Timeout, billingtest.Dropped}
	s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
		if n <= len(faults) {
			return faults[n-1] // every kind at least once
		}
		if rng.IntN(2) == 0 {
			return faults[rng.IntN(len(faults))]
		}
		return billingtest.None
	})
	for i, c := range f.customers {
		for h := 3; h <= 9; h += 1 + i%2 {
			f.addUsage(c, hoursAgo(h).Add(time.Duration(h)*time.Minute), "1", "2.5", "0.125")
		}
	}
	cfg := f.config(s.URL)
	cfg.RequestTimeout = 300 * time.Millisecond
	w := f.worker(cfg)
	f.runUntilClean(w, 40)
	checkBilledOnce(t, f, s)

	// Late usage in windows already reported, and in a new window.
	for _, c := range f.customers {
		f.addUsage(c, hoursAgo(5).Add(50*time.Minute), "3", "0.75")
		f.addUsage(c, hoursAgo(12), "7")
	}
	f.runUntilClean(w, 40)
	checkBilledOnce(t, f, s)

	seen := map[billingtest.Fault]int{}
	for _, r := range s.Requests() {
		seen[r.Fault]++
	}
	for _, fk := range faults {
		if seen[fk] == 0 {
			t.Errorf("fault %s was never injected", fk)
		}
	}
	t.Logf("requests by fault: %v; duplicate identifiers refused by the stand-in: %d", seen, s.DuplicatesRefused())

	// A run with nothing new sends nothing.
	before := len(s.Requests())
	st, err := w.RunOnce(testCtx(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.Requests()) - before; got != 0 || st.Acknowledged != 0 {
		t.Errorf("a run with nothing new sent %d requests (%+v)", got, st)
	}

	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), time.Now(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rec.Lines {
		if !slices.ContainsFunc(f.customers, func(c customerSpec) bool { return c.id == l.CustomerID }) {
			continue
		}
		if !l.Unexplained.IsZero() {
			t.Errorf("reconciliation of %s: unexplained %s (%v)", l.CustomerID, l.Unexplained, l.Reasons)
		}
	}
	// And against what Stripe holds: exactly the rollups.
	reconcileClean(t, f, s, cfg)
}

// TestBillingLateUsageIsASeparateCorrection checks the correction rule: a
// window reported as 10 that grows to 13 gets one more meter event of 3
// under a new identifier; the first event is never re-sent with a changed
// value, and a run with nothing new sends nothing.
func TestBillingLateUsageIsASeparateCorrection(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	s := billingtest.New()
	defer s.Close()
	w := f.worker(f.config(s.URL))
	f.addUsage(c, hoursAgo(4).Add(time.Minute), "4", "6")
	f.runUntilClean(w, 3)
	f.addUsage(c, hoursAgo(4).Add(59*time.Minute), "3")
	f.runUntilClean(w, 3)
	f.runUntilClean(w, 1)

	reqs := s.Requests()
	if len(reqs) != 2 {
		t.Fatalf("want 2 requests, got %+v", reqs)
	}
	if reqs[0].Value != "10" || reqs[1].Value != "3" || reqs[0].Identifier == reqs[1].Identifier {
		t.Fatalf("want values 10 then 3 under two identifiers, got %+v", reqs)
	}
	if reqs[0].Timestamp != hoursAgo(4).Unix() || reqs[1].Timestamp != reqs[0].Timestamp {
		t.Errorf("both events belong to the window's start: %+v", reqs)
	}
	checkBilledOnce(t, f, s)
}

// TestBillingTooOldIsUnbillable: usage of a window beyond Stripe's 35-day
// limit is never sent; it is recorded once as unbillable with the reason,
// and the reconciliation explains it.
func TestBillingTooOldIsUnbillable(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	s := billingtest.New()
	defer s.Close()
	cfg := f.config(s.URL)
	w := f.worker(cfg)
	old := time.Now().UTC().Add(-36 * 24 * time.Hour).Truncate(time.Hour)
	f.addUsage(c, old.Add(time.Minute), "5")
	st := f.runUntilClean(w, 1)
	if st[0].Unbillable != 1 || len(s.Requests()) != 0 {
		t.Fatalf("want one unbillable record and no request, got %+v, %d requests", st[0], len(s.Requests()))
	}
	st = f.runUntilClean(w, 1)
	if st[0].Unbillable != 0 {
		t.Fatalf("the unbillable usage was recorded again: %+v", st[0])
	}
	rs := f.ledger(c)
	if len(rs) != 1 || rs[0].state() != resultUnbillable || !rs[0].quantity.Equal(decimal.NewFromInt(5)) || !strings.Contains(rs[0].lastError, "35 days") {
		t.Fatalf("ledger: %+v", rs)
	}
	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), old, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rec.Lines {
		if l.CustomerID == c.id {
			if !l.Unexplained.IsZero() || !l.Unbillable.Equal(decimal.NewFromInt(5)) || !strings.Contains(strings.Join(l.Reasons, ";"), "35-day") {
				t.Fatalf("reconciliation: %+v", l)
			}
			return
		}
	}
	t.Fatalf("customer missing from the reconciliation: %+v", rec.Lines)
}

// TestBillingFailingCustomerDoesNotBlockOthers: Stripe answers 500 to
// every request for one customer; the other customer is billed in the
// same run, the failing one stays open (every attempt recorded with
// Stripe's error), the errors are counted, and the log names the customer
// and Stripe's error.
func TestBillingFailingCustomerDoesNotBlockOthers(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeMeterEvents)
	bad, good := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
		if r.Customer == bad.stripe {
			return billingtest.ServerError
		}
		return billingtest.None
	})
	f.addUsage(bad, hoursAgo(3), "1")
	f.addUsage(good, hoursAgo(3), "2")
	cfg := f.config(s.URL)
	reg := prometheus.NewRegistry()
	w := NewWorker(cfg, f.db, f.mapping, limits.NewRegistry(f.cat), NewStripeAPI(cfg), reg, f.worker(cfg).log)
	st, err := w.RunOnce(testCtx(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Acknowledged != 1 || st.Open != 1 {
		t.Fatalf("want the good customer acknowledged and the bad one open: %+v", st)
	}
	rs := f.ledger(bad)
	if len(rs) != 1 || rs[0].state() != stateOpen || rs[0].lastStatus != 500 || rs[0].keys != cfg.MaxAttempts || !strings.Contains(rs[0].lastError, "api_error") {
		t.Fatalf("bad customer's ledger: %+v", rs)
	}
	if got := testutil.ToFloat64(w.m.errors.WithLabelValues("stripe_unavailable")); got != float64(cfg.MaxAttempts) {
		t.Errorf("meterline_billing_errors_total{kind=stripe_unavailable} = %v, want %d", got, cfg.MaxAttempts)
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "customer_id="+bad.id) || !strings.Contains(logs, "An unknown error occurred") {
		t.Errorf("the log does not name the customer and Stripe's error:\n%s", logs)
	}
	// Stripe recovers: the next run bills it once.
	s.SetFaults(nil)
	f.runUntilClean(w, 2)
	checkBilledOnce(t, f, s)
}

// TestBillingHonoursRetryAfterAndShouldRetry: a 429 with Retry-After: 1
// and Stripe-Should-Retry: true is retried no sooner than a second later
// (billing.retry_max allowing); a 429 with Stripe-Should-Retry: false is not
// retried in the run: it is recorded as failed (Stripe did not apply it)
// and the next run sends the same report (same identifier) again.
func TestBillingHonoursRetryAfterAndShouldRetry(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	s := billingtest.New()
	defer s.Close()
	s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
		switch n {
		case 1:
			return billingtest.RateLimitedRetry
		case 3:
			return billingtest.RateLimitedNoRetry
		}
		return billingtest.None
	})
	cfg := f.config(s.URL)
	cfg.RetryMax = 5 * time.Second
	w := f.worker(cfg)
	f.addUsage(c, hoursAgo(3), "1")
	start := time.Now()
	f.runUntilClean(w, 1)
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("Retry-After: 1 was not honoured: the run took %s", waited)
	}
	f.addUsage(c, hoursAgo(3).Add(time.Minute), "1")
	st, err := w.RunOnce(testCtx(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed != 1 || st.Requests != 1 {
		t.Fatalf("Stripe-Should-Retry: false was retried in the run: %+v", st)
	}
	f.runUntilClean(w, 1)
	reqs := s.Requests()
	if len(reqs) != 4 || reqs[0].IdempotencyKey != reqs[1].IdempotencyKey || reqs[2].Identifier != reqs[3].Identifier {
		t.Fatalf("want 2 reports of 2 requests each: %+v", reqs)
	}
	checkBilledOnce(t, f, s)
}
