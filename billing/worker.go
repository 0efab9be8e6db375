package billing

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/store"
)

const (
	// MeterEventMaxAge is how old a meter event's timestamp may be for
	// Stripe (35 days), less an hour of margin for a request in flight.
	MeterEventMaxAge = 35*24*time.Hour - time.Hour
	// IdentifierWindow is how long an open report is re-sent: Stripe keeps
	// meter event identifiers unique (and idempotency keys) for at least
	// 24 hours; after 23 h without an answer the report is abandoned, not
	// re-sent, because a re-send could then bill twice.
	IdentifierWindow = 23 * time.Hour
	// customerConcurrency is how many customers are reported at once, so
	// that one customer's retries do not hold back the others.
	customerConcurrency = 4
)

// Plans gives each customer's plan: *limits.Registry (the plan catalogue).
type Plans interface {
	Customers() []limits.Customer
}

// RunStats counts what one run did.
type RunStats struct {
	// Settled is the end of the settled time: windows ending at or before
	// it were considered. Zero when the aggregator has not run yet.
	Settled time.Time
	// Customers is the number of mapped customers considered.
	Customers int
	// Acknowledged, Failed and Open count reports by their state at the
	// end of the run (Open: still unanswered, resumed by the next run).
	Acknowledged, Failed, Open int
	// Unbillable and Abandoned count the ledger records of those kinds
	// written by the run.
	Unbillable, Abandoned int
	// Requests counts the requests sent to Stripe.
	Requests int
}

// Worker reports usage to Stripe.
type Worker struct {
	cfg     Config
	db      store.Conn
	mapping atomic.Pointer[Mapping]
	plans   Plans
	api     StripeAPI
	querier *aggregate.Querier
	limiter *limiter
	m       *metrics
	log     *slog.Logger

	afterAnswer func(acknowledged bool, status int)
	mu          sync.Mutex // guards a run: one at a time
}

// NewWorker returns a worker reporting the usage of the customers of
// plans that mapping lists. prom may be nil.
func NewWorker(cfg Config, db store.Conn, mapping *Mapping, plans Plans, api StripeAPI, prom prometheus.Registerer, log *slog.Logger) *Worker {
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Worker{
		cfg: cfg, db: db, plans: plans, api: api,
		querier: aggregate.NewQuerier(db),
		limiter: newLimiter(cfg.MaxRequestsPerSecond),
		m:       newMetrics(prom),
		log:     log,
	}
	w.mapping.Store(mapping)
	return w
}

// SetMapping replaces the mapping (a reloaded billing.mapping_file); the
// next run uses it, a run in progress finishes with the one it started with.
func (w *Worker) SetMapping(m *Mapping) { w.mapping.Store(m) }

// SetAfterAnswer installs a fault-injection hook called after Stripe
// answered a request (acknowledged or not, with its HTTP status, 0 for no
// answer) and before the answer is recorded in the ledger. Only tests use
// it (see METERLINE_TEST_BILLING_CRASH_AFTER_SEND).
func (w *Worker) SetAfterAnswer(f func(acknowledged bool, status int)) { w.afterAnswer = f }

// Run reports every Interval until ctx ends, and once more when the last
// window of a period settles (the period's final report).
func (w *Worker) Run(ctx context.Context) error {
	for {
		if _, err := w.RunOnce(ctx, time.Now()); err != nil && ctx.Err() == nil {
			w.log.Error("billing run failed; retrying at the next interval", "err", err)
		}
		now := time.Now()
		next := now.Add(w.cfg.Interval)
		if final := periodStart(now).AddDate(0, 1, 0).Add(w.cfg.Lateness + 30*time.Second); final.Before(next) {
			next = final
		}
		if !retry.Sleep(ctx, time.Until(next)) {
			return nil
		}
	}
}

// job is one customer to report.
type job struct {
	customer string
	billing  CustomerBilling
	plan     PlanBilling
}

