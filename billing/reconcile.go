package billing

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

// ReconLine is the reconciliation of one customer for one period.
type ReconLine struct {
	CustomerID       string
	StripeCustomerID string
	Mode             string
	// Rollup are the units in the rollups for the period.
	Rollup decimal.Decimal
	// Reported are the units sent to Stripe and not refused (acknowledged,
	// in flight or of unknown outcome); for usage records the last total sent.
	Reported decimal.Decimal
	// Acknowledged are the units Stripe acknowledged; for usage records the
	// last total it acknowledged.
	Acknowledged decimal.Decimal
	// Unbillable are the units recorded as never to be reported.
	Unbillable decimal.Decimal
	// Stripe are the units Stripe itself holds for the period (meter
	// event summaries; for usage records the period's usage record
	// summary), when StripeRead (ReconcileWithStripe).
	Stripe     decimal.Decimal
	StripeRead bool
	// Difference is Rollup - Stripe when Stripe was read, otherwise
	// Rollup - Acknowledged; Unexplained is the size of the part of it no
	// known reason covers, plus the size of any difference between what
	// Stripe holds and what the ledger says it was sent (sizes add up: a
	// surplus never cancels a shortfall).
	Difference  decimal.Decimal
	Unexplained decimal.Decimal
	// Reasons explain the difference, each with its units.
	Reasons []string
	// Invoices are the Stripe invoices whose period overlaps this one, as
	// "in_... (status)".
	Invoices []string
}

// Reconciliation is the result of Reconcile.
type Reconciliation struct {
	Period  time.Time
	Settled time.Time
	Lines   []ReconLine
}

// Unexplained reports whether any line has an unexplained difference.
func (r *Reconciliation) Unexplained() bool {
	for _, l := range r.Lines {
		if !l.Unexplained.IsZero() {
			return true
		}
	}
	return false
}

var periodRe = regexp.MustCompile(`^(\d{4})-(\d{2})$`)

// ParsePeriod reads a billing period YYYY-MM (a calendar month, UTC).
func ParsePeriod(s string) (time.Time, error) {
	m := periodRe.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, fmt.Errorf("period %q is not YYYY-MM (e.g. 2026-11)", s)
	}
	t, err := time.Parse("2006-01", s)
	if err != nil || t.Year() < 2000 || t.Year() > 2200 {
		return time.Time{}, fmt.Errorf("period %q is not a month between 2000-01 and 2200-12", s)
	}
	return t.UTC(), nil
}

// Reconcile compares, per customer, the period's rollups with what the
// ledger says was reported and acknowledged, and explains the difference:
// windows not settled yet, reports in flight, usage too old for Stripe,
// fractions of a unit (usage records take whole units), usage removed
// after it was reported (meter events cannot be lowered), windows that
// settled within two intervals (the next run reports them). What no reason
// covers is unexplained: settled usage not reported (with Stripe's last
// refusal, if any) and reports abandoned with an unknown outcome.
func Reconcile(ctx context.Context, db store.Conn, cfg Config, mapping *Mapping, plans Plans, period, now time.Time) (*Reconciliation, error) {
	return ReconcileWithStripe(ctx, db, cfg, mapping, plans, nil, period, now)
}

