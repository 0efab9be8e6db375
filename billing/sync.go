package billing

import (
	"context"
	"errors"
	"fmt"

	"github.com/stripe/stripe-go/v76"
)

// Sync fills in the subscription items of the customers whose plan
// reports usage records, from the customers' subscriptions in Stripe: the
// metered item of the plan's price (or the only metered item when the plan
// names no price). It returns the updated mapping (m is not changed) and a
// line per change; customers it cannot settle are reported in the error,
// all at once, and keep their item.
func Sync(ctx context.Context, api StripeAPI, m *Mapping, plans Plans) (*Mapping, []string, error) {
	out := &Mapping{Plans: append([]PlanBilling(nil), m.Plans...), Customers: append([]CustomerBilling(nil), m.Customers...)}
	planOf := map[string]string{}
	for _, c := range plans.Customers() {
		planOf[c.ID] = c.Plan
	}
	var notes []string
	var errs []error
	for i := range out.Customers {
		c := &out.Customers[i]
		pb, ok := m.Plan(planOf[c.ID])
		if !ok || pb.Mode != ModeUsageRecords {
			continue
		}
		items, err := api.MeteredItems(ctx, c.StripeCustomerID)
		if err != nil {
			errs = append(errs, fmt.Errorf("customer %q: %w", c.ID, err))
			continue
		}
		var match []SubscriptionItem
		for _, it := range items {
			if pb.Price == "" || it.Price == pb.Price {
				match = append(match, it)
			}
		}
		switch {
		case len(match) == 0:
			errs = append(errs, fmt.Errorf("customer %q: no active subscription of %s has a metered item%s", c.ID, c.StripeCustomerID, priceNote(pb.Price)))
			continue
		case len(match) > 1:
			errs = append(errs, fmt.Errorf("customer %q: %d metered items%s; set price on plan %q to choose", c.ID, len(match), priceNote(pb.Price), pb.Plan))
			continue
		}
		it := match[0]
		if it.AggregateUsage != "" && it.AggregateUsage != string(stripe.PriceRecurringAggregateUsageLastDuringPeriod) && it.AggregateUsage != string(stripe.PriceRecurringAggregateUsageLastEver) {
			errs = append(errs, fmt.Errorf("customer %q: price %s aggregates usage by %q: Meterline sets period-to-date totals, which needs last_during_period", c.ID, it.Price, it.AggregateUsage))
			continue
		}
		if c.SubscriptionItem != it.ID {
			notes = append(notes, fmt.Sprintf("customer %s: subscription_item %s -> %s (price %s, subscription %s)", c.ID, orNone(c.SubscriptionItem), it.ID, it.Price, it.Subscription))
			c.SubscriptionItem = it.ID
		}
	}
	return out, notes, errors.Join(errs...)
}

func priceNote(price string) string {
	if price == "" {
		return ""
	}
	return " of price " + price
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