// RunOnce reports everything that is settled at now and not yet
// acknowledged, resuming the reports a previous run left open.
func (w *Worker) RunOnce(ctx context.Context, now time.Time) (RunStats, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	start := time.Now()
	st, err := w.runOnce(ctx, now.UTC())
	w.m.runSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		w.m.runs.WithLabelValues("error").Inc()
		return st, err
	}
	w.m.runs.WithLabelValues("ok").Inc()
	w.m.lastRun.SetToCurrentTime()
	w.m.open.Set(float64(st.Open))
	return st, nil
}

func (w *Worker) runOnce(ctx context.Context, now time.Time) (RunStats, error) {
	var st RunStats
	wm, err := w.querier.Freshness(ctx)
	if err != nil {
		return st, fmt.Errorf("billing: read the aggregator's watermark: %w", err)
	}
	if wm.IsZero() {
		w.log.Info("billing: the aggregator has not run yet; nothing is settled")
		return st, nil
	}
	span := w.cfg.windowSpan()
	settled := minTime(now.Add(-w.cfg.Lateness), wm).Truncate(span)
	st.Settled = settled
	from := now.Add(-w.cfg.Lookback).Truncate(span)

	var jobs []job
	mapping := w.mapping.Load()
	for _, c := range w.plans.Customers() {
		cb, ok := mapping.Customer(c.ID)
		if !ok {
			continue // not billed through Stripe
		}
		pb, ok := mapping.Plan(c.Plan)
		switch {
		case !ok:
			w.m.errors.WithLabelValues("mapping").Inc()
			w.log.Error("billing: the customer's plan has no entry in billing.mapping_file; not reported", "customer_id", c.ID, "plan", c.Plan)
			continue
		case pb.Mode == ModeUsageRecords && cb.SubscriptionItem == "":
			w.m.errors.WithLabelValues("mapping").Inc()
			w.log.Error("billing: the customer's plan reports usage records but it has no subscription_item; not reported", "customer_id", c.ID, "plan", c.Plan)
			continue
		}
		jobs = append(jobs, job{customer: c.ID, billing: cb, plan: pb})
	}
	st.Customers = len(jobs)
	if len(jobs) == 0 {
		return st, nil
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.customer)
	}
	// Usage records look at the current period and the previous one (its
	// final report); meter events at every window of the lookback.
	prevPeriod := periodStart(settled.Add(-time.Second)).AddDate(0, -1, 0)
	readFrom := minTime(from, prevPeriod)
	units, err := windowUnits(ctx, w.db, w.cfg.rollupTable(), ids, readFrom, settled)
	if err != nil {
		w.m.errors.WithLabelValues("clickhouse").Inc()
		return st, err
	}
	reports, err := readReports(ctx, w.db, ids, readFrom, now.Add(24*time.Hour))
	if err != nil {
		w.m.errors.WithLabelValues("clickhouse").Inc()
		return st, err
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, customerConcurrency)
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var cs RunStats
			if j.plan.Mode == ModeMeterEvents {
				w.meterCustomer(ctx, now, from, settled, j, units[j.customer], reports[j.customer], &cs)
			} else {
				w.usageCustomer(ctx, settled, prevPeriod, j, units[j.customer], reports[j.customer], &cs)
			}
			mu.Lock()
			st.Acknowledged += cs.Acknowledged
			st.Failed += cs.Failed
			st.Open += cs.Open
			st.Unbillable += cs.Unbillable
			st.Abandoned += cs.Abandoned
			st.Requests += cs.Requests
			mu.Unlock()
		}()
	}
	wg.Wait()
	w.log.Info("billing run done", "settled", settled, "customers", st.Customers, "acknowledged", st.Acknowledged,
		"failed", st.Failed, "open", st.Open, "unbillable", st.Unbillable, "abandoned", st.Abandoned, "requests", st.Requests)
	return st, ctx.Err()
}

