package billing

import (
	"testing"
	"time"

	"github.com/meterline/meterline/internal/testenv"
)

// TestBillingStripeMockAcceptsEveryRequest sends every kind of request the
// worker makes (meter events, a correction, usage records, the
// subscription list of `billing sync`) to stripe-mock, which validates
// them against Stripe's OpenAPI specification for API 2023-10-16.
func TestBillingStripeMockAcceptsEveryRequest(t *testing.T) {
	url := testenv.Require(t, testenv.EnvStripeMock)
	f := newFixture(t, ModeMeterEvents, ModeUsageRecords)
	meter, usage := f.customers[0], f.customers[1]
	f.addUsage(meter, hoursAgo(5).Add(time.Minute), "2", "0.5")
	f.addUsage(meter, hoursAgo(4).Add(time.Minute), "1")
	f.addUsage(usage, hoursAgo(3).Add(time.Minute), "4", "3")
	cfg := f.config(url)
	w := f.worker(cfg)

	st, err := w.RunOnce(testCtx(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed != 0 || st.Open != 0 || st.Acknowledged < 2 {
		t.Fatalf("stripe-mock did not accept every request: %+v\n%s", st, f.logs.String())
	}
	// A late event: a correction meter event and a new usage-record total.
	f.addUsage(meter, hoursAgo(5).Add(2*time.Minute), "1.25")
	f.addUsage(usage, hoursAgo(3).Add(2*time.Minute), "1")
	st, err = w.RunOnce(testCtx(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Failed != 0 || st.Open != 0 || st.Acknowledged != 2 {
		t.Fatalf("corrections: want 2 acknowledged, got %+v\n%s", st, f.logs.String())
	}
	for _, c := range f.customers {
		for _, r := range f.ledger(c) {
			if r.state() != resultAcknowledged || r.requestID == "" {
				t.Errorf("customer %s report %s: state %s, request id %q", c.id, r.identifier, r.state(), r.requestID)
			}
		}
	}
	if _, err := NewStripeAPI(cfg).MeteredItems(testCtx(t), usage.stripe); err != nil {
		t.Fatalf("listing subscriptions (billing sync): %v", err)
	}
}

// TestBillingStripeMockAcceptsSummaryRequests sends the reconciliation's
// reads of what Stripe holds to stripe-mock, which checks them against
// Stripe's OpenAPI specification: the list of meters, a meter's event
// summaries per hour for a customer, and a subscription item's usage
// record summaries.
func TestBillingStripeMockAcceptsSummaryRequests(t *testing.T) {
	url := testenv.Require(t, testenv.EnvStripeMock)
	api := NewStripeAPI(Config{StripeAPIKey: "sk_test_meterline", StripeAPIURL: url})
	from := time.Now().UTC().Truncate(time.Hour).Add(-48 * time.Hour)
	// stripe-mock answers its fixture meter, whose event name is this.
	held, err := api.MeterSummaries(testCtx(t), "test-meter-event-name", "cus_meterline", from, from.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("meter event summaries: %v", err)
	}
	if len(held) == 0 {
		t.Fatalf("stripe-mock's fixture summary was not read: %v", held)
	}
	if _, err := api.MeterSummaries(testCtx(t), "no_such_meter", "cus_meterline", from, from.Add(time.Hour)); err == nil {
		t.Error("an event name without a meter gave no error")
	}
	sums, err := api.UsageSummaries(testCtx(t), "si_meterline")
	if err != nil || len(sums) == 0 || sums[0].End.IsZero() {
		t.Fatalf("usage record summaries: %+v %v", sums, err)
	}
}