// ReconcileWithStripe is Reconcile that also reads what Stripe holds (api;
// nil reads the ledger only): per meter events customer the meter's event
// summaries per hour of the period, per usage records customer the usage
// record summary of the period, and compares them with the rollups. A
// difference between Stripe and the ledger that no report of unknown
// outcome explains (Stripe holding more than the ledger sent, or less
// than it acknowledged) is unexplained, so nothing the ledger does not
// know about is hidden. Stripe aggregates meter events asynchronously:
// units acknowledged within the last two intervals and not yet in the
// summaries are explained as such.
func ReconcileWithStripe(ctx context.Context, db store.Conn, cfg Config, mapping *Mapping, plans Plans, api StripeAPI, period, now time.Time) (*Reconciliation, error) {
	cfg = cfg.WithDefaults()
	period = periodStart(period)
	end := period.AddDate(0, 1, 0)
	now = now.UTC()
	span := cfg.windowSpan()
	wm, err := readWatermark(ctx, db)
	if err != nil {
		return nil, err
	}
	settled := minTime(now.Add(-cfg.Lateness), wm).Truncate(span)
	rec := &Reconciliation{Period: period, Settled: settled}

	customers := map[string]bool{}
	modes := map[string]string{}
	stripeIDs := map[string]string{}
	targets := map[string]string{} // meter event name or subscription item
	if mapping != nil {
		for _, c := range mapping.Customers {
			customers[c.ID] = true
			stripeIDs[c.ID] = c.StripeCustomerID
			if c.SubscriptionItem != "" {
				targets[c.ID] = c.SubscriptionItem
			}
		}
		if plans != nil {
			for _, c := range plans.Customers() {
				if p, ok := mapping.Plan(c.Plan); ok && customers[c.ID] {
					modes[c.ID] = p.Mode
					if p.Mode == ModeMeterEvents {
						targets[c.ID] = p.EventName
					}
				}
			}
		}
	}
	ledgerCustomers, err := ledgerCustomersOf(ctx, db, period)
	if err != nil {
		return nil, err
	}
	for _, c := range ledgerCustomers {
		customers[c] = true
	}
	ids := sortedKeys(customers)
	units, err := windowUnits(ctx, db, cfg.rollupTable(), ids, period, end)
	if err != nil {
		return nil, err
	}
	reports, err := readReports(ctx, db, ids, period, end)
	if err != nil {
		return nil, err
	}
	invoices, err := readInvoices(ctx, db, period)
	if err != nil {
		return nil, err
	}
	// One line reads a Stripe customer's holdings: when an erased
	// customer still in the mapping shares its Stripe customer with its
	// pseudonym's line, the line with ledger reports (the pseudonym's)
	// does, so the same Stripe units are not compared twice.
	stripeOwner := map[string]string{}
	for _, c := range ids {
		sid := stripeIDs[c]
		if sid == "" && len(reports[c]) > 0 {
			sid = reports[c][0].stripeCustomerID
		}
		if o, ok := stripeOwner[sid]; !ok || len(reports[o]) == 0 && len(reports[c]) > 0 {
			stripeOwner[sid] = c
		}
	}
	recent := now.Add(-2 * cfg.Interval)
	for _, c := range ids {
		l := ReconLine{CustomerID: c, StripeCustomerID: stripeIDs[c], Mode: modes[c]}
		target := targets[c]
		for _, r := range reports[c] {
			if l.Mode == "" {
				l.Mode = r.mode
			}
			if l.StripeCustomerID == "" {
				l.StripeCustomerID = r.stripeCustomerID
			}
			if target == "" && r.mode == l.Mode {
				target = r.target
			}
		}
		var held map[int64]decimal.Decimal
		var heldUsage *decimal.Decimal
		if api != nil && target != "" && l.StripeCustomerID != "" && stripeOwner[l.StripeCustomerID] == c {
			var err error
			switch l.Mode {
			case ModeMeterEvents:
				held = map[int64]decimal.Decimal{}
				if to := minTime(end, now.Truncate(time.Hour).Add(time.Hour)); to.After(period) {
					held, err = api.MeterSummaries(ctx, target, l.StripeCustomerID, period, to)
				}
				for _, v := range held {
					l.Stripe = l.Stripe.Add(v)
				}
				l.StripeRead = err == nil
			case ModeUsageRecords:
				var sums []UsageSummary
				sums, err = api.UsageSummaries(ctx, target)
				total := decimal.Zero
				for _, u := range sums {
					// The summary of the subscription period that starts in
					// this calendar month (Meterline's period).
					if !u.Start.Before(period) && u.Start.Before(end) {
						total = total.Add(decimal.NewFromInt(u.Total))
					}
				}
				heldUsage, l.Stripe, l.StripeRead = &total, total, err == nil
			}
			if err != nil {
				return nil, fmt.Errorf("billing: reading what Stripe holds for customer %s: %w", c, err)
			}
		}
		for _, u := range units[c] {
			l.Rollup = l.Rollup.Add(u)
		}
		reasons := map[string]decimal.Decimal{}
		var unexplained []string
		explain := func(why string, d decimal.Decimal) {
			if !d.IsZero() {
				reasons[why] = reasons[why].Add(d)
			}
		}
		markUnexplained := func(why string, d decimal.Decimal) {
			if !d.IsZero() {
				explain(why, d)
				// By size: a surplus at Stripe must not cancel a shortfall.
				l.Unexplained = l.Unexplained.Add(d.Abs())
				if !slices.Contains(unexplained, why) {
					unexplained = append(unexplained, why)
				}
			}
		}
		switch l.Mode {
		case ModeMeterEvents:
			reconcileMeter(&l, cfg, units[c], reports[c], held, settled, recent, span, explain, markUnexplained)
		case ModeUsageRecords:
			reconcileUsage(&l, cfg, units[c], reports[c], heldUsage, period, settled, recent, explain, markUnexplained)
		default:
			l.Mode = "-"
			explain("not billed through Stripe (no mapping)", l.Rollup)
		}
		l.Difference = l.Rollup.Sub(l.Acknowledged)
		if l.StripeRead {
			l.Difference = l.Rollup.Sub(l.Stripe)
		}
		if strings.HasPrefix(c, privacy.PseudonymPrefix) && l.Unexplained.IsZero() {
			// An erased customer: its rollups were deleted on request and its
			// billing records kept under a pseudonym, so all it was billed
			// now shows as removed usage, for that known reason.
			reasons = map[string]decimal.Decimal{"customer erased on request (" + c + "): rollups deleted, billing records kept under this pseudonym": l.Difference}
		}
		for _, why := range sortedKeys(reasons) {
			mark := ""
			if slices.Contains(unexplained, why) {
				mark = "UNEXPLAINED: "
			}
			l.Reasons = append(l.Reasons, fmt.Sprintf("%s%s %s", mark, reasons[why].String(), why))
		}
		l.Invoices = invoices[l.StripeCustomerID]
		rec.Lines = append(rec.Lines, l)
	}
	return rec, nil
}

