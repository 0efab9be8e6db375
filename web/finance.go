package web

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/billing"
	"github.com/meterline/meterline/internal/httpx"
)

// Finance is what the finance pages read: the billing package's
// reconciliation, ledger and invoices, read as `meterline billing
// reconcile` reads them.
type Finance interface {
	// Reconcile reconciles the period at now; withStripe also reads what
	// Stripe holds (as the command without --ledger-only).
	Reconcile(ctx context.Context, period, now time.Time, withStripe bool) (*billing.Reconciliation, error)
	Ledger(ctx context.Context, period time.Time) ([]billing.LedgerEntry, error)
	Invoices(ctx context.Context, period time.Time) ([]billing.Invoice, error)
	// Configured reports whether a billing mapping is configured: without
	// one nothing is reported to Stripe and Stripe cannot be read.
	Configured() bool
}

// financeParams are the query parameters of the finance page and CSVs.
var financeParams = []string{"period", "stripe"}

// maxLedgerRows bounds the ledger rows the page shows; the CSV has all.
const maxLedgerRows = 500

// financeView is the finance page's state, read from the URL.
type financeView struct {
	Period     time.Time
	PeriodName string // YYYY-MM
	Stripe     bool
	Query      string
}

func (s *Server) readFinanceView(q url.Values) (financeView, error) {
	if err := httpx.CheckParams(q, financeParams); err != nil {
		return financeView{}, err
	}
	v := financeView{}
	now := s.d.Now().UTC()
	v.Period = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	if p := q.Get("period"); p != "" {
		t, err := billing.ParsePeriod(p)
		if err != nil {
			return v, fmt.Errorf(`"period": %s`, cut(err.Error()))
		}
		v.Period = t
	}
	switch q.Get("stripe") {
	case "", "0":
	case "1":
		v.Stripe = true
	default:
		return v, fmt.Errorf(`"stripe": %q is not 1 (read what Stripe holds) or 0`, cut(q.Get("stripe")))
	}
	v.PeriodName = v.Period.Format("2006-01")
	out := url.Values{"period": {v.PeriodName}}
	if v.Stripe {
		out.Set("stripe", "1")
	}
	v.Query = out.Encode()
	return v, nil
}

// finance checks that the session may see the finance pages (admin or
// finance: anyone else gets "not found") and reads the view.
func (s *Server) finance(w http.ResponseWriter, r *http.Request) (session, financeView, *http.Request, func(), bool) {
	ss, ok := s.signedIn(w, r)
	if !ok {
		return ss, financeView{}, nil, nil, false
	}
	if !ss.principal.HasAny(auth.ScopeAdmin, auth.ScopeFinance) || s.d.Finance == nil {
		s.fail(w, r, http.StatusNotFound, "No such page.")
		return ss, financeView{}, nil, nil, false
	}
	v, err := s.readFinanceView(r.URL.Query())
	if err == nil && v.Stripe && !s.d.Finance.Configured() {
		err = fmt.Errorf(`"stripe": billing is not configured (billing.mapping_file), so there is no Stripe account to read`)
	}
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return ss, v, nil, nil, false
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return ss, v, nil, nil, false
	}
	return ss, v, r, release, true
}

// financeLine is one line of the reconciliation table.
type financeLine struct {
	billing.ReconLine
	Plan string
}

// financePage serves /ui/finance: the period's reconciliation per
// customer, the ledger's reports and the invoices received.
func (s *Server) financePage(w http.ResponseWriter, r *http.Request) {
	ss, v, r, release, ok := s.finance(w, r)
	if !ok {
		return
	}
	defer release()
	data := map[string]any{"Session": ss, "Title": "Finance", "View": v, "Configured": s.d.Finance.Configured(),
		"Periods": recentPeriods(s.d.Now(), 13), "CSV": map[string]template.URL{}}
	for _, which := range []string{"reconciliation", "ledger", "invoices"} {
		// v.Query is re-encoded from checked values.
		data["CSV"].(map[string]template.URL)[which] = template.URL("/ui/finance/" + which + ".csv?" + v.Query)
	}
	ctx := r.Context()
	rec, err := s.d.Finance.Reconcile(ctx, v.Period, s.d.Now(), v.Stripe)
	if err != nil {
		data["Error"] = "The reconciliation could not be read: " + err.Error()
		s.render(w, queryStatus(err), "finance.html", data)
		return
	}
	var lines []financeLine
	var rollup, acked decimal.Decimal
	counts := map[string]int{}
	for _, l := range rec.Lines {
		fl := financeLine{ReconLine: l}
		if c, ok := s.d.Registry.Customer(l.CustomerID); ok {
			fl.Plan = c.Plan
		}
		lines = append(lines, fl)
		rollup, acked = rollup.Add(l.Rollup), acked.Add(l.Acknowledged)
		counts[l.Status()]++
	}
	data["Rec"], data["Lines"], data["Rollup"], data["Acknowledged"], data["Counts"] = rec, lines, rollup.String(), acked.String(), counts
	if entries, err := s.d.Finance.Ledger(ctx, v.Period); err != nil {
		data["LedgerError"] = err.Error()
	} else {
		data["LedgerTotal"] = len(entries)
		if len(entries) > maxLedgerRows {
			entries = entries[:maxLedgerRows]
			data["LedgerCut"] = maxLedgerRows
		}
		data["Ledger"] = entries
	}
	if inv, err := s.d.Finance.Invoices(ctx, v.Period); err != nil {
		data["InvoicesError"] = err.Error()
	} else {
		data["Invoices"] = inv
	}
	s.render(w, http.StatusOK, "finance.html", data)
}

// recentPeriods are the last n billing periods up to now's, newest first
// (12 months of data are kept, so 13 periods cover them).
func recentPeriods(now time.Time, n int) []string {
	now = now.UTC()
	p := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, p.AddDate(0, -i, 0).Format("2006-01"))
	}
	return out
}

// financeCSV serves the finance tables as CSV downloads: the
// reconciliation's is what `meterline billing reconcile --period P --csv`
// writes (with --ledger-only unless stripe=1).
func (s *Server) financeCSV(which string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, v, r, release, ok := s.finance(w, r)
		if !ok {
			return
		}
		defer release()
		ctx := r.Context()
		var buf bytes.Buffer
		var err error
		switch which {
		case "reconciliation":
			var rec *billing.Reconciliation
			if rec, err = s.d.Finance.Reconcile(ctx, v.Period, s.d.Now(), v.Stripe); err == nil {
				err = rec.WriteCSV(&buf)
			}
		case "ledger":
			var e []billing.LedgerEntry
			if e, err = s.d.Finance.Ledger(ctx, v.Period); err == nil {
				err = billing.WriteLedgerCSV(&buf, v.Period, e)
			}
		default:
			var in []billing.Invoice
			if in, err = s.d.Finance.Invoices(ctx, v.Period); err == nil {
				err = billing.WriteInvoicesCSV(&buf, v.Period, in)
			}
		}
		if err != nil {
			s.fail(w, r, queryStatus(err), "The "+which+" could not be read: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="meterline-%s-%s.csv"`, which, v.PeriodName))
		_, _ = w.Write(buf.Bytes())
	}
}