// meterCustomer reports one customer's windows as meter events: for each
// window, first the open reports (resumed with their own identifier and
// value), then, if the rollups hold more than Stripe has, one new event
// for the difference.
func (w *Worker) meterCustomer(ctx context.Context, now, from, settled time.Time, j job, units map[int64]decimal.Decimal, reports []*report, st *RunStats) {
	byWindow := map[int64][]*report{}
	for _, r := range reports {
		if r.mode == ModeMeterEvents {
			byWindow[r.windowStart.Unix()] = append(byWindow[r.windowStart.Unix()], r)
		}
	}
	var windows []int64
	for ws := range units {
		windows = append(windows, ws)
	}
	for ws := range byWindow {
		if _, dup := units[ws]; !dup && ws >= from.Unix() && ws < settled.Unix() {
			windows = append(windows, ws)
		}
	}
	slices.Sort(windows)
	span := w.cfg.windowSpan()
windows:
	for _, ws := range windows {
		if ctx.Err() != nil {
			return
		}
		start := time.Unix(ws, 0).UTC()
		if start.Before(from) || start.Add(span).After(settled) {
			continue
		}
		covered := decimal.Zero
		for _, r := range byWindow[ws] {
			switch r.state() {
			case resultAcknowledged, resultAbandoned, resultUnbillable:
				covered = covered.Add(r.quantity)
			case stateOpen:
				if !r.openSince.IsZero() && r.openSince.Unix() > 0 && now.Sub(r.openSince) > IdentifierWindow {
					w.abandon(ctx, r, st)
					covered = covered.Add(r.quantity)
					continue
				}
				switch w.send(ctx, r, st) {
				case resultAcknowledged:
					covered = covered.Add(r.quantity)
				case stateOpen:
					if r.lastResult == resultFailed {
						// Refused after an answer of unknown outcome: it may
						// be applied, so nothing else is sent for the window
						// until Stripe says which (the next run re-sends it).
						continue windows
					}
					return // Stripe does not answer for this customer: the next run resumes
				}
			}
		}
		u := units[ws]
		delta := u.Sub(covered)
		if !delta.IsPositive() {
			// Nothing new; a negative delta (usage removed after it was
			// reported) is shown by the reconciliation, not sent.
			continue
		}
		r := &report{
			customerID: j.customer, stripeCustomerID: j.billing.StripeCustomerID, mode: ModeMeterEvents,
			target: j.plan.EventName, periodStart: periodStart(start), windowStart: start, windowEnd: start.Add(span),
			stripeTimestamp: start, quantity: delta, cumulative: u,
		}
		if start.Before(now.Add(-MeterEventMaxAge)) {
			r.identifier = unbillableIdentifier(j.customer, j.plan.EventName, start, u)
			reason := fmt.Sprintf("window %s is older than Stripe accepts for meter events (35 days); not reported", start.Format(time.RFC3339))
			if err := appendRows(ctx, w.db, r.row("", resultUnbillable, answer{}, 0, reason, time.Now())); err != nil {
				w.m.errors.WithLabelValues("ledger").Inc()
				w.log.Error("billing: recording unbillable usage failed", "customer_id", j.customer, "err", err)
				return
			}
			st.Unbillable++
			w.m.reports.WithLabelValues(ModeMeterEvents, resultUnbillable).Inc()
			w.log.Warn("billing: usage too old for Stripe recorded as unbillable", "customer_id", j.customer,
				"window_start", start, "units", delta.String())
			continue
		}
		r.identifier = meterIdentifier(j.customer, j.plan.EventName, start, u)
		continueKeys(r, byWindow[ws])
		if w.send(ctx, r, st) == stateOpen && r.lastResult != resultFailed {
			return
		}
	}
}