type explainFunc func(why string, d decimal.Decimal)

func reconcileMeter(l *ReconLine, cfg Config, units map[int64]decimal.Decimal, reports []*report, held map[int64]decimal.Decimal, settled, recent time.Time, span time.Duration, explain, unexplained explainFunc) {
	type win struct {
		acked, open, abandoned, unbillable, stripe decimal.Decimal
		ackedRecently                              bool
	}
	wins := map[int64]*win{}
	lastErr := map[int64]string{}
	get := func(ws int64) *win {
		if wins[ws] == nil {
			wins[ws] = &win{}
		}
		return wins[ws]
	}
	for _, r := range reports {
		if r.mode != ModeMeterEvents {
			continue
		}
		ws := r.windowStart.Unix()
		w := get(ws)
		switch r.state() {
		case resultAcknowledged:
			w.acked = w.acked.Add(r.quantity)
			w.ackedRecently = w.ackedRecently || r.firstAt.After(recent)
			l.Reported = l.Reported.Add(r.quantity)
			l.Acknowledged = l.Acknowledged.Add(r.quantity)
		case stateOpen:
			w.open = w.open.Add(r.quantity)
			l.Reported = l.Reported.Add(r.quantity)
		case resultAbandoned:
			w.abandoned = w.abandoned.Add(r.quantity)
			l.Reported = l.Reported.Add(r.quantity)
		case resultUnbillable:
			w.unbillable = w.unbillable.Add(r.quantity)
			l.Unbillable = l.Unbillable.Add(r.quantity)
		case resultFailed:
			lastErr[ws] = r.lastError
		}
	}
	for ws := range units {
		get(ws)
	}
	for h, v := range held {
		ws := time.Unix(h, 0).UTC().Truncate(span).Unix()
		w := get(ws)
		w.stripe = w.stripe.Add(v)
	}
	for ws, w := range wins {
		u := units[ws]
		end := time.Unix(ws, 0).Add(span)
		explain("older than Stripe's 35-day limit for meter events (unbillable)", w.unbillable)
		// What Stripe holds of the reports with an unknown outcome: with
		// Stripe read, the part of its total above the acknowledged units;
		// the abandoned ones first (the oldest).
		heldAbandoned, heldOpen := decimal.Zero, decimal.Zero
		if held != nil {
			extra := w.stripe.Sub(w.acked)
			switch unknown := w.open.Add(w.abandoned); {
			case extra.IsNegative() && w.ackedRecently:
				explain("acknowledged recently; not in Stripe's meter summaries yet (they are eventually consistent)", extra.Neg())
			case extra.IsNegative():
				unexplained("Stripe's meter summaries hold less than the ledger acknowledges", extra.Neg())
			case extra.GreaterThan(unknown):
				unexplained("Stripe's meter summaries hold more than the ledger reported (events the ledger does not know about)", extra.Sub(unknown).Neg())
				heldAbandoned, heldOpen = w.abandoned, w.open
			default:
				heldAbandoned = decimal.Min(extra, w.abandoned)
				heldOpen = extra.Sub(heldAbandoned)
			}
		}
		explain("in flight (sent, awaiting Stripe's answer)", w.open.Sub(heldOpen))
		if held != nil {
			unexplained("outcome unknown (abandoned after 23h without an answer) and not in Stripe's meter summaries", w.abandoned.Sub(heldAbandoned))
		} else {
			unexplained("outcome unknown (abandoned after 23h without an answer; check the meter in Stripe)", w.abandoned)
		}
		residual := u.Sub(w.acked).Sub(w.open).Sub(w.abandoned).Sub(w.unbillable)
		switch {
		case residual.IsZero():
		case end.After(settled):
			explain("window not settled yet (billing.lateness or the aggregator's watermark)", residual)
		case residual.IsNegative():
			explain("usage removed after it was reported (erasure, duplicates); meter events cannot be lowered: credit the customer if needed", residual)
		case end.Add(cfg.Lateness).After(recent):
			explain("settled recently; reported by the next run", residual)
		case lastErr[ws] != "":
			unexplained("settled, refused by Stripe: "+lastErr[ws], residual)
		default:
			unexplained("settled but not reported (is the billing worker running?)", residual)
		}
	}
}

