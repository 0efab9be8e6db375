package billing

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/billing/billingtest"
)

func subscriptionList(items ...string) string {
	return fmt.Sprintf(`{"object":"list","url":"/v1/subscriptions","has_more":false,"data":[{"id":"sub_1","object":"subscription","status":"active","items":{"object":"list","has_more":false,"data":[%s]}}]}`, strings.Join(items, ","))
}

func subItem(id, price, usageType, aggregate string) string {
	return fmt.Sprintf(`{"id":%q,"object":"subscription_item","price":{"id":%q,"object":"price","recurring":{"interval":"month","usage_type":%q,"aggregate_usage":%q}}}`, id, price, usageType, aggregate)
}

// TestBillingSyncFindsTheMeteredItem: sync picks the metered item of the
// plan's price from the customer's subscriptions, and refuses ambiguous or
// unsuitable ones (a price that sums usage cannot take period totals).
func TestBillingSyncFindsTheMeteredItem(t *testing.T) {
	cat, err := limits.ParseCatalogue([]byte(validateCatalogue + "  - id: initech\n    plan: pu\n  - id: hooli\n    plan: pu\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseMapping([]byte(`plans:
  - plan: pm
    mode: meter_events
    event_name: api_units
  - plan: pu
    mode: usage_records
    price: price_metered
customers:
  - id: acme
    stripe_customer_id: cus_acme
  - id: globex
    stripe_customer_id: cus_globex
    subscription_item: si_old
  - id: initech
    stripe_customer_id: cus_initech
    subscription_item: si_keep
  - id: hooli
    stripe_customer_id: cus_hooli
    subscription_item: si_keep2
`), cat)
	if err != nil {
		t.Fatal(err)
	}
	s := billingtest.New()
	defer s.Close()
	s.SetSubscriptions("cus_globex", subscriptionList(subItem("si_seat", "price_seat", "licensed", ""),
		subItem("si_new", "price_metered", "metered", "last_during_period")))
	s.SetSubscriptions("cus_initech", subscriptionList(subItem("si_sum", "price_metered", "metered", "sum")))
	api := NewStripeAPI(Config{StripeAPIKey: "sk_test_x", StripeAPIURL: s.URL})
	out, notes, err := Sync(testCtx(t), api, m, limits.NewRegistry(cat))
	if len(notes) != 1 || !strings.Contains(notes[0], "si_old -> si_new") {
		t.Errorf("notes: %v", notes)
	}
	if err == nil || !strings.Contains(err.Error(), `"initech"`) || !strings.Contains(err.Error(), "last_during_period") ||
		!strings.Contains(err.Error(), `"hooli": no active subscription`) {
		t.Errorf("errors: %v", err)
	}
	if c, _ := out.customerByID("globex"); c.SubscriptionItem != "si_new" {
		t.Errorf("globex item %q", c.SubscriptionItem)
	}
	if c, _ := out.customerByID("initech"); c.SubscriptionItem != "si_keep" {
		t.Errorf("initech item changed to %q", c.SubscriptionItem)
	}
	if c, _ := m.Customer("globex"); c.SubscriptionItem != "si_old" {
		t.Errorf("Sync changed its input")
	}
}

func (m *Mapping) customerByID(id string) (CustomerBilling, bool) {
	for _, c := range m.Customers {
		if c.ID == id {
			return c, true
		}
	}
	return CustomerBilling{}, false
}
