package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/store"
)

// envCrashAfterSend is a fault-injection hook for tests, never for
// production: set to N, the billing worker kills its own process (SIGKILL)
// right after Stripe acknowledged its N-th report and before the answer is
// written to the ledger — the worst instant to die. TestBillingKilledAfterSend
// uses it to prove that a restarted worker does not bill twice.
const envCrashAfterSend = "METERLINE_TEST_BILLING_CRASH_AFTER_SEND"

// envCrashAfter5xx is the same hook for answers of unknown outcome: set to
// N, the worker kills itself right after Stripe's N-th 5xx answer, before
// it is written to the ledger (TestBillingKilledAfterUnknownOutcomeDoesNotBillTwice).
const envCrashAfter5xx = "METERLINE_TEST_BILLING_CRASH_AFTER_5XX"

// loadBilling reads the catalogue and the billing mapping. Billing needs
// the catalogue: it gives each customer's plan.
func loadBilling(cfg *Config) (*billing.Mapping, *limits.Catalogue, error) {
	if cfg.Billing.MappingFile == "" {
		return nil, nil, errors.New("billing.mapping_file is not set: it says which Stripe customer, meter or subscription item each customer's usage goes to (see docs/billing.md)")
	}
	if cfg.Limits.CatalogueFile == "" {
		return nil, nil, errors.New("billing needs limits.catalogue_file: the plan catalogue gives each customer's plan")
	}
	cat, err := limits.LoadRegistry(cfg.Limits.CatalogueFile)
	if err != nil {
		return nil, nil, fmt.Errorf("limits.catalogue_file: %w", err)
	}
	m, err := billing.LoadMapping(cfg.Billing.MappingFile, cat)
	if err != nil {
		return nil, nil, err
	}
	return m, cat, nil
}

// startBilling wires the billing role: the Stripe webhook endpoint (when
// billing.webhook_secret is set) and the worker (when billing.mapping_file
// is set; without it the role reports nothing and says so).
func startBilling(cfg *Config, db store.Conn, registry *limits.Registry, catalogue *limits.Catalogue, mux *http.ServeMux,
	reg prometheus.Registerer, log *slog.Logger, goRun func(string, func(context.Context) error)) error {
	var mapping *billing.Mapping
	if cfg.Billing.MappingFile != "" {
		if catalogue == nil {
			return errors.New("billing.mapping_file is set but limits.catalogue_file is not: the catalogue gives each customer's plan")
		}
		m, err := billing.LoadMapping(cfg.Billing.MappingFile, catalogue)
		if err != nil {
			return err
		}
		mapping = m
	}
	var hook *billing.WebhookHandler
	if cfg.Billing.WebhookSecret != "" {
		hook = billing.NewWebhookHandler(cfg.Billing.WebhookSecret, db, mapping, reg, log)
		mux.Handle("/v1/stripe/webhook", hook)
	}
	if mapping == nil {
		log.Warn("billing.mapping_file is not set: the billing role reports nothing to Stripe")
		return nil
	}
	w := billing.NewWorker(cfg.Billing, db, mapping, registry, billing.NewStripeAPI(cfg.Billing), reg, log)
	if err := installCrashHook(w); err != nil {
		return err
	}
	goRun("billing mapping watcher", func(ctx context.Context) error {
		watchMapping(ctx, cfg.Billing.MappingFile, cfg.Limits.ReloadEvery, registry.Catalogue, func(m *billing.Mapping) {
			w.SetMapping(m)
			if hook != nil {
				hook.SetMapping(m)
			}
		}, log)
		return nil
	})
	url := cfg.Billing.StripeAPIURL
	if url == "" {
		url = "https://api.stripe.com"
	}
	log.Info("billing to Stripe", "stripe", url, "customers", len(mapping.Customers), "interval", cfg.Billing.Interval,
		"lateness", cfg.Billing.Lateness, "window", cfg.Billing.Window)
	goRun(roleBilling, w.Run)
	return nil
}

