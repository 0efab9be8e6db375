package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/billing/billingtest"
	"github.com/meterline/meterline/internal/testenv"
)

// billingCLI runs the meterline binary and returns its output and exit code.
func billingCLI(t *testing.T, env []string, args ...string) (stdout, stderr string, code int, signaled bool) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			signaled = true
		}
	default:
		t.Fatalf("meterline %v: %v", args, err)
	}
	return out.String(), errb.String(), code, signaled
}

// writeBillingStack writes a configuration with a catalogue of one meter
// events customer and one usage records customer, billed on the stand-in.
func writeBillingStack(t *testing.T, stripeURL string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cat := write("catalogue.yaml", `plans:
  - id: starter
  - id: pro
customers:
  - id: acme
    plan: starter
    keys: [key_acme]
  - id: globex
    plan: pro
    keys: [key_globex]
`)
	mapping := write("billing.yaml", `plans:
  - plan: starter
    mode: meter_events
    event_name: api_units
  - plan: pro
    mode: usage_records
customers:
  - id: acme
    stripe_customer_id: cus_acme
  - id: globex
    stripe_customer_id: cus_globex
    subscription_item: si_globex
`)
	return write("meterline.yaml", fmt.Sprintf(`clickhouse:
  data_dir: %s
limits:
  catalogue_file: %s
billing:
  stripe_api_key: sk_test_e2e
  stripe_api_url: %s
  mapping_file: %s
  request_timeout: 2s
  retry_min: 10ms
  retry_max: 100ms
`, filepath.Join(dir, "ch"), cat, stripeURL, mapping))
}

