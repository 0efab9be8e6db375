package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/store"
)

// InvoicesTable holds the invoice events received by webhook (migration 0004).
const InvoicesTable = "billing_invoices"

// MaxWebhookBytes caps a webhook body; Stripe's events are far smaller.
const MaxWebhookBytes = 1 << 20

// WebhookTolerance is how old a signed webhook may be (Stripe's default):
// older ones are refused as possible replays.
const WebhookTolerance = 5 * time.Minute

// recordedInvoiceEvents are the event types stored in billing_invoices.
var recordedInvoiceEvents = map[stripe.EventType]bool{
	"invoice.created":   true,
	"invoice.finalized": true,
	"invoice.paid":      true,
	"invoice.voided":    true,
}

var invoiceColumns = []string{"customer_id", "stripe_customer_id", "invoice_id", "event_id", "event_type",
	"status", "period_start", "period_end", "amount_due", "currency", "received_at"}

// WebhookHandler serves POST /v1/stripe/webhook: it verifies Stripe's
// signature (Stripe-Signature, the endpoint's signing secret, at most
// WebhookTolerance old) and records invoice events. Unsigned, badly
// signed, stale, oversized or malformed requests get a 4xx and change
// nothing; a failure to record answers 500 so that Stripe retries.
type WebhookHandler struct {
	secret   string
	db       store.Conn
	mapping  atomic.Pointer[Mapping]
	log      *slog.Logger
	received *prometheus.CounterVec
	now      func() time.Time
}

// NewWebhookHandler returns the handler. mapping (may be nil) maps Stripe
// customers back to Meterline customers. prom may be nil.
func NewWebhookHandler(secret string, db store.Conn, mapping *Mapping, prom prometheus.Registerer, log *slog.Logger) *WebhookHandler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &WebhookHandler{secret: secret, db: db, log: log, now: time.Now,
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterline_billing_webhooks_total",
			Help: "Stripe webhook requests by outcome (recorded, ignored, rejected, error)."}, []string{"outcome"})}
	h.mapping.Store(mapping)
	// Every outcome starts at zero, so dashboards show the series before the first webhook.
	for _, o := range []string{"recorded", "ignored", "rejected", "error"} {
		h.received.WithLabelValues(o)
	}
	if prom != nil {
		_ = prom.Register(h.received)
	}
	return h
}

// SetMapping replaces the mapping (a reloaded billing.mapping_file).
func (h *WebhookHandler) SetMapping(m *Mapping) { h.mapping.Store(m) }

func (h *WebhookHandler) reject(w http.ResponseWriter, code int, msg string) {
	h.received.WithLabelValues("rejected").Inc()
	h.log.Warn("stripe webhook rejected", "status", code, "err", msg)
	httpx.WriteError(w, code, msg)
}