func reconcileUsage(l *ReconLine, cfg Config, units map[int64]decimal.Decimal, reports []*report, held *decimal.Decimal, period, settled, recent time.Time, explain, unexplained explainFunc) {
	var lastAck, lastSent *report
	lastErr := ""
	for _, r := range reports {
		if r.mode != ModeUsageRecords || !r.windowStart.Equal(period) {
			continue
		}
		switch r.state() {
		case resultAcknowledged:
			if lastAck == nil || later(r, lastAck) {
				lastAck = r
			}
			if lastSent == nil || later(r, lastSent) {
				lastSent = r
			}
		case stateOpen, resultAbandoned:
			if lastSent == nil || later(r, lastSent) {
				lastSent = r
			}
		case resultFailed:
			lastErr = r.lastError
		}
	}
	if lastAck != nil {
		l.Acknowledged = lastAck.quantity
	}
	if lastSent != nil {
		l.Reported = lastSent.quantity
	}
	asOf := minTime(settled, period.AddDate(0, 1, 0))
	settledUnits := decimal.Zero
	for ws, u := range units {
		if ws < asOf.Unix() {
			settledUnits = settledUnits.Add(u)
		}
	}
	explain("window not settled yet (billing.lateness or the aggregator's watermark)", l.Rollup.Sub(settledUnits))
	whole := settledUnits.Floor()
	explain("fraction of a unit (usage records take whole units)", settledUnits.Sub(whole))
	billed := l.Acknowledged
	if held != nil {
		// Stripe's total is what is billed; it may differ from the last
		// acknowledged total only by a total sent with an unknown outcome.
		billed = *held
		if !held.Equal(l.Acknowledged) && (lastSent == nil || lastSent.state() == resultAcknowledged || !held.Equal(lastSent.quantity)) {
			unexplained(fmt.Sprintf("Stripe's usage record summary holds %s, the ledger's last acknowledged total is %s", held.String(), l.Acknowledged.String()),
				l.Acknowledged.Sub(*held))
		}
	}
	residual := whole.Sub(billed)
	// Units of windows that became billable (window end + lateness) within
	// the last two intervals: the next run reports them. Older settled
	// units that are still unreported are unexplained.
	recentUnits := decimal.Zero
	span := cfg.windowSpan()
	for ws, u := range units {
		if ws < asOf.Unix() && time.Unix(ws, 0).Add(span+cfg.Lateness).After(recent) {
			recentUnits = recentUnits.Add(u)
		}
	}
	switch {
	case residual.IsZero():
	case lastSent != nil && lastSent.state() == stateOpen && lastSent.quantity.Equal(whole) && (held == nil || !held.Equal(whole)):
		explain("in flight (sent, awaiting Stripe's answer)", residual)
	case !residual.GreaterThan(recentUnits):
		explain("settled recently; reported by the next run", residual)
	default:
		explain("settled recently; reported by the next run", recentUnits)
		if lastErr != "" {
			unexplained("settled, refused by Stripe: "+lastErr, residual.Sub(recentUnits))
		} else {
			unexplained("settled but not reported (is the billing worker running?)", residual.Sub(recentUnits))
		}
	}
}

