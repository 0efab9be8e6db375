package billing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/meterline/meterline/internal/retry"
)

// maxErrorBytes keeps recorded error texts short.
const maxErrorBytes = 512

// answer is Stripe's answer to one request.
type answer struct {
	status      int    // HTTP status; 0 when no answer arrived
	requestID   string // Request-Id header
	objectID    string // id of the created object, when Stripe returns one
	errText     string // empty on success
	shouldRetry string // Stripe-Should-Retry header: "true", "false" or ""
	retryAfter  time.Duration
	// duplicate: Stripe refused a meter event because it already holds an
	// event with its identifier, which proves the report applied.
	duplicate bool
}

// outcome classifies an answer: acknowledged (2xx: applied, or the stored
// result of an earlier identical request; or a meter event refused as a
// duplicate of an identifier Stripe holds, which an earlier attempt
// applied), failed (refused with a 4xx that is not 409 or 429: not
// applied, retrying the same request cannot help), or retrying (no answer, 409, 429 or 5xx: unknown or transient).
// Stripe-Should-Retry: true makes any error retrying; false makes a 4xx
// failed (a 5xx stays retrying: it may have been applied, so the report
// stays open, but this run stops retrying it).
func (a answer) outcome() string {
	switch {
	case a.duplicate:
		return resultAcknowledged
	case a.status >= 200 && a.status < 300 && a.errText == "":
		return resultAcknowledged
	case a.shouldRetry == "true":
		return resultRetrying
	case a.status >= 400 && a.status < 500 && a.status != http.StatusConflict && a.status != http.StatusTooManyRequests:
		return resultFailed
	case a.shouldRetry == "false" && a.status >= 400 && a.status < 500:
		return resultFailed
	default:
		return resultRetrying
	}
}

// StripeAPI is the part of Stripe the worker uses; tests may replace it,
// but the real one (NewStripeAPI) pointed at a stand-in server is what the
// tests use.
type StripeAPI interface {
	// MeterEvent creates a Billing Meter event.
	MeterEvent(ctx context.Context, r *report, key string) answer
	// UsageRecord creates a usage record with action=set.
	UsageRecord(ctx context.Context, r *report, key string) answer
	// MeteredItems lists the metered subscription items of a Stripe
	// customer's active subscriptions.
	MeteredItems(ctx context.Context, stripeCustomerID string) ([]SubscriptionItem, error)
	// MeterSummaries returns what Stripe's meter of eventName holds for a
	// customer in [from, to), per hour (Unix seconds of the hour's start).
	MeterSummaries(ctx context.Context, eventName, stripeCustomerID string, from, to time.Time) (map[int64]decimal.Decimal, error)
	// UsageSummaries returns the usage record summaries of a subscription
	// item: one per billing period of its subscription.
	UsageSummaries(ctx context.Context, item string) ([]UsageSummary, error)
}

// UsageSummary is Stripe's usage total of a subscription item over one of
// its subscription's billing periods.
type UsageSummary struct {
	Start, End time.Time
	Total      int64
	Invoice    string
}

// SubscriptionItem is a metered item found by MeteredItems.
type SubscriptionItem struct {
	ID, Price, Subscription, AggregateUsage string
}

// stripeAPI talks to Stripe through stripe-go with its own retries off:
// the worker retries itself, so that every attempt is recorded and
// Retry-After and Stripe-Should-Retry are honoured.
type stripeAPI struct {
	api *client.API

	mu     sync.Mutex
	meters map[string]string // event name -> meter id
}

// NewStripeAPI returns the Stripe client of cfg: cfg.StripeAPIURL (empty
// = Stripe), cfg.StripeAPIKey, and cfg.RequestTimeout per request.
func NewStripeAPI(cfg Config) StripeAPI {
	cfg = cfg.WithDefaults()
	hc := &http.Client{Timeout: cfg.RequestTimeout, Transport: captureTransport{base: http.DefaultTransport}}
	bc := &stripe.BackendConfig{
		HTTPClient:        hc,
		MaxNetworkRetries: stripe.Int64(0),
		EnableTelemetry:   stripe.Bool(false),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	}
	if cfg.StripeAPIURL != "" {
		bc.URL = stripe.String(strings.TrimRight(cfg.StripeAPIURL, "/"))
	}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, bc)
	api := &client.API{}
	api.Init(cfg.StripeAPIKey, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	return &stripeAPI{api: api}
}