// ServeHTTP implements http.Handler.
func (h *WebhookHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		h.received.WithLabelValues("rejected").Inc()
		h.log.Warn("stripe webhook rejected", "status", http.StatusMethodNotAllowed, "err", "use POST")
		httpx.MethodNotAllowed(w, http.MethodPost)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.reject(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", MaxWebhookBytes))
			return
		}
		h.reject(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	sig := r.Header.Get("Stripe-Signature")
	if sig == "" {
		h.reject(w, http.StatusBadRequest, "missing Stripe-Signature header")
		return
	}
	ev, err := webhook.ConstructEventWithOptions(body, sig, h.secret, webhook.ConstructEventOptions{
		Tolerance: WebhookTolerance,
		// The event's shape is read field by field below; an endpoint on
		// a newer API version still carries these invoice fields.
		IgnoreAPIVersionMismatch: true,
	})
	if err != nil {
		msg := "signature verification failed"
		switch {
		case errors.Is(err, webhook.ErrTooOld):
			msg = fmt.Sprintf("signature timestamp is more than %s old (or in the future)", WebhookTolerance)
		case errors.Is(err, webhook.ErrNoValidSignature):
			msg = "no valid signature for this endpoint's secret"
		case errors.Is(err, webhook.ErrInvalidHeader), errors.Is(err, webhook.ErrNotSigned):
			msg = "malformed Stripe-Signature header"
		case strings.Contains(err.Error(), "parse webhook body"):
			msg = "the body is not a Stripe event"
		}
		h.reject(w, http.StatusBadRequest, msg)
		return
	}
	if !recordedInvoiceEvents[ev.Type] {
		h.received.WithLabelValues("ignored").Inc()
		httpx.WriteJSON(w, map[string]any{"received": true, "recorded": false})
		return
	}
	if ev.Data == nil || len(ev.Data.Raw) == 0 {
		h.reject(w, http.StatusBadRequest, "event has no data object")
		return
	}
	var inv stripe.Invoice
	if err := json.Unmarshal(ev.Data.Raw, &inv); err != nil || inv.ID == "" || inv.Customer == nil || inv.Customer.ID == "" {
		h.reject(w, http.StatusBadRequest, "event data is not an invoice with an id and a customer")
		return
	}
	customer := ""
	if m := h.mapping.Load(); m != nil {
		customer, _ = m.CustomerOfStripe(inv.Customer.ID)
	}
	if customer != "" {
		// An erased customer's billing records carry its pseudonym: an
		// invoice event arriving after the erasure must not bring the
		// customer's id back.
		pseudonym, err := erasedPseudonym(r.Context(), h.db, customer)
		if err != nil {
			h.received.WithLabelValues("error").Inc()
			h.log.Error("checking a Stripe invoice event's customer against erasures failed; Stripe will retry", "event_id", ev.ID, "err", err)
			httpx.WriteError(w, http.StatusInternalServerError, "could not record the event; retry")
			return
		}
		if pseudonym != "" {
			customer = pseudonym
		}
	}
	row := []any{customer, inv.Customer.ID, inv.ID, ev.ID, string(ev.Type), string(inv.Status),
		time.Unix(inv.PeriodStart, 0).UTC(), time.Unix(inv.PeriodEnd, 0).UTC(), inv.AmountDue, string(inv.Currency), h.now().UTC()}
	if err := h.db.Insert(r.Context(), InvoicesTable, invoiceColumns, [][]any{row}, store.InsertOptions{DedupToken: ev.ID}); err != nil {
		h.received.WithLabelValues("error").Inc()
		h.log.Error("recording a Stripe invoice event failed; Stripe will retry", "event_id", ev.ID, "invoice_id", inv.ID, "err", err)
		httpx.WriteError(w, http.StatusInternalServerError, "could not record the event; retry")
		return
	}
	h.received.WithLabelValues("recorded").Inc()
	h.log.Info("stripe invoice event recorded", "event_id", ev.ID, "type", ev.Type, "invoice_id", inv.ID,
		"stripe_customer_id", inv.Customer.ID, "customer_id", customer, "status", inv.Status)
	httpx.WriteJSON(w, map[string]any{"received": true, "recorded": true})
}

// erasedPseudonymSQL finds the pseudonym of a customer whose erasure is
// running, done or failed (the customers the sink drops, privacy package).
const erasedPseudonymSQL = `SELECT argMax(pseudonym, requested_at) FROM privacy_erasures FINAL
WHERE customer_id = {customer:String} AND status IN ('running', 'done', 'failed') AND pseudonym != ''`

// erasedPseudonym returns the customer's erasure pseudonym, or "" when the
// customer was not erased.
func erasedPseudonym(ctx context.Context, db store.Conn, customer string) (string, error) {
	rows, err := db.Query(ctx, erasedPseudonymSQL, store.P("customer", customer))
	if err != nil {
		return "", fmt.Errorf("billing: read erasures: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var p string
	for rows.Next() {
		if err := rows.Scan(&p); err != nil {
			return "", fmt.Errorf("billing: read erasures: %w", err)
		}
	}
	return p, rows.Err()
}