// ledgerCustomersOf lists the customers with ledger rows for the period.
func ledgerCustomersOf(ctx context.Context, db store.Conn, period time.Time) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT DISTINCT customer_id FROM billing_ledger WHERE period_start = {p:DateTime('UTC')} ORDER BY customer_id`, store.P("p", period))
	if err != nil {
		return nil, fmt.Errorf("billing: read ledger: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("billing: read ledger: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// readInvoices returns, per Stripe customer, the period's invoices (as
// Invoices lists them) as "in_... (status)".
func readInvoices(ctx context.Context, db store.Conn, period time.Time) (map[string][]string, error) {
	list, err := Invoices(ctx, db, period)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, in := range list {
		out[in.StripeCustomerID] = append(out[in.StripeCustomerID], fmt.Sprintf("%s (%s)", in.InvoiceID, in.Status))
	}
	return out, nil
}

// readWatermark reads the aggregator's watermark (zero before its first tick).
func readWatermark(ctx context.Context, db store.Conn) (time.Time, error) {
	rows, err := db.Query(ctx, `SELECT value FROM aggregate_state FINAL WHERE name = 'watermark'`)
	if err != nil {
		return time.Time{}, fmt.Errorf("billing: read the aggregator's watermark: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var w time.Time
	for rows.Next() {
		if err := rows.Scan(&w); err != nil {
			return time.Time{}, fmt.Errorf("billing: read the aggregator's watermark: %w", err)
		}
	}
	return w.UTC(), rows.Err()
}

var reconHeader = []string{"customer_id", "stripe_customer_id", "mode", "rollup_units", "reported_units",
	"acknowledged_units", "unbillable_units", "difference", "unexplained", "reason", "invoices", "stripe_units"}

func (l ReconLine) cells() []string {
	stripeUnits := ""
	if l.StripeRead {
		stripeUnits = l.Stripe.String()
	}
	return []string{l.CustomerID, l.StripeCustomerID, l.Mode, l.Rollup.String(), l.Reported.String(),
		l.Acknowledged.String(), l.Unbillable.String(), l.Difference.String(), l.Unexplained.String(),
		strings.Join(l.Reasons, "; "), strings.Join(l.Invoices, " "), stripeUnits}
}

// WriteTable prints the reconciliation for people.
func (r *Reconciliation) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "period %s (UTC), settled up to %s\n", r.Period.Format("2006-01"), r.Settled.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(reconHeader, "\t")))
	for _, l := range r.Lines {
		c := l.cells()
		for i := range c {
			if c[i] == "" {
				c[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(c, "\t"))
	}
	return tw.Flush()
}

// WriteCSV writes the reconciliation as CSV with a header row, for finance.
// Cells starting with =, +, - or @ that are not numbers are prefixed with
// a quote so spreadsheets do not run them as formulas.
func (r *Reconciliation) WriteCSV(w io.Writer) error {
	rows := make([][]string, 0, len(r.Lines))
	for _, l := range r.Lines {
		rows = append(rows, append([]string{r.Period.Format("2006-01")}, l.cells()...))
	}
	return writeSafeCSV(w, append([]string{"period"}, reconHeader...), rows)
}