// watchMapping reloads the billing mapping when its file changes, every
// `every` (limits.reload_every, as for the catalogue), validating it against
// the catalogue in force. A valid new mapping is applied (the next billing
// run uses it); an invalid one is logged once and the running mapping kept.
func watchMapping(ctx context.Context, path string, every time.Duration, catalogue func() *limits.Catalogue,
	apply func(*billing.Mapping), log *slog.Logger) {
	if every <= 0 {
		every = 10 * time.Second
	}
	// The first poll applies the file again even when it did not change:
	// harmless, and no change made just after start-up is missed.
	var seen [sha256.Size]byte
	missing := false
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if !missing {
				log.Warn("billing mapping file unreadable; the previous mapping stays in force", "err", err)
			}
			missing = true
			continue
		}
		missing = false
		sum := sha256.Sum256(data)
		if sum == seen {
			continue
		}
		seen = sum
		m, err := billing.LoadMapping(path, catalogue())
		if err != nil {
			log.Error("billing mapping not reloaded: the file is invalid; the previous mapping stays in force", "err", err)
			continue
		}
		apply(m)
		log.Info("billing mapping loaded", "path", path, "customers", len(m.Customers), "plans", len(m.Plans))
	}
}

// installCrashHook arms the envCrashAfterSend and envCrashAfter5xx fault
// injections.
func installCrashHook(w *billing.Worker) error {
	limit := func(name string) (int64, error) {
		v := os.Getenv(name)
		if v == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, fmt.Errorf("%s=%q: want a positive integer", name, v)
		}
		return int64(n), nil
	}
	afterAck, err := limit(envCrashAfterSend)
	if err != nil {
		return err
	}
	after5xx, err := limit(envCrashAfter5xx)
	if err != nil {
		return err
	}
	if afterAck == 0 && after5xx == 0 {
		return nil
	}
	var acked, failed5xx atomic.Int64
	w.SetAfterAnswer(func(ok bool, status int) {
		switch {
		case ok && afterAck > 0 && acked.Add(1) == afterAck:
			fmt.Fprintf(os.Stderr, "%s: killing the process after Stripe's acknowledgement %d, before the ledger write\n", envCrashAfterSend, afterAck)
		case status >= 500 && after5xx > 0 && failed5xx.Add(1) == after5xx:
			fmt.Fprintf(os.Stderr, "%s: killing the process after Stripe's 5xx answer %d, before the ledger write\n", envCrashAfter5xx, after5xx)
		default:
			return
		}
		p, _ := os.FindProcess(os.Getpid())
		_ = p.Kill()
		select {} // the signal is on its way
	})
	return nil
}

func runBilling(args []string, stdout, stderr io.Writer) error {
	const synopsis = `Usage: meterline billing <subcommand> [flags]

  run [--once]                 report settled usage to Stripe (once, or every billing.interval)
  reconcile --period YYYY-MM   per customer: units in rollups, reported, acknowledged, held by Stripe, difference and reason
                               [--csv] CSV for finance; [--ledger-only] without reading Stripe; exits 1 on an unexplained difference
  sync [--write]               fill subscription items of usage_records plans from Stripe
`
	if len(args) == 0 {
		fmt.Fprint(stderr, synopsis)
		return errUsage
	}
	switch args[0] {
	case "run":
		return runBillingRun(args[1:], stdout, stderr)
	case "reconcile":
		return runBillingReconcile(args[1:], stdout, stderr)
	case "sync":
		return runBillingSync(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, synopsis)
		return nil
	}
	fmt.Fprintf(stderr, "unknown billing subcommand %q\n\n%s", args[0], synopsis)
	return errUsage
}