func (s *stripeAPI) MeterEvent(ctx context.Context, r *report, key string) answer {
	ctx, cp := withCapture(ctx)
	p := &stripe.BillingMeterEventParams{
		EventName:  stripe.String(r.target),
		Identifier: stripe.String(r.identifier),
		Payload: map[string]string{
			"stripe_customer_id": r.stripeCustomerID,
			"value":              r.quantity.String(),
		},
		Timestamp: stripe.Int64(r.stripeTimestamp.Unix()),
	}
	p.Context = ctx
	p.SetIdempotencyKey(key)
	ev, err := s.api.BillingMeterEvents.New(p)
	a := toAnswer(err, cp)
	if err == nil && ev != nil && ev.LastResponse != nil {
		a.requestID = ev.LastResponse.RequestID
		a.objectID = ev.Identifier
	}
	var se *stripe.Error
	if errors.As(err, &se) && isDuplicateIdentifier(se) {
		a.duplicate, a.objectID = true, r.identifier
	}
	return a
}

// isDuplicateIdentifier tells Stripe's refusal of a meter event whose
// identifier it already holds: 400 invalid_request_error "An event
// already exists with identifier <identifier>." (with Stripe-Should-Retry:
// false). Stripe gives it no error code, so the message is matched.
func isDuplicateIdentifier(se *stripe.Error) bool {
	msg := strings.ToLower(se.Msg)
	return se.HTTPStatusCode == http.StatusBadRequest && strings.Contains(msg, "already exists") && strings.Contains(msg, "identifier")
}

func (s *stripeAPI) UsageRecord(ctx context.Context, r *report, key string) answer {
	ctx, cp := withCapture(ctx)
	p := &stripe.UsageRecordParams{
		SubscriptionItem: stripe.String(r.target),
		Action:           stripe.String(stripe.UsageRecordActionSet),
		Quantity:         stripe.Int64(r.quantity.IntPart()),
		Timestamp:        stripe.Int64(r.stripeTimestamp.Unix()),
	}
	p.Context = ctx
	p.SetIdempotencyKey(key)
	ur, err := s.api.UsageRecords.New(p)
	a := toAnswer(err, cp)
	if err == nil && ur != nil && ur.LastResponse != nil {
		a.requestID = ur.LastResponse.RequestID
		a.objectID = ur.ID
	}
	return a
}

