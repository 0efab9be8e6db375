package billing

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/store"
)

// Reconciliation status of a line, as finance reads it.
const (
	StatusMatched     = "matched"     // the rollups and what Stripe holds (or acknowledged) agree
	StatusExplained   = "explained"   // they differ, and every unit of the difference has a reason
	StatusUnexplained = "unexplained" // some of the difference has no known reason: drift
)

// Status is the line's reconciliation status: StatusMatched,
// StatusExplained or StatusUnexplained.
func (l ReconLine) Status() string {
	switch {
	case !l.Unexplained.IsZero():
		return StatusUnexplained
	case l.Difference.IsZero():
		return StatusMatched
	}
	return StatusExplained
}

// Reader reads what finance reviews of a billing period: the
// reconciliation, the ledger and the invoices. The web interface's finance
// pages and `meterline billing reconcile` read through it.
type Reader struct {
	DB     store.Conn
	Config Config
	// Load returns the mapping and the plans in force; nil: billing is not
	// configured (nothing is reported, Stripe is not read).
	Load func() (*Mapping, Plans, error)
}

// Configured reports whether a mapping is configured.
func (r *Reader) Configured() bool { return r.Load != nil }

// Reconcile reconciles the period at now; withStripe also reads what
// Stripe holds (ReconcileWithStripe), when configured.
func (r *Reader) Reconcile(ctx context.Context, period, now time.Time, withStripe bool) (*Reconciliation, error) {
	var mapping *Mapping
	var plans Plans
	var api StripeAPI
	if r.Load != nil {
		var err error
		if mapping, plans, err = r.Load(); err != nil {
			return nil, err
		}
		if withStripe {
			api = NewStripeAPI(r.Config)
		}
	}
	return ReconcileWithStripe(ctx, r.DB, r.Config, mapping, plans, api, period, now)
}

// Ledger is Ledger of the reader's store.
func (r *Reader) Ledger(ctx context.Context, period time.Time) ([]LedgerEntry, error) {
	return Ledger(ctx, r.DB, period)
}

// Invoices is Invoices of the reader's store.
func (r *Reader) Invoices(ctx context.Context, period time.Time) ([]Invoice, error) {
	return Invoices(ctx, r.DB, period)
}

// LedgerEntry is one report to Stripe as the ledger summarises its rows:
// a meter event for one window, or a usage record setting the period's
// total.
type LedgerEntry struct {
	CustomerID       string
	StripeCustomerID string
	Mode             string
	// Target is the meter's event name or the subscription item.
	Target      string
	WindowStart time.Time
	WindowEnd   time.Time
	// Quantity is what the report sends: the window's correction (meter
	// events) or the period-to-date total in whole units (usage records);
	// Cumulative is the window's or the period's total in the rollups it
	// was computed from.
	Quantity   decimal.Decimal
	Cumulative decimal.Decimal
	// State is acknowledged, open (sent or about to be, no final answer;
	// Uncertain when an answer left the outcome unknown), failed,
	// abandoned or unbillable.
	State     string
	Uncertain bool
	Attempts  int
	// LastStatus is the HTTP status of the last answer (0: none).
	LastStatus int
	LastError  string
	FirstAt    time.Time
	// RequestID is Stripe's Request-Id of the acknowledgement.
	RequestID  string
	Identifier string
}

// Ledger returns the reports of the billing period (a calendar month,
// UTC), per customer and oldest window first: what reconciliation reads,
// one line per report.
func Ledger(ctx context.Context, db store.Conn, period time.Time) ([]LedgerEntry, error) {
	period = periodStart(period)
	customers, err := ledgerCustomersOf(ctx, db, period)
	if err != nil {
		return nil, err
	}
	reports, err := readReports(ctx, db, customers, period, period.AddDate(0, 1, 0))
	if err != nil {
		return nil, err
	}
	var out []LedgerEntry
	for _, c := range customers {
		for _, r := range reports[c] {
			out = append(out, LedgerEntry{
				CustomerID: r.customerID, StripeCustomerID: r.stripeCustomerID, Mode: r.mode, Target: r.target,
				WindowStart: r.windowStart.UTC(), WindowEnd: r.windowEnd.UTC(), Quantity: r.quantity, Cumulative: r.cumulative,
				State: r.state(), Uncertain: r.uncertain && !r.acked, Attempts: r.attempts, LastStatus: r.lastStatus,
				LastError: r.lastError, FirstAt: r.firstAt.UTC(), RequestID: r.requestID, Identifier: r.identifier,
			})
		}
	}
	return out, nil
}