// usageCustomer reports one customer's period-to-date totals as usage
// records (action=set) for the previous and the current period.
func (w *Worker) usageCustomer(ctx context.Context, settled, prevPeriod time.Time, j job, units map[int64]decimal.Decimal, reports []*report, st *RunStats) {
	item := j.billing.SubscriptionItem
	for p := prevPeriod; p.Before(settled); p = p.AddDate(0, 1, 0) {
		if ctx.Err() != nil {
			return
		}
		asOf := minTime(settled, p.AddDate(0, 1, 0))
		total := decimal.Zero
		for ws, u := range units {
			if ws >= p.Unix() && ws < asOf.Unix() {
				total = total.Add(u)
			}
		}
		var last *report // the latest acknowledged total of this item
		var mine []*report
		for _, r := range reports {
			if r.mode != ModeUsageRecords || !r.windowStart.Equal(p) || r.target != item {
				continue
			}
			mine = append(mine, r)
		}
		for _, r := range mine {
			if r.state() == stateOpen {
				// Re-applying a set is harmless, so open usage records are
				// resent whatever their age.
				if w.send(ctx, r, st) == stateOpen {
					return
				}
			}
			if r.state() == resultAcknowledged && (last == nil || later(r, last)) {
				last = r
			}
		}
		whole := total.Floor()
		if last == nil && whole.IsZero() || last != nil && last.quantity.Equal(whole) {
			continue
		}
		// Never before any total sent for the period, whatever its
		// outcome: one Stripe applied without telling (a 5xx) must not
		// outrank the new total under last_during_period.
		ts := asOf.Add(-time.Second)
		for _, r := range mine {
			if ts.Before(r.stripeTimestamp) {
				ts = r.stripeTimestamp
			}
		}
		r := &report{
			customerID: j.customer, stripeCustomerID: j.billing.StripeCustomerID, mode: ModeUsageRecords,
			target: item, periodStart: p, windowStart: p, windowEnd: asOf, stripeTimestamp: ts,
			quantity: whole, cumulative: total,
			identifier: usageIdentifier(j.customer, item, p, whole.IntPart(), ts),
		}
		continueKeys(r, mine)
		if w.send(ctx, r, st) == stateOpen {
			return
		}
	}
}

// later orders acknowledged usage records: Stripe keeps the one with the
// latest timestamp, then the one set last.
func later(a, b *report) bool {
	if !a.stripeTimestamp.Equal(b.stripeTimestamp) {
		return a.stripeTimestamp.After(b.stripeTimestamp)
	}
	return a.firstAt.After(b.firstAt)
}

// continueKeys carries over the key count of an earlier report with the
// same identifier (one Stripe refused), so the new request gets a fresh
// idempotency key instead of Stripe's stored refusal.
func continueKeys(r *report, earlier []*report) {
	for _, e := range earlier {
		if e.identifier == r.identifier {
			r.keys, r.attempts, r.lastResult, r.lastStatus = e.keys, e.attempts, e.lastResult, e.lastStatus
			r.key = ""
		}
	}
}

