package web

import (
	"cmp"
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
)

// statusClasses are the choices of the status-class filter.
var statusClasses = []string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// overviewTop is how many customers, keys and routes the overview lists.
const overviewTop = 10

// pageParamsOf is the parameter list of t's page: the key page has its key
// in the path, so no key filter.
func pageParamsOf(t target) []string {
	if t.Key != "" {
		return keyPageParams
	}
	return pageParams
}

// topRow is one line of the overview's top tables.
type topRow struct {
	Value string // what the row is (customer, key or route)
	// Customer is the key's customer on a key row.
	Customer string
	// Link is the row's page, "" when there is none.
	Link    string
	Latency *api.Latency
	totals
}

// overviewData is what the overview shows of usage.
type overviewData struct {
	// API is the GET /v1/usage query string every figure is answered by
	// (with group_by added for the tables).
	API     string
	Fresh   time.Time
	Totals  totals
	Latency *api.Latency
	IPs     uint64
	// IPsShown: IPs was counted (a range of at most overviewIPsMaxRange).
	IPsShown               bool
	Customers, Keys, Route []topRow
}

// overviewIPsMaxRange is the longest range for which the overview counts
// distinct client networks over every customer. The count is exact (the
// union of every customer's address sets), and its cost grows with the
// addresses in the range: at 10 M events over 30 days it took 8.9 s of the
// page's 11.5 s, where the other reads took about one second
// (docs/performance.md). Beyond it the page says where the figure is: the
// API and each customer's CSV.
const overviewIPsMaxRange = 24 * time.Hour

// ipsWithin reports whether the range of q (from, to: RFC 3339, as
// readView sets them) is at most max.
func ipsWithin(q url.Values, max time.Duration) bool {
	from, err1 := time.Parse(time.RFC3339, q.Get("from"))
	to, err2 := time.Parse(time.RFC3339, q.Get("to"))
	return err1 == nil && err2 == nil && to.Sub(from) <= max
}

// overviewFigures runs the overview's all-customer queries: window=total
// over the range, ungrouped for the totals and latency, grouped by
// customer, by customer and key, and by route for the top tables.
func (s *Server) overviewFigures(ctx context.Context, p auth.Principal, params url.Values) (overviewData, error) {
	base := url.Values{}
	for k, v := range params {
		base[k] = v
	}
	base.Set("window", string(aggregate.WindowTotal))
	// Shown to people: decoded, as one would type it (every value here is
	// the server's own: times, a window and a zone name).
	shown, err := url.QueryUnescape(base.Encode())
	if err != nil {
		shown = base.Encode()
	}
	o := overviewData{API: "/v1/usage?" + shown}
	run := func(groupBy string) (api.UsageResponse, error) {
		q := url.Values{}
		for k, v := range base {
			q[k] = v
		}
		if groupBy == "" && ipsWithin(base, overviewIPsMaxRange) {
			// The one figure of distinct client IPs the page shows.
			o.IPsShown = true
			resp, _, err := s.usage(ctx, p, target{}, q)
			return resp, err
		}
		if groupBy != "" {
			q.Set("group_by", groupBy)
		}
		resp, _, err := s.usageWithoutIPs(ctx, p, target{}, q)
		return resp, err
	}
	// The four reads run at once (the engine serves several statements
	// together); the first error is the page's.
	groups := []string{"", "customer_id", "customer_id,api_key_id", "route"}
	resps := make([]api.UsageResponse, len(groups))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Go(func() { resps[i], errs[i] = run(g) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return o, err
		}
	}
	all, byCustomer, byKey, byRoute := resps[0], resps[1], resps[2], resps[3]
	o.Fresh = all.Freshness
	o.Totals = sum(all.Rows)
	if len(all.Rows) == 1 {
		o.Latency, o.IPs = all.Rows[0].LatencyMS, all.Rows[0].DistinctClientIPs
	}
	o.Customers = top(byCustomer.Rows, func(r api.UsageRow) topRow {
		c := r.Group["customer_id"]
		t := topRow{Value: c}
		if c == "" {
			t.Value = "(no customer)"
		} else {
			t.Link = "/ui/customers/" + url.PathEscape(c)
		}
		return t
	})
	o.Keys = top(byKey.Rows, func(r api.UsageRow) topRow {
		c, k := r.Group["customer_id"], r.Group["api_key_id"]
		t := topRow{Value: k, Customer: c}
		// A key page exists for a key the catalogue gives the customer.
		if cu, ok := s.d.Registry.Customer(c); ok && c != "" && slices.Contains(cu.AllKeys(), k) {
			t.Link = "/ui/customers/" + url.PathEscape(c) + "/keys/" + url.PathEscape(k)
		}
		return t
	})
	o.Route = top(byRoute.Rows, func(r api.UsageRow) topRow {
		t := topRow{Value: r.Group["route"]}
		if t.Value == "" {
			t.Value = "(no route)"
		}
		return t
	})
	return o, nil
}

// top turns whole-range rows into the overviewTop rows with the most
// requests (ties by value).
func top(rows []api.UsageRow, label func(api.UsageRow) topRow) []topRow {
	out := make([]topRow, 0, len(rows))
	for _, r := range rows {
		t := label(r)
		t.totals = sum([]api.UsageRow{r})
		t.Latency = r.LatencyMS
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b topRow) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Customer, b.Customer), cmp.Compare(a.Value, b.Value))
	})
	if len(out) > overviewTop {
		out = out[:overviewTop]
	}
	return out
}

// freshnessItem is the health line of the aggregator's watermark, as the
// store holds it (whichever process runs the aggregator).
func freshnessItem(w, now time.Time) HealthItem {
	it := HealthItem{ID: "freshness", Name: "Data freshness"}
	if w.IsZero() {
		it.Value = "no aggregation has run yet"
		return it
	}
	it.Value = "rollups complete up to " + w.UTC().Format(time.RFC3339) + " (" + ago(now.Sub(w)) + " behind)"
	return it
}

// ago is a duration for people, to the second.
func ago(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Truncate(time.Second).String()
}

func init() {
	// tsIn shows a time in the page's zone (RFC 3339 with its offset).
	funcs["tsIn"] = func(t time.Time, loc *time.Location) string {
		if t.IsZero() {
			return "never"
		}
		if loc == nil {
			loc = time.UTC
		}
		return t.In(loc).Format(time.RFC3339)
	}
	// pct is a share in percent, to two places.
	funcs["pct"] = func(part, whole uint64) string {
		if whole == 0 {
			return "0"
		}
		return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 2, 64)
	}
}

func init() {
	// has tells whether list holds v (a filter value typed into the URL
	// that is not one of the choices stays selected).
	funcs["has"] = func(list []string, v string) bool { return slices.Contains(list, v) }
}

// keyFilterKnown answers "not found" for a key filter that is not one of
// the customer's keys in the catalogue, as the key page does for such a
// key: ids of others cannot be probed through the filter either.
func (s *Server) keyFilterKnown(w http.ResponseWriter, r *http.Request, t target, v view) bool {
	k := v.Filters["api_key_id"]
	if k == "" || slices.Contains(s.keys(t.Customer), k) {
		return true
	}
	s.fail(w, r, http.StatusNotFound, "No such API key for this customer.")
	return false
}

// pageGroupBy are the group_by choices of a customer or key page: one
// customer's page has a single customer_id, so that choice is left out of
// the menu (the URL may still name it, as the API allows).
var pageGroupBy = slices.DeleteFunc(slices.Clone(aggregate.GroupByAllowed), func(g string) bool { return g == "customer_id" })
