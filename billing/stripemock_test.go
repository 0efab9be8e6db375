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