// send makes the attempts of one report in this run and returns its state:
// acknowledged, failed or open. A new key is recorded as pending before it
// is sent, so a worker that dies before recording the answer replays the
// same request; every answer is recorded as a row.
func (w *Worker) send(ctx context.Context, r *report, st *RunStats) (state string) {
	defer func() {
		switch state {
		case resultAcknowledged:
			st.Acknowledged++
		case resultFailed:
			st.Failed++
		default:
			st.Open++
		}
	}()
	log := w.log.With("customer_id", r.customerID, "stripe_customer_id", r.stripeCustomerID, "mode", r.mode,
		"target", r.target, "window_start", r.windowStart, "identifier", r.identifier, "quantity", r.quantity.String())
	key, needPending := r.key, false
	if key == "" || r.lastResult == resultFailed || (r.lastResult == resultRetrying && r.lastStatus >= 500) {
		key, needPending = idempotencyKey(r.identifier, r.keys), true
		r.keys++
	}
	bo := retry.NewBackoff(w.cfg.RetryMin, w.cfg.RetryMax)
	for n := 0; n < w.cfg.MaxAttempts; n++ {
		if needPending {
			if err := appendRows(ctx, w.db, r.row(key, resultPending, answer{}, r.attempts+1, "", time.Now())); err != nil {
				// Never send what the ledger does not know about.
				w.m.errors.WithLabelValues("ledger").Inc()
				log.Error("billing: recording a report before sending failed; not sent", "err", err)
				return stateOpen
			}
			needPending = false
		}
		if err := w.limiter.wait(ctx); err != nil {
			return stateOpen
		}
		r.attempts++
		st.Requests++
		var a answer
		if r.mode == ModeMeterEvents {
			a = w.api.MeterEvent(ctx, r, key)
		} else {
			a = w.api.UsageRecord(ctx, r, key)
		}
		res := a.outcome()
		if res == resultRetrying && a.status >= 500 {
			r.markUncertain(time.Now())
		}
		if w.afterAnswer != nil {
			w.afterAnswer(res == resultAcknowledged, a.status)
		}
		// Recorded even when ctx ended: the answer is known now.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err := appendRows(rctx, w.db, r.row(key, res, a, r.attempts, a.errText, time.Now()))
		cancel()
		w.m.reports.WithLabelValues(r.mode, res).Inc()
		if res != resultAcknowledged {
			w.m.errors.WithLabelValues(errorKind(a)).Inc()
		}
		if err != nil {
			w.m.errors.WithLabelValues("ledger").Inc()
			log.Error("billing: recording Stripe's answer failed; the next run replays the request with the same idempotency key",
				"status", a.status, "stripe_request_id", a.requestID, "err", err)
			return stateOpen
		}
		r.lastResult, r.lastStatus = res, a.status
		if a.errText != "" {
			r.lastError = a.errText
		}
		switch res {
		case resultAcknowledged:
			r.acked, r.requestID = true, a.requestID
			w.m.units.WithLabelValues(r.mode).Add(r.quantity.InexactFloat64())
			if a.duplicate {
				w.m.duplicates.Inc()
				log.Info("billing: Stripe already holds this identifier (an earlier attempt applied): acknowledged",
					"idempotency_key", key, "stripe_request_id", a.requestID, "attempt", r.attempts)
				return resultAcknowledged
			}
			log.Info("billing: reported to Stripe", "idempotency_key", key, "stripe_request_id", a.requestID, "attempt", r.attempts)
			return resultAcknowledged
		case resultFailed:
			if r.state() == stateOpen {
				log.Warn("billing: Stripe refused a report after an answer of unknown outcome (5xx); it may be applied, so it stays open and is re-sent under the same identifier",
					"idempotency_key", key, "status", a.status, "stripe_request_id", a.requestID, "stripe_error", a.errText)
				return stateOpen
			}
			log.Error("billing: Stripe refused the report; it is reported again by a later run",
				"idempotency_key", key, "status", a.status, "stripe_request_id", a.requestID, "stripe_error", a.errText)
			return resultFailed
		}
		if ctx.Err() != nil {
			return stateOpen
		}
		if a.status >= 500 {
			// Stripe stores a 5xx under the key and would replay it.
			key, needPending = idempotencyKey(r.identifier, r.keys), true
			r.keys++
		}
		if a.shouldRetry == "false" {
			log.Warn("billing: Stripe asked not to retry now (Stripe-Should-Retry: false); the next run resumes",
				"status", a.status, "stripe_request_id", a.requestID, "stripe_error", a.errText)
			return stateOpen
		}
		wait := bo.Next()
		if a.retryAfter > wait {
			wait = min(a.retryAfter, w.cfg.RetryMax)
		}
		log.Warn("billing: report attempt failed; retrying", "status", a.status, "stripe_request_id", a.requestID,
			"stripe_error", a.errText, "attempt", r.attempts, "retry_in", wait)
		if !retry.Sleep(ctx, wait) {
			return stateOpen
		}
	}
	log.Error("billing: report still unanswered after this run's attempts; the next run resumes it", "attempts", r.attempts, "stripe_error", r.lastError)
	return stateOpen
}

// abandon records that an open report will not be re-sent.
func (w *Worker) abandon(ctx context.Context, r *report, st *RunStats) {
	reason := "no acknowledgement within 23h of the first attempt: Stripe no longer guarantees that a repeat is refused as a duplicate identifier, so it is not sent again; check the meter's events in Stripe (last error: " + r.lastError + ")"
	if err := appendRows(ctx, w.db, r.row(r.key, resultAbandoned, answer{}, r.attempts, reason, time.Now())); err != nil {
		w.m.errors.WithLabelValues("ledger").Inc()
		w.log.Error("billing: recording an abandoned report failed", "customer_id", r.customerID, "err", err)
		return
	}
	r.abandoned = true
	st.Abandoned++
	w.m.reports.WithLabelValues(r.mode, resultAbandoned).Inc()
	w.log.Error("billing: report abandoned; its outcome at Stripe is unknown", "customer_id", r.customerID,
		"stripe_customer_id", r.stripeCustomerID, "identifier", r.identifier, "quantity", r.quantity.String())
}

