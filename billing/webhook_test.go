package billing

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/meterline/meterline/internal/testenv"
	"github.com/meterline/meterline/privacy"
	"github.com/meterline/meterline/store"
)

const testWebhookSecret = "whsec_test_meterline"

func invoiceEvent(eventID, typ, invoiceID, customer string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"event","api_version":"2023-10-16","created":1763900000,"type":%q,
"data":{"object":{"id":%q,"object":"invoice","customer":%q,"status":"open","period_start":1761955200,"period_end":1764547200,"amount_due":1234,"currency":"usd"}}}`,
		eventID, typ, invoiceID, customer)
}

func signed(payload []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
}

func countInvoices(t *testing.T, db store.Conn, invoiceID string) int64 {
	t.Helper()
	rows, err := db.Query(testCtx(t), "SELECT count() FROM billing_invoices WHERE invoice_id = {id:String}", store.P("id", invoiceID))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var n int64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestBillingWebhookRecordsSignedInvoiceEventsOnly: a correctly signed
// invoice event is recorded (and maps back to the customer); unsigned,
// badly signed, stale, oversized, non-POST and malformed requests get a
// clear 4xx and record nothing.
func TestBillingWebhookRecordsSignedInvoiceEventsOnly(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	h := NewWebhookHandler(testWebhookSecret, f.db, f.mapping, nil, nil)
	post := func(body []byte, sig string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/v1/stripe/webhook", strings.NewReader(string(body)))
		if sig != "" {
			r.Header.Set("Stripe-Signature", sig)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	bad := testenv.Unique("in_bad")
	badBody := invoiceEvent("evt_bad", "invoice.created", bad, c.stripe)
	big := append(invoiceEvent("evt_big", "invoice.created", bad, c.stripe), make([]byte, MaxWebhookBytes)...)
	cases := []struct {
		name   string
		body   []byte
		sig    string
		code   int
		inBody string
	}{
		{"unsigned", badBody, "", 400, "missing Stripe-Signature"},
		{"wrong secret", badBody, signed(badBody, "whsec_other", time.Now()), 400, "no valid signature"},
		{"tampered", append([]byte(nil), badBody...), signed(invoiceEvent("evt_bad", "invoice.created", bad, "cus_other"), testWebhookSecret, time.Now()), 400, "no valid signature"},
		{"stale", badBody, signed(badBody, testWebhookSecret, time.Now().Add(-10*time.Minute)), 400, "old"},
		{"malformed header", badBody, "t=abc,v1=zz", 400, "Stripe-Signature"},
		{"oversized", big, signed(big, testWebhookSecret, time.Now()), 413, "larger than"},
		{"not an event", []byte("not json"), signed([]byte("not json"), testWebhookSecret, time.Now()), 400, "not a Stripe event"},
	}
	for _, tc := range cases {
		w := post(tc.body, tc.sig)
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.inBody) {
			t.Errorf("%s: got %d %s, want %d containing %q", tc.name, w.Code, w.Body, tc.code, tc.inBody)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/v1/stripe/webhook", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 405 {
		t.Errorf("GET: %d", w.Code)
	}
	if n := countInvoices(t, f.db, bad); n != 0 {
		t.Fatalf("rejected requests recorded %d rows", n)
	}

	good := testenv.Unique("in_good")
	for _, typ := range []string{"invoice.created", "invoice.finalized"} {
		body := invoiceEvent("evt_"+typ, typ, good, c.stripe)
		if w := post(body, signed(body, testWebhookSecret, time.Now())); w.Code != 200 || !strings.Contains(w.Body.String(), `"recorded":true`) {
			t.Fatalf("%s: %d %s", typ, w.Code, w.Body)
		}
	}
	other := []byte(`{"id":"evt_x","object":"event","api_version":"2023-10-16","type":"customer.created","data":{"object":{"id":"cus_x","object":"customer"}}}`)
	if w := post(other, signed(other, testWebhookSecret, time.Now())); w.Code != 200 || !strings.Contains(w.Body.String(), `"recorded":false`) {
		t.Fatalf("other event: %d %s", w.Code, w.Body)
	}
	if n := countInvoices(t, f.db, good); n != 2 {
		t.Fatalf("want 2 invoice rows, got %d", n)
	}
	rows, err := f.db.Query(testCtx(t), "SELECT DISTINCT customer_id, amount_due FROM billing_invoices WHERE invoice_id = {id:String}", store.P("id", good))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var cust string
		var amount int64
		if err := rows.Scan(&cust, &amount); err != nil {
			t.Fatal(err)
		}
		if cust != c.id || amount != 1234 {
			t.Errorf("recorded customer %q amount %d", cust, amount)
		}
	}
}

// TestBillingWebhookStoresTheErasedCustomersPseudonym: an invoice event
// for the Stripe customer of an erased customer (still in the mapping)
// is recorded under the erasure's pseudonym, never the customer's id.
func TestBillingWebhookStoresTheErasedCustomersPseudonym(t *testing.T) {
	f := newFixture(t, ModeMeterEvents)
	c := f.customers[0]
	svc := privacy.NewService(privacy.Config{ErasedRefresh: 10 * time.Millisecond}, f.db, nil, nil)
	req, err := svc.Request(testCtx(t), privacy.Request{CustomerID: c.id, RequestedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.Execute(testCtx(t), req.ID)
	if err != nil || e.Pseudonym == "" {
		t.Fatalf("erasure: %+v %v", e, err)
	}
	h := NewWebhookHandler(testWebhookSecret, f.db, f.mapping, nil, nil)
	inv := testenv.Unique("in_erased")
	body := invoiceEvent(testenv.Unique("evt"), "invoice.paid", inv, c.stripe)
	r := httptest.NewRequest(http.MethodPost, "/v1/stripe/webhook", strings.NewReader(string(body)))
	r.Header.Set("Stripe-Signature", signed(body, testWebhookSecret, time.Now()))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"recorded":true`) {
		t.Fatalf("webhook: %d %s", w.Code, w.Body)
	}
	rows, err := f.db.Query(testCtx(t), "SELECT customer_id FROM billing_invoices WHERE invoice_id = {id:String}", store.P("id", inv))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var cust string
		if err := rows.Scan(&cust); err != nil {
			t.Fatal(err)
		}
		n++
		if cust != e.Pseudonym {
			t.Errorf("invoice of an erased customer recorded under %q, want the pseudonym %q", cust, e.Pseudonym)
		}
	}
	if n != 1 {
		t.Fatalf("want 1 invoice row, got %d", n)
	}
}
