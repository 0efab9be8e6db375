package billing

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
)

const validateCatalogue = `plans:
  - id: pm
  - id: pu
customers:
  - id: acme
    plan: pm
  - id: globex
    plan: pu
`

func TestBillingMappingValidation(t *testing.T) {
	cat, err := limits.ParseCatalogue([]byte(validateCatalogue))
	if err != nil {
		t.Fatal(err)
	}
	good := `plans:
  - plan: pm
    mode: meter_events
    event_name: api_units
  - plan: pu
    mode: usage_records
    price: price_123
customers:
  - id: acme
    stripe_customer_id: cus_acme
  - id: globex
    stripe_customer_id: cus_globex
    subscription_item: si_globex
`
	m, err := ParseMapping([]byte(good), cat)
	if err != nil {
		t.Fatalf("valid mapping refused: %v", err)
	}
	if id, ok := m.CustomerOfStripe("cus_globex"); !ok || id != "globex" {
		t.Errorf("CustomerOfStripe: %q %v", id, ok)
	}
	cases := []struct{ name, yaml, want string }{
		{"empty", "", "empty"},
		{"unknown field", strings.Replace(good, "price: price_123", "prize: 1", 1), "field prize not found"},
		{"two documents", good + "---\nplans: []\n", "more than one"},
		{"bad mode", strings.Replace(good, "mode: usage_records", "mode: invoices", 1), `mode "invoices"`},
		{"missing event name", strings.Replace(good, "    event_name: api_units\n", "", 1), "event_name"},
		{"bad stripe id", strings.Replace(good, "cus_acme", "acme", 1), "stripe_customer_id \"acme\""},
		{"duplicate stripe id", strings.Replace(good, "cus_globex", "cus_acme", 1), "also customer"},
		{"missing item", strings.Replace(good, "    subscription_item: si_globex\n", "", 1), "subscription_item is required"},
		{"item on meter plan", strings.Replace(good, "stripe_customer_id: cus_acme", "stripe_customer_id: cus_acme\n    subscription_item: si_x", 1), "not used"},
		{"unknown customer", good + "  - id: nobody\n    stripe_customer_id: cus_nobody\n", "not in the plan catalogue"},
		{"unknown plan", strings.Replace(good, "plan: pu", "plan: gold", 1), `plan "gold": not in the plan catalogue`},
		{"bad price", strings.Replace(good, "price_123", "p123", 1), "price id"},
	}
	for _, tc := range cases {
		_, err := ParseMapping([]byte(tc.yaml), cat)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestBillingConfigValidation(t *testing.T) {
	if err := (Config{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := Config{MappingFile: "m.yaml", StripeAPIURL: "ftp://x", Window: "week", Interval: time.Millisecond,
		MaxRequestsPerSecond: 1000, RetryMin: time.Second, RetryMax: time.Millisecond}.WithDefaults()
	err := bad.Validate()
	for _, want := range []string{"billing.stripe_api_key", "billing.stripe_api_url", "billing.window", "billing.interval",
		"billing.max_requests_per_second", "billing.retry_max"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error naming %s, got %v", want, err)
		}
	}
}

func TestBillingParsePeriod(t *testing.T) {
	if p, err := ParsePeriod("2026-11"); err != nil || !p.Equal(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("2026-11: %v %v", p, err)
	}
	for _, s := range []string{"2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", "", "1999-12"} {
		if _, err := ParsePeriod(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestBillingAnswerOutcome pins the retry classification of Stripe's answers.
func TestBillingAnswerOutcome(t *testing.T) {
	cases := []struct {
		a    answer
		want string
	}{
		{answer{status: 200}, resultAcknowledged},
		{answer{status: 0, errText: "no answer: EOF"}, resultRetrying},
		{answer{status: 409, errText: "x"}, resultRetrying},
		{answer{status: 429, errText: "x"}, resultRetrying},
		{answer{status: 429, errText: "x", shouldRetry: "false"}, resultFailed},
		{answer{status: 400, errText: "x"}, resultFailed},
		{answer{status: 400, errText: "x", shouldRetry: "true"}, resultRetrying},
		{answer{status: 401, errText: "x"}, resultFailed},
		{answer{status: 500, errText: "x"}, resultRetrying},
		{answer{status: 500, errText: "x", shouldRetry: "false"}, resultRetrying},
		{answer{status: http.StatusServiceUnavailable, errText: "x"}, resultRetrying},
	}
	for _, tc := range cases {
		if got := tc.a.outcome(); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.a, got, tc.want)
		}
	}
}