// errorKinds are the values of meterline_billing_errors_total's kind label.
var errorKinds = []string{"no_answer", "conflict", "rate_limited", "stripe_unavailable", "stripe_refused", "ledger", "clickhouse", "mapping"}

// errorKind names the class of a failed attempt for the errors metric.
func errorKind(a answer) string {
	switch {
	case a.status == 0:
		return "no_answer"
	case a.status == 409:
		return "conflict"
	case a.status == 429:
		return "rate_limited"
	case a.status >= 500:
		return "stripe_unavailable"
	default:
		return "stripe_refused"
	}
}

// periodStart is the start of the calendar month (UTC) holding t.
func periodStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// limiter spaces requests evenly at most rps per second.
type limiter struct {
	mu    sync.Mutex
	next  time.Time
	every time.Duration
}

func newLimiter(rps int) *limiter {
	return &limiter{every: time.Second / time.Duration(max(rps, 1))}
}

func (l *limiter) wait(ctx context.Context) error {
	l.mu.Lock()
	now := time.Now()
	t := l.next
	if t.Before(now) {
		t = now
	}
	l.next = t.Add(l.every)
	l.mu.Unlock()
	if d := t.Sub(now); d > 0 && !retry.Sleep(ctx, d) {
		return ctx.Err()
	}
	return ctx.Err()
}

// metrics of the worker.
type metrics struct {
	reports    *prometheus.CounterVec
	errors     *prometheus.CounterVec
	units      *prometheus.CounterVec
	runs       *prometheus.CounterVec
	runSeconds prometheus.Histogram
	lastRun    prometheus.Gauge
	open       prometheus.Gauge
	duplicates prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_reports_total",
			Help: "Report attempts and ledger records by mode and result (acknowledged, retrying, failed, abandoned, unbillable)."}, []string{"mode", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_errors_total",
			Help: "Billing errors by kind: no_answer, conflict, rate_limited, stripe_unavailable, stripe_refused, ledger, clickhouse, mapping. Logs name the customer."}, []string{"kind"}),
		units: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_units_acknowledged_total",
			Help: "Units in reports Stripe acknowledged (meter events: values; usage records: totals set)."}, []string{"mode"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_runs_total",
			Help: "Billing runs by result (ok, error)."}, []string{"result"}),
		runSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meterline_billing_run_duration_seconds",
			Help: "Duration of a billing run.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_billing_last_run_timestamp_seconds",
			Help: "End of the last billing run that completed."}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterline_billing_open_reports",
			Help: "Reports left unanswered by the last run (resumed by the next)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterline_billing_duplicate_identifiers_total",
			Help: "Meter events Stripe refused as a duplicate identifier, recorded as acknowledged (an earlier attempt of unknown outcome had applied)."}),
	}
	// Every known label value starts at zero, so that dashboards and alert
	// rules see the series (and an increase from it) before the first event.
	for _, mode := range []string{ModeMeterEvents, ModeUsageRecords} {
		m.units.WithLabelValues(mode)
		for _, res := range []string{resultAcknowledged, resultRetrying, resultFailed, resultAbandoned, resultUnbillable} {
			m.reports.WithLabelValues(mode, res)
		}
	}
	for _, kind := range errorKinds {
		m.errors.WithLabelValues(kind)
	}
	m.runs.WithLabelValues("ok")
	m.runs.WithLabelValues("error")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reports, m.errors, m.units, m.runs, m.runSeconds, m.lastRun, m.open, m.duplicates} {
			// A second worker in one process (tests) keeps its own
			// unregistered metrics.
			_ = reg.Register(c)
		}
	}
	return m
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