// TestBillingKilledAfterSendDoesNotBillTwice kills `meterline billing run
// --once` with SIGKILL right after Stripe acknowledged a report and before
// the ledger records it (fault-injection hook METERLINE_TEST_BILLING_CRASH_AFTER_SEND),
// restarts it, and checks that the stand-in applied every report once:
// the restarted worker replays the interrupted request with the same
// idempotency key and gets the stored answer. The reconciliation exits 1
// while usage is unreported and 0 once everything is acknowledged.
func TestBillingKilledAfterSendDoesNotBillTwice(t *testing.T) {
	testenv.Require(t, testenv.EnvChdb)
	s := billingtest.New()
	defer s.Close()
	s.AddMeter("api_units") // the meter the mapping names, as set up in Stripe
	cfg := writeBillingStack(t, s.URL)
	if _, stderr, code, _ := billingCLI(t, nil, "migrate", "--config", cfg); code != 0 {
		t.Fatalf("migrate: %s", stderr)
	}
	w1 := time.Now().UTC().Truncate(time.Hour).Add(-5 * time.Hour)
	w2 := w1.Add(time.Hour)
	// setUsage writes rollup rows (a new version of each row): window w1
	// holds 3.25+extra units, w2 4.25+extra, for both customers.
	setUsage := func(extra int) {
		var values []string
		for _, c := range []string{"acme", "globex"} {
			for i, w := range []time.Time{w1, w2} {
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
	setUsage(0)
	periods := map[string]bool{w1.Format("2006-01"): true, w2.Format("2006-01"): true}
	reconcile := func() (int, string) {
		worst, all := 0, ""
		for p := range periods {
			out, stderr, code, _ := billingCLI(t, nil, "billing", "reconcile", "--config", cfg, "--period", p)
			worst, all = max(worst, code), all+out+stderr
		}
		return worst, all
	}
	if code, out := reconcile(); code != 1 || !strings.Contains(out, "UNEXPLAINED") {
		t.Fatalf("reconcile before billing: exit %d, want 1 with an unexplained difference:\n%s", code, out)
	}

	// Stripe refuses globex's report in the first run, so that the kill
	// deterministically hits acme's first meter event.
	s.SetFaults(func(n int, r *billingtest.Request) billingtest.Fault {
		if strings.Contains(r.Path, "si_globex") {
			return billingtest.Refused
		}
		return billingtest.None
	})
	_, stderr, _, killed := billingCLI(t, []string{envCrashAfterSend + "=1"}, "billing", "run", "--once", "--config", cfg)
	if !killed {
		t.Fatalf("the fault-injection hook did not kill the worker:\n%s", stderr)
	}
	s.SetFaults(nil)
	var before []billingtest.Request
	for _, r := range s.Requests() {
		if r.Status == 200 {
			before = append(before, r)
		}
	}
	if len(before) != 1 || before[0].Identifier == "" {
		t.Fatalf("want one acknowledged meter event before the kill, got %+v", s.Requests())
	}
	// Late usage lands in every window while the worker is down: the
	// restarted worker must finish the interrupted report as it was sent
	// (same identifier, value and key) and report the rest as corrections,
	// not send a new report for the whole window.
	setUsage(1)
	out, stderr, code, _ := billingCLI(t, nil, "billing", "run", "--once", "--config", cfg)
	if code != 0 {
		t.Fatalf("restarted run: exit %d\n%s%s", code, out, stderr)
	}
	reqs := s.Requests()
	replayed := 0
	for _, r := range reqs {
		if r.IdempotencyKey == before[0].IdempotencyKey && r.Replayed {
			replayed++
		}
	}
	if replayed != 1 {
		t.Fatalf("the restarted worker did not replay the interrupted request once with its key: %+v", reqs)
	}
	// acme (meter events): the kept events of each window sum to its units.
	kept := map[int64]float64{}
	for _, e := range s.MeterEvents() {
		var v float64
		fmt.Sscan(e.Value, &v)
		kept[e.Timestamp] += v
	}
	if len(kept) != 2 || kept[w1.Unix()] != 4.25 || kept[w2.Unix()] != 5.25 || s.DuplicatesRefused() != 0 {
		t.Fatalf("meter events at Stripe: %v (duplicates refused %d)", kept, s.DuplicatesRefused())
	}
	// globex (usage records): the period-to-date total, whole units.
	for p := range periods {
		start, _ := time.Parse("2006-01", p)
		want := int64(0)
		for _, w := range []time.Time{w1, w2} {
			if w.Format("2006-01") == p {
				want += int64(4 + int(w.Sub(w1)/time.Hour))
			}
		}
		if got, ok := s.UsageTotal("si_globex", start, start.AddDate(0, 1, 0)); !ok || got != want {
			t.Fatalf("usage records at Stripe for %s: %d (%v), want %d", p, got, ok, want)
		}
	}
	// Every key was recorded as pending once and has one outcome.
	rows := sqlRows(t, cfg, "SELECT idempotency_key, countIf(result = 'pending'), countIf(result IN ('acknowledged', 'failed')), countIf(result = 'acknowledged') FROM billing_ledger GROUP BY idempotency_key")
	acked := 0
	for _, r := range rows {
		f := strings.Fields(r)
		if f[1] != "1" || f[2] != "1" {
			t.Errorf("ledger: key %s has %s pending and %s outcome rows", f[0], f[1], f[2])
		}
		if f[3] == "1" {
			acked++
		}
	}
	if acked < 4 {
		t.Fatalf("ledger: %d acknowledged reports, want at least 4: %v", acked, rows)
	}
	if code, out := reconcile(); code != 0 {
		t.Fatalf("reconcile after billing: exit %d\n%s", code, out)
	}
	// A third run sends nothing.
	n := len(s.Requests())
	if _, stderr, code, _ := billingCLI(t, nil, "billing", "run", "--once", "--config", cfg); code != 0 || len(s.Requests()) != n {
		t.Fatalf("a run with nothing new: exit %d, %d new requests\n%s", code, len(s.Requests())-n, stderr)
	}
}

// TestBillingCLIRejectsBadInput: bad flags and periods exit 2 with a clear
// message; a bad billing section names the setting; `meterline config`
// redacts the Stripe secrets.
func TestBillingCLIRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"billing", "reconcile", "--period", "2026-13"}, `--period: period "2026-13"`},
		{[]string{"billing", "reconcile", "--period", "nov"}, "YYYY-MM"},
		{[]string{"billing", "reconcile"}, "--period is required"},
		{[]string{"billing"}, "Usage: meterline billing"},
		{[]string{"billing", "refund"}, `unknown billing subcommand "refund"`},
		{[]string{"billing", "run", "--once", "extra"}, `unexpected argument "extra"`},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}

	cfg := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(cfg, []byte("billing:\n  mapping_file: x.yaml\n  window: week\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"config", "--config", cfg}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "billing.stripe_api_key") || !strings.Contains(stderr.String(), "billing.window") {
		t.Errorf("bad billing section: exit %d, %s", code, stderr.String())
	}
	if err := os.WriteFile(cfg, []byte("billing:\n  stripe_api_key: sk_test_secret123\n  webhook_secret: whsec_secret456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"config", "--config", cfg}, &stdout, &stderr); code != 0 {
		t.Fatalf("config: %s", stderr.String())
	}
	if out := stdout.String(); strings.Contains(out, "secret123") || strings.Contains(out, "secret456") || !strings.Contains(out, "stripe_api_key: <redacted>") {
		t.Errorf("secrets not redacted:\n%s", out)
	}
	if !strings.Contains(stdout.String(), "ledger_months: 12") {
		t.Errorf("retention.ledger_months missing from the effective configuration")
	}
}

// TestBillingMappingWatcher: an edited mapping file is applied without a
// restart; an invalid edit is refused and the last good mapping stays.
func TestBillingMappingWatcher(t *testing.T) {
	dir := t.TempDir()
	cat, err := limits.ParseCatalogue([]byte(`plans:
  - {id: starter, included_units: 10}
customers:
  - {id: acme, plan: starter, keys: [k1]}
  - {id: globex, plan: starter, keys: [k2]}
`))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "billing.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const head = "plans:\n  - {plan: starter, mode: meter_events, event_name: api_units}\ncustomers:\n  - {id: acme, stripe_customer_id: cus_A}\n"
	write(head)
	refusals := &refusalLog{}
	applied := make(chan *billing.Mapping, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchMapping(ctx, path, 20*time.Millisecond, func() *limits.Catalogue { return cat }, func(m *billing.Mapping) { applied <- m },
			slog.New(refusals))
	}()
	defer func() { cancel(); <-done }()
	next := func() *billing.Mapping {
		t.Helper()
		select {
		case m := <-applied:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("no mapping applied within 10 s")
			return nil
		}
	}
	if m := next(); len(m.Customers) != 1 {
		t.Fatalf("first load: %+v", m.Customers)
	}
	write(head + "  - {id: globex, stripe_customer_id: cus_G}\n")
	if m := next(); len(m.Customers) != 2 {
		t.Fatalf("after adding globex: %+v", m.Customers)
	}
	write(head + "  - {id: nobody, stripe_customer_id: cus_N}\n") // not in the catalogue
	write(head + "  - {id: globex, stripe_customer_id: cus_G2, colour: red}\n")
	// The watcher has read the last invalid file once it refuses it.
	testenv.Eventually(t, 10*time.Second, func() error {
		if !refusals.seen("colour") {
			return errors.New("the last invalid mapping has not been refused yet")
		}
		return nil
	})
	select {
	case m := <-applied:
		t.Fatalf("an invalid mapping was applied: %+v", m.Customers)
	default:
	}
	write(head + "  - {id: globex, stripe_customer_id: cus_G3}\n")
	if m := next(); len(m.Customers) != 2 || m.Customers[1].StripeCustomerID != "cus_G3" {
		t.Fatalf("after fixing the file: %+v", m.Customers)
	}
}

// refusalLog is a slog handler that keeps the "err" attribute of every
// error record.
type refusalLog struct {
	mu   sync.Mutex
	errs []string
}

func (l *refusalLog) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelError
}
func (l *refusalLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			l.mu.Lock()
			l.errs = append(l.errs, a.Value.String())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}
func (l *refusalLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *refusalLog) WithGroup(string) slog.Handler      { return l }

// seen reports whether an error naming s was logged.
func (l *refusalLog) seen(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		if strings.Contains(e, s) {
			return true
		}
	}
	return false
}
