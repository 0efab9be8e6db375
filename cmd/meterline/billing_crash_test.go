package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/billing/billingtest"
	"github.com/meterline/meterline/internal/testenv"
)

// setStackUsage writes rollup rows (a new version of each row) for acme
// and globex of writeBillingStack: window i of windows holds 3+i+extra
// requests and 3.25+i+extra units; and moves the aggregator's watermark.
func setStackUsage(t *testing.T, cfg string, windows []time.Time, extra int) {
	t.Helper()
	var values []string
	for _, c := range []string{"acme", "globex"} {
		for i, w := range windows {
			values = append(values, fmt.Sprintf("('%s', 'key_%s', toDateTime('%s', 'UTC'), '/v1/x', 'GET', '2xx', 'gw', %d, %d.25, now64(3))",
				c, c, w.Format("2006-01-02 15:04:05"), 3+i+extra, 3+i+extra))
		}
	}
	for _, q := range []string{
		"INSERT INTO usage_hour (customer_id, api_key_id, window_start, route, method, status_class, gateway, requests, units, computed_at) VALUES " + strings.Join(values, ", "),
		"INSERT INTO aggregate_state VALUES ('watermark', now64(3), now64(3))",
	} {
		if _, stderr, code, _ := billingCLI(t, nil, "sql", "--config", cfg, q); code != 0 {
			t.Fatalf("sql: %s", stderr)
		}
	}
}

// TestBillingKilledAfterUnknownOutcomeDoesNotBillTwice: Stripe applies
// acme's first meter event and answers 500; `meterline billing run --once`
// is killed (SIGKILL, fault-injection hook METERLINE_TEST_BILLING_CRASH_AFTER_5XX)
// before the answer reaches the ledger. Late usage lands while it is down.
// The restarted worker replays the request (Stripe replays the 500), takes
// the next key under the same identifier, is refused as a duplicate
// identifier, acknowledges it, and reports the late usage as a
// correction: Stripe's totals equal the rollups exactly, and `meterline
// billing reconcile` (which reads Stripe's meter and usage record
// summaries) exits 0.
func TestBillingKilledAfterUnknownOutcomeDoesNotBillTwice(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	s := billingtest.New()
	defer s.Close()
	s.AddMeter("api_units")
	cfg := writeBillingStack(t, s.URL)
	if _, stderr, code, _ := billingCLI(t, nil, "migrate", "--config", cfg); code != 0 {
		t.Fatalf("migrate: %s", stderr)
	}
	w1 := time.Now().UTC().Truncate(time.Hour).Add(-5 * time.Hour)
	w2 := w1.Add(time.Hour)
	windows := []time.Time{w1, w2}
	setStackUsage(t, cfg, windows, 0)

	first := true
	s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
		if r.Customer == "cus_acme" && first {
			first = false
			return billingtest.ServerErrorApplied
		}
		return billingtest.None
	})
	_, stderr, _, killed := billingCLI(t, []string{envCrashAfter5xx + "=1"}, "billing", "run", "--once", "--config", cfg)
	if !killed {
		t.Fatalf("the fault-injection hook did not kill the worker:\n%s", stderr)
	}
	if ev := s.MeterEvents(); len(ev) != 1 || ev[0].Value != "3.25" {
		t.Fatalf("want acme's first event applied before the kill, Stripe holds %+v", ev)
	}
	s.SetFaults(nil)
	setStackUsage(t, cfg, windows, 1)
	out, stderr, code, _ := billingCLI(t, nil, "billing", "run", "--once", "--config", cfg)

	kept := map[int64]float64{}
	for _, e := range s.MeterEvents() {
		var v float64
		fmt.Sscan(e.Value, &v)
		kept[e.Timestamp] += v
	}
	if len(kept) != 2 || kept[w1.Unix()] != 4.25 || kept[w2.Unix()] != 5.25 {
		t.Fatalf("acme's meter events at Stripe per window: %v, want %d: 4.25 and %d: 5.25 (the rollups)\n%+v", kept, w1.Unix(), w2.Unix(), s.Requests())
	}
	if s.DuplicatesRefused() == 0 {
		t.Errorf("the restarted worker never met the duplicate identifier refusal: %+v", s.Requests())
	}
	for _, p := range []string{w1.Format("2006-01"), w2.Format("2006-01")} {
		start, _ := time.Parse("2006-01", p)
		want := int64(0)
		for i, w := range windows {
			if w.Format("2006-01") == p {
				want += int64(4 + i)
			}
		}
		if got, ok := s.UsageTotal("si_globex", start, start.AddDate(0, 1, 0)); !ok || got != want {
			t.Fatalf("usage records at Stripe for %s: %d (%v), want %d", p, got, ok, want)
		}
	}
	if code != 0 {
		t.Fatalf("restarted run: exit %d\n%s%s", code, out, stderr)
	}
	for _, p := range []string{w1.Format("2006-01"), w2.Format("2006-01")} {
		out, stderr, code, _ := billingCLI(t, nil, "billing", "reconcile", "--config", cfg, "--period", p, "--csv")
		if code != 0 || !strings.Contains(out, ",stripe_units") {
			t.Fatalf("reconcile %s: exit %d\n%s%s", p, code, out, stderr)
		}
	}
	n := len(s.Requests())
	if _, stderr, code, _ := billingCLI(t, nil, "billing", "run", "--once", "--config", cfg); code != 0 || len(s.Requests()) != n {
		t.Fatalf("a run with nothing new: exit %d, %d new requests\n%s", code, len(s.Requests())-n, stderr)
	}
}
