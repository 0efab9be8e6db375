package billing

import (
	"bytes"
	"encoding/csv"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
	"github.com/meterline/meterline/internal/testenv"
)

// TestFinanceLedgerAndStatus: after the worker reported a meter events
// customer and a usage records customer, Ledger lists their reports as
// acknowledged, their quantities add up to what Reconcile says was
// acknowledged, and each line's status is what finance reads: matched
// (meter events) and explained (usage records: a fraction of a unit).
func TestFinanceLedgerAndStatus(t *testing.T) {
	f := newFixture(t, ModeMeterEvents, ModeUsageRecords)
	meter, usage := f.customers[0], f.customers[1]
	s := billingtest.New()
	defer s.Close()
	s.AddMeter(testEventName)
	cfg := f.config(s.URL)
	at := hoursAgo(4)
	f.addUsage(meter, at, "2", "1.5")
	f.addUsage(meter, at.Add(time.Hour), "1")
	f.addUsage(usage, at, "2", "1.5")
	f.runUntilClean(f.worker(cfg), 3)

	entries, err := Ledger(testCtx(t), f.db, at)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]decimal.Decimal{}
	n := map[string]int{}
	for _, e := range entries {
		if e.CustomerID != meter.id && e.CustomerID != usage.id {
			continue
		}
		n[e.CustomerID]++
		if e.State != resultAcknowledged || e.Uncertain || e.Attempts < 1 || e.Identifier == "" || e.FirstAt.IsZero() {
			t.Errorf("entry %+v: want acknowledged, attempted, identified", e)
		}
		if e.CustomerID == meter.id {
			if e.Mode != ModeMeterEvents || e.Target != testEventName || e.StripeCustomerID != meter.stripe || !e.WindowEnd.After(e.WindowStart) {
				t.Errorf("meter entry %+v", e)
			}
			acked[e.CustomerID] = acked[e.CustomerID].Add(e.Quantity)
		} else {
			if e.Mode != ModeUsageRecords || e.Target != usage.item {
				t.Errorf("usage records entry %+v", e)
			}
			acked[e.CustomerID] = e.Quantity // the last total set, in whole units
		}
	}
	if n[meter.id] != 2 || n[usage.id] < 1 {
		t.Fatalf("ledger entries per customer %v, want 2 meter events and a usage record: %+v", n, entries)
	}
	rec, err := Reconcile(testCtx(t), f.db, cfg, f.mapping, limits.NewRegistry(f.cat), at, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, l := range rec.Lines {
		if got, ok := acked[l.CustomerID]; ok {
			status[l.CustomerID] = l.Status()
			if !got.Equal(l.Acknowledged) {
				t.Errorf("%s: ledger entries acknowledge %s, reconciliation %s", l.CustomerID, got, l.Acknowledged)
			}
		}
	}
	if status[meter.id] != StatusMatched || status[usage.id] != StatusExplained {
		t.Fatalf("statuses %v, want %s matched and %s explained", status, meter.id, usage.id)
	}
	if (ReconLine{Difference: decimal.NewFromInt(3), Unexplained: decimal.NewFromInt(1)}).Status() != StatusUnexplained {
		t.Fatal("a line with unexplained units is not unexplained")
	}

	var buf bytes.Buffer
	if err := WriteLedgerCSV(&buf, at, entries); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(entries)+1 || rows[0][0] != "period" || rows[1][0] != at.Format("2006-01") {
		t.Fatalf("ledger CSV: %v", rows)
	}
}

// TestFinanceInvoices: the invoices of a period are listed once each with
// their latest state; an invoice of another period is not; cells that a
// spreadsheet would run as formulas are quoted in the CSV.
func TestFinanceInvoices(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	h := NewWebhookHandler(testWebhookSecret, f.db, f.mapping, nil, nil)
	inv := testenv.Unique("in_fin")
	for _, typ := range []string{"invoice.created", "invoice.finalized"} {
		body := invoiceEvent("evt_"+inv+typ, typ, inv, c.stripe)
		r := httptest.NewRequest(http.MethodPost, "/v1/stripe/webhook", bytes.NewReader(body))
		r.Header.Set("Stripe-Signature", signed(body, testWebhookSecret, time.Now()))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("%s: %d %s", typ, w.Code, w.Body)
		}
	}
	// invoiceEvent's period is November 2025.
	nov := time.Date(2025, 11, 1, 0, 0, 0, 0, time.UTC)
	list, err := Invoices(testCtx(t), f.db, nov.Add(10*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var got []Invoice
	for _, in := range list {
		if in.InvoiceID == inv {
			got = append(got, in)
		}
	}
	if len(got) != 1 || got[0].CustomerID != c.id || got[0].StripeCustomerID != c.stripe || got[0].Events != 2 ||
		got[0].AmountDue != 1234 || got[0].Currency != "usd" || !got[0].PeriodStart.Equal(nov) || got[0].Status != "open" {
		t.Fatalf("invoice %s: %+v", inv, got)
	}
	other, err := Invoices(testCtx(t), f.db, time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range other {
		if in.InvoiceID == inv {
			t.Fatalf("November's invoice listed in March 2024: %+v", in)
		}
	}

	var buf bytes.Buffer
	hostile := Invoice{CustomerID: "=HYPERLINK(\"http://x\")", InvoiceID: "+in_1", Status: "@open", Currency: "-usd", AmountDue: -5}
	if err := WriteInvoicesCSV(&buf, nov, []Invoice{hostile}); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	r := rows[1]
	if r[1] != `'=HYPERLINK("http://x")` || r[3] != "'+in_1" || r[4] != "'@open" || r[8] != "'-usd" || r[7] != "-5" {
		t.Fatalf("formula cells not quoted (or a number quoted): %q", r)
	}
	if !strings.HasPrefix(rows[0][0], "period") {
		t.Fatalf("header %v", rows[0])
	}
}
