package web

import (
	"context"
	"errors"
	"html/template"
	"math"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
)

// DeliveriesFunc reads a customer's latest n usage alert deliveries, newest
// first (limits.RecentDeliveries over the store).
type DeliveriesFunc func(ctx context.Context, customerID string, n int) ([]limits.Delivery, error)

// recentDeliveries is how many alert deliveries the plan card lists.
const recentDeliveries = 10

// livePoll is how often a page in live mode asks for new figures. The
// limits view refreshes every limits.refresh (5s by default) and the
// aggregator rolls up every aggregate.interval, so polling faster than
// this shows nothing newer.
const livePoll = 2 * time.Second

// liveParam reads the page's "live" parameter: "1" turns live mode on,
// absent or empty leaves it off.
func liveParam(q url.Values) (bool, error) {
	switch q.Get("live") {
	case "":
		return false, nil
	case "1":
		return true, nil
	}
	return false, errors.New(`"live": want 1 (or leave it out)`)
}

// chartQuery is the page's query for one chart's data: the page's range
// and window, grouped as the chart needs (groupBy "" for none), without
// the live toggle.
func chartQuery(pageQuery, groupBy string) string {
	q, _ := url.ParseQuery(pageQuery)
	q.Del("live")
	q.Del("group_by")
	if groupBy != "" {
		q.Set("group_by", groupBy)
	}
	return q.Encode()
}

// chartData adds the charts' data URLs and the live toggle to a usage
// page's data: the status chart reads the page's usage CSV grouped by
// status class, the latency chart the same CSV ungrouped (the same rows
// as GET /v1/usage with Accept: text/csv), live mode polls live.json.
func (s *Server) chartData(data map[string]any, base string, v view, q url.Values) error {
	live, err := liveParam(q)
	if err != nil {
		return err
	}
	data["StatusCSV"] = template.URL(base + "/usage.csv?" + chartQuery(v.Query, "status_class"))
	data["LatencyCSV"] = template.URL(base + "/usage.csv?" + chartQuery(v.Query, ""))
	toggle, _ := url.ParseQuery(v.Query)
	if live {
		toggle.Del("live")
		lq, _ := url.ParseQuery(chartQuery(v.Query, ""))
		data["LiveURL"] = template.URL(base + "/live.json?" + lq.Encode())
		data["LiveMS"] = livePoll.Milliseconds()
	} else {
		toggle.Set("live", "1")
	}
	data["Live"] = live
	data["LiveToggle"] = template.URL(base + "?" + toggle.Encode())
	return nil
}

// percent shows a fraction as a percentage, rounded to 1/10000 of a
// percent (0.57 is 57, not 56.99999999999999).
func percent(f float64) string {
	return strconv.FormatFloat(math.Round(f*1e6)/1e4, 'f', -1, 64)
}

func init() { funcs["pct"] = percent }

// alertThreshold is one of the plan's alert thresholds on the plan card.
type alertThreshold struct {
	Percent string  // 80
	Units   float64 // the units at which it is crossed
	Crossed bool    // used has reached it this period
}

// alertCard is the plan card's alert section: the thresholds of the
// customer's plan, whether alerts go out, and the latest deliveries. It
// never holds the webhook URL or a secret.
type alertCard struct {
	Thresholds      []alertThreshold
	Sending         bool   // a webhook is configured and alerts are on
	Why             string // why no alert goes out, when not Sending
	Deliveries      []limits.Delivery
	DeliveriesError string
}

// alerts builds the plan card's alert section for the page's customer;
// nil when the plan has no thresholds and no delivery was ever recorded.
func (s *Server) alerts(ctx context.Context, t target, l *limits.Limit) *alertCard {
	c, ok := s.d.Registry.Customer(t.Customer)
	if !ok {
		return nil
	}
	card := &alertCard{}
	var plan *limits.Plan
	if cat := s.d.Registry.Catalogue(); cat != nil {
		if i := slices.IndexFunc(cat.Plans, func(p limits.Plan) bool { return p.ID == c.Plan }); i >= 0 {
			plan = &cat.Plans[i]
		}
	}
	if plan != nil {
		ts := slices.Clone(plan.AlertThresholds)
		slices.Sort(ts)
		for _, th := range ts {
			at := alertThreshold{Percent: percent(th), Units: th * plan.IncludedUnits}
			// The same comparison as the alerter's: used/included, not
			// used against threshold*included.
			if l != nil && plan.IncludedUnits > 0 && l.Used/plan.IncludedUnits >= th {
				at.Crossed = true
			}
			card.Thresholds = append(card.Thresholds, at)
		}
	}
	switch {
	case len(card.Thresholds) == 0:
		card.Why = "The plan has no alert thresholds."
	case c.AlertWebhook == "":
		card.Why = "No alert webhook is configured for this customer, so no alert is sent."
	case s.d.AlertsOn != nil && !s.d.AlertsOn():
		card.Why = "Usage alerts are turned off in this deployment."
	default:
		card.Sending = true
	}
	if s.d.Deliveries != nil {
		ds, err := s.d.Deliveries(ctx, t.Customer, recentDeliveries)
		if err != nil {
			s.d.Log.Warn("ui alert deliveries", "customer_id", t.Customer, "err", err)
			card.DeliveriesError = "The alert deliveries could not be read; try again shortly."
		}
		card.Deliveries = ds
	}
	if len(card.Thresholds) == 0 && len(card.Deliveries) == 0 && card.DeliveriesError == "" {
		return nil
	}
	return card
}