func runBillingRun(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("billing run", "billing run [--config FILE] [--once]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	once := fs.Bool("once", false, "report once and exit (default: every billing.interval until interrupted)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	mapping, cat, err := loadBilling(cfg)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	w := billing.NewWorker(cfg.Billing, db, mapping, limits.NewRegistry(cat), billing.NewStripeAPI(cfg.Billing), nil, log)
	if err := installCrashHook(w); err != nil {
		return err
	}
	if !*once {
		return w.Run(ctx)
	}
	st, err := w.RunOnce(ctx, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "settled up to %s: %d customer(s), %d acknowledged, %d failed, %d open, %d unbillable, %d abandoned, %d request(s)\n",
		st.Settled.Format(time.RFC3339), st.Customers, st.Acknowledged, st.Failed, st.Open, st.Unbillable, st.Abandoned, st.Requests)
	if st.Failed > 0 || st.Open > 0 {
		return fmt.Errorf("%d report(s) failed and %d are still open; see the log, the next run retries them", st.Failed, st.Open)
	}
	return nil
}

func runBillingReconcile(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("billing reconcile", "billing reconcile [--config FILE] --period YYYY-MM [--csv] [--output FILE] [--ledger-only]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	periodFlag := fs.String("period", "", "billing `period` (calendar month, UTC), e.g. 2026-11; required")
	asCSV := fs.Bool("csv", false, "write CSV (for finance) instead of a table")
	output := fs.String("output", "", "write to this `file` instead of standard output")
	ledgerOnly := fs.Bool("ledger-only", false, "compare the rollups with the ledger only, without reading what Stripe holds")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	if *periodFlag == "" {
		fmt.Fprintln(stderr, "--period is required (e.g. --period 2026-11)")
		fs.Usage()
		return errUsage
	}
	period, err := billing.ParsePeriod(*periodFlag)
	if err != nil {
		fmt.Fprintf(stderr, "--period: %v\n", err)
		return errUsage
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	// The finance page reads the reconciliation through the same reader;
	// the command reads the mapping once, before opening the store, so a
	// bad mapping is a quick error.
	fin := &billing.Reader{Config: cfg.Billing}
	if cfg.Billing.MappingFile != "" {
		m, plans, err := loadBillingPlans(cfg)
		if err != nil {
			return err
		}
		fin.Load = func() (*billing.Mapping, billing.Plans, error) { return m, plans, nil }
	}
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	db, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	fin.DB = db
	withStripe := fin.Configured() && !*ledgerOnly
	rec, err := fin.Reconcile(ctx, period, time.Now(), withStripe)
	if err != nil {
		if withStripe {
			return fmt.Errorf("%w (--ledger-only compares with the ledger alone)", err)
		}
		return err
	}
	out := stdout
	if *output != "" {
		f, err := os.Create(*output)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}
	if *asCSV {
		err = rec.WriteCSV(out)
	} else {
		err = rec.WriteTable(out)
	}
	if err != nil {
		return err
	}
	if rec.Unexplained() {
		n := 0
		for _, l := range rec.Lines {
			if !l.Unexplained.IsZero() {
				n++
			}
		}
		return fmt.Errorf("unexplained difference for %d customer(s) in %s", n, period.Format("2006-01"))
	}
	return nil
}

func runBillingSync(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("billing sync", "billing sync [--config FILE] [--write]", stderr)
	var cf commonFlags
	cf.registerFor(fs, flagsStore)
	write := fs.Bool("write", false, "rewrite billing.mapping_file (comments are not kept) instead of printing the new mapping")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs, stderr); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	mapping, cat, err := loadBilling(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	updated, notes, syncErr := billing.Sync(ctx, billing.NewStripeAPI(cfg.Billing), mapping, limits.NewRegistry(cat))
	for _, n := range notes {
		fmt.Fprintln(stderr, n)
	}
	if len(notes) == 0 {
		fmt.Fprintln(stderr, "no change")
	}
	out, err := updated.Marshal()
	if err != nil {
		return err
	}
	if _, err := billing.ParseMapping(out, cat); err != nil {
		return errors.Join(syncErr, fmt.Errorf("the synced mapping is not valid: %w", err))
	}
	if *write {
		if len(notes) > 0 {
			if err := os.WriteFile(cfg.Billing.MappingFile, out, 0o644); err != nil {
				return errors.Join(syncErr, err)
			}
			fmt.Fprintf(stderr, "wrote %s\n", cfg.Billing.MappingFile)
		}
	} else if _, err := stdout.Write(out); err != nil {
		return err
	}
	return syncErr
}