// Invoice is a Stripe invoice as the webhook last reported it.
type Invoice struct {
	// CustomerID is the Meterline customer mapped to StripeCustomerID when
	// the event arrived ("" if none was).
	CustomerID       string
	StripeCustomerID string
	InvoiceID        string
	Status           string
	PeriodStart      time.Time
	PeriodEnd        time.Time
	// AmountDue is in the currency's smallest unit (cents).
	AmountDue  int64
	Currency   string
	ReceivedAt time.Time
	// Events is how many webhook events of the invoice were received.
	Events uint64
}

const invoicesSQL = `SELECT argMax(customer_id, received_at), stripe_customer_id, invoice_id, argMax(status, received_at),
    argMax(period_start, received_at), argMax(period_end, received_at), argMax(amount_due, received_at),
    argMax(currency, received_at), max(received_at), count()
FROM billing_invoices
WHERE period_start < {to:DateTime('UTC')} AND period_end > {from:DateTime('UTC')}
GROUP BY stripe_customer_id, invoice_id
ORDER BY stripe_customer_id, invoice_id`

// Invoices returns the invoices received by the webhook whose period
// overlaps the billing period, each with its latest state.
func Invoices(ctx context.Context, db store.Conn, period time.Time) ([]Invoice, error) {
	period = periodStart(period)
	rows, err := db.Query(ctx, invoicesSQL, store.P("from", period), store.P("to", period.AddDate(0, 1, 0)))
	if err != nil {
		return nil, fmt.Errorf("billing: read invoices: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []Invoice
	for rows.Next() {
		var in Invoice
		if err := rows.Scan(&in.CustomerID, &in.StripeCustomerID, &in.InvoiceID, &in.Status, &in.PeriodStart, &in.PeriodEnd,
			&in.AmountDue, &in.Currency, &in.ReceivedAt, &in.Events); err != nil {
			return nil, fmt.Errorf("billing: read invoices: %w", err)
		}
		in.PeriodStart, in.PeriodEnd, in.ReceivedAt = in.PeriodStart.UTC(), in.PeriodEnd.UTC(), in.ReceivedAt.UTC()
		out = append(out, in)
	}
	return out, rows.Err()
}

var ledgerHeader = []string{"period", "customer_id", "stripe_customer_id", "mode", "target", "window_start", "window_end",
	"quantity", "cumulative", "state", "uncertain", "attempts", "last_http_status", "last_error", "first_attempt_at",
	"stripe_request_id", "identifier"}

// WriteLedgerCSV writes the period's ledger entries as CSV with a header
// row, protected against formula injection as WriteCSV is.
func WriteLedgerCSV(w io.Writer, period time.Time, entries []LedgerEntry) error {
	p := periodStart(period).Format("2006-01")
	rows := make([][]string, 0, len(entries))
	for _, e := range entries {
		rows = append(rows, []string{p, e.CustomerID, e.StripeCustomerID, e.Mode, e.Target, e.WindowStart.Format(time.RFC3339),
			e.WindowEnd.Format(time.RFC3339), e.Quantity.String(), e.Cumulative.String(), e.State, strconv.FormatBool(e.Uncertain),
			strconv.Itoa(e.Attempts), strconv.Itoa(e.LastStatus), e.LastError, e.FirstAt.Format(time.RFC3339Nano), e.RequestID, e.Identifier})
	}
	return writeSafeCSV(w, ledgerHeader, rows)
}

var invoicesHeader = []string{"period", "customer_id", "stripe_customer_id", "invoice_id", "status", "period_start", "period_end",
	"amount_due", "currency", "received_at", "events"}

// WriteInvoicesCSV writes the invoices as CSV with a header row, protected
// against formula injection as WriteCSV is.
func WriteInvoicesCSV(w io.Writer, period time.Time, invoices []Invoice) error {
	p := periodStart(period).Format("2006-01")
	rows := make([][]string, 0, len(invoices))
	for _, in := range invoices {
		rows = append(rows, []string{p, in.CustomerID, in.StripeCustomerID, in.InvoiceID, in.Status, in.PeriodStart.Format(time.RFC3339),
			in.PeriodEnd.Format(time.RFC3339), strconv.FormatInt(in.AmountDue, 10), in.Currency, in.ReceivedAt.Format(time.RFC3339Nano),
			strconv.FormatUint(in.Events, 10)})
	}
	return writeSafeCSV(w, invoicesHeader, rows)
}

// writeSafeCSV writes a header and rows; cells starting with =, +, - or @
// that are not numbers are prefixed with a quote so spreadsheets do not
// run them as formulas.
func writeSafeCSV(w io.Writer, header []string, rows [][]string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(header); err != nil {
		return err
	}
	for _, r := range rows {
		if err := cw.Write(safeCells(r)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func safeCells(c []string) []string {
	c = slices.Clone(c)
	for i := range c {
		if _, err := decimal.NewFromString(c[i]); err != nil && c[i] != "" && strings.ContainsRune("=+-@", rune(c[i][0])) {
			c[i] = "'" + c[i]
		}
	}
	return c
}