func (s *stripeAPI) MeteredItems(ctx context.Context, stripeCustomerID string) ([]SubscriptionItem, error) {
	p := &stripe.SubscriptionListParams{Customer: stripe.String(stripeCustomerID)}
	p.Context = ctx
	var out []SubscriptionItem
	it := s.api.Subscriptions.List(p)
	for it.Next() {
		sub := it.Subscription()
		if sub.Status == stripe.SubscriptionStatusCanceled || sub.Status == stripe.SubscriptionStatusIncompleteExpired || sub.Items == nil {
			continue
		}
		for _, item := range sub.Items.Data {
			if item.Price == nil || item.Price.Recurring == nil || item.Price.Recurring.UsageType != stripe.PriceRecurringUsageTypeMetered {
				continue
			}
			out = append(out, SubscriptionItem{ID: item.ID, Price: item.Price.ID, Subscription: sub.ID,
				AggregateUsage: string(item.Price.Recurring.AggregateUsage)})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list subscriptions of %s: %s", stripeCustomerID, toAnswer(err, nil).errText)
	}
	return out, nil
}

// meterID finds the active meter of an event name (listed once per client).
func (s *stripeAPI) meterID(ctx context.Context, eventName string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.meters[eventName]; ok {
		return id, nil
	}
	p := &stripe.BillingMeterListParams{Status: stripe.String(string(stripe.BillingMeterStatusActive))}
	p.Context = ctx
	found := map[string]string{}
	it := s.api.BillingMeters.List(p)
	for it.Next() {
		m := it.BillingMeter()
		if m.DefaultAggregation != nil && m.DefaultAggregation.Formula != stripe.BillingMeterDefaultAggregationFormulaSum {
			continue // a count meter does not hold the values Meterline sends
		}
		if _, dup := found[m.EventName]; !dup {
			found[m.EventName] = m.ID
		}
	}
	if err := it.Err(); err != nil {
		return "", fmt.Errorf("list meters: %s", toAnswer(err, nil).errText)
	}
	s.meters = found
	id, ok := found[eventName]
	if !ok {
		return "", fmt.Errorf("Stripe has no active meter with event_name %q that sums values", eventName)
	}
	return id, nil
}

func (s *stripeAPI) MeterSummaries(ctx context.Context, eventName, stripeCustomerID string, from, to time.Time) (map[int64]decimal.Decimal, error) {
	id, err := s.meterID(ctx, eventName)
	if err != nil {
		return nil, err
	}
	p := &stripe.BillingMeterEventSummaryListParams{
		ID:                  stripe.String(id),
		Customer:            stripe.String(stripeCustomerID),
		StartTime:           stripe.Int64(from.Unix()),
		EndTime:             stripe.Int64(to.Unix()),
		ValueGroupingWindow: stripe.String("hour"),
	}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	out := map[int64]decimal.Decimal{}
	it := s.api.BillingMeterEventSummaries.List(p)
	for it.Next() {
		e := it.BillingMeterEventSummary()
		h := time.Unix(e.StartTime, 0).UTC().Truncate(time.Hour).Unix()
		// Stripe sums in floating point; the ledger's values have 6 decimals.
		out[h] = out[h].Add(decimal.NewFromFloat(e.AggregatedValue)).Round(6)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("meter event summaries of %s on meter %s: %s", stripeCustomerID, id, toAnswer(err, nil).errText)
	}
	return out, nil
}

func (s *stripeAPI) UsageSummaries(ctx context.Context, item string) ([]UsageSummary, error) {
	p := &stripe.UsageRecordSummaryListParams{SubscriptionItem: stripe.String(item)}
	p.Context = ctx
	p.Limit = stripe.Int64(100)
	var out []UsageSummary
	it := s.api.UsageRecordSummaries.List(p)
	for it.Next() {
		u := it.UsageRecordSummary()
		us := UsageSummary{Total: u.TotalUsage, Invoice: u.Invoice}
		if u.Period != nil {
			us.Start, us.End = time.Unix(u.Period.Start, 0).UTC(), time.Unix(u.Period.End, 0).UTC()
		}
		out = append(out, us)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("usage record summaries of %s: %s", item, toAnswer(err, nil).errText)
	}
	return out, nil
}

// toAnswer reads what is known of a request's answer from stripe-go's
// error and from the response the transport saw.
func toAnswer(err error, cp *capture) answer {
	var a answer
	if cp != nil {
		cp.mu.Lock()
		a.status = cp.status
		if cp.header != nil {
			a.requestID = cp.header.Get("Request-Id")
			a.shouldRetry = strings.ToLower(strings.TrimSpace(cp.header.Get("Stripe-Should-Retry")))
			a.retryAfter = retry.ParseRetryAfter(cp.header.Get("Retry-After"), time.Now(), time.Hour)
		}
		cp.mu.Unlock()
	}
	if err == nil {
		if a.status == 0 {
			a.status = http.StatusOK
		}
		return a
	}
	var se *stripe.Error
	if errors.As(err, &se) {
		if se.HTTPStatusCode != 0 {
			a.status = se.HTTPStatusCode
		}
		if se.RequestID != "" {
			a.requestID = se.RequestID
		}
		if se.LastResponse != nil && se.LastResponse.Header != nil {
			h := se.LastResponse.Header
			a.shouldRetry = strings.ToLower(strings.TrimSpace(h.Get("Stripe-Should-Retry")))
			a.retryAfter = retry.ParseRetryAfter(h.Get("Retry-After"), time.Now(), time.Hour)
		}
		text := string(se.Type)
		if se.Code != "" {
			text += "/" + string(se.Code)
		}
		a.errText = retry.CleanText(fmt.Sprintf("HTTP %d %s: %s", a.status, text, se.Msg), maxErrorBytes)
		return a
	}
	if a.status >= 200 && a.status < 300 {
		// An answer arrived but its body was cut or unreadable: the
		// request may have been applied.
		a.status = 0
	}
	prefix := "no answer"
	if a.status != 0 {
		prefix = fmt.Sprintf("HTTP %d", a.status)
	}
	a.errText = retry.CleanText(prefix+": "+err.Error(), maxErrorBytes)
	if a.errText == "" {
		a.errText = prefix
	}
	return a
}

// capture holds the status and headers of the last response a request
// got, as the transport saw them: stripe-go does not expose them when the
// body is not a Stripe error.
type capture struct {
	mu     sync.Mutex
	status int
	header http.Header
}

type captureKey struct{}

func withCapture(ctx context.Context) (context.Context, *capture) {
	c := &capture{}
	return context.WithValue(ctx, captureKey{}, c), c
}

type captureTransport struct{ base http.RoundTripper }

func (t captureTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if c, ok := req.Context().Value(captureKey{}).(*capture); ok && resp != nil {
		c.mu.Lock()
		c.status, c.header = resp.StatusCode, resp.Header.Clone()
		c.mu.Unlock()
	}
	return resp, err
}
