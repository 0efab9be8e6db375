package web

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/store"
)

// Range presets of the controls, and the window each one shows.
type preset struct {
	Name   string
	span   func(time.Time) time.Time // from, given to
	window aggregate.Window
}

var presets = []preset{
	{"1h", func(t time.Time) time.Time { return t.Add(-time.Hour) }, aggregate.WindowMinute},
	{"24h", func(t time.Time) time.Time { return t.Add(-24 * time.Hour) }, aggregate.WindowHour},
	{"7d", func(t time.Time) time.Time { return t.AddDate(0, 0, -7) }, aggregate.WindowHour},
	{"30d", func(t time.Time) time.Time { return t.AddDate(0, 0, -30) }, aggregate.WindowDay},
	{"12mo", func(t time.Time) time.Time { return t.AddDate(-1, 0, 0) }, aggregate.WindowMonth},
}

// pageParams are the query parameters of the customer page, its CSV and
// live URLs (live: the live mode's toggle); keyPageParams those of the key
// page (the key is in the path);
// overviewParams those of the overview (always one whole-range window).
var (
	pageParams     = []string{"range", "from", "to", "window", "group_by", "tz", "route", "method", "status_class", "gateway", "live", "api_key_id"}
	keyPageParams  = pageParams[:len(pageParams)-1]
	overviewParams = []string{"range", "from", "to", "tz"}
)

// pageFilters are the filter controls, as GET /v1/usage names them: each
// field holds one value or a comma-separated list.
var pageFilters = []string{"route", "method", "status_class", "gateway", "api_key_id"}

// maxParamBytes bounds any one page parameter; a filter item is at most
// an id's 128 bytes, and a field may list several.
const maxParamBytes = 1024

// windowFor is the window a custom range is shown in.
func windowFor(d time.Duration) aggregate.Window {
	switch {
	case d <= 6*time.Hour:
		return aggregate.WindowMinute
	case d <= 8*24*time.Hour:
		return aggregate.WindowHour
	case d <= 93*24*time.Hour:
		return aggregate.WindowDay
	}
	return aggregate.WindowMonth
}

// view is the controls' state, read from the URL.
type view struct {
	Range    string // a preset, or "" for a custom from/to
	From, To time.Time
	Window   string // as chosen ("" derived)
	GroupBy  string
	// TZ is the time-zone field as given ("" = UTC); Loc the zone the
	// page's times and day and month windows are in.
	TZ  string
	Loc *time.Location
	// Filters are the filter fields as given, by parameter name.
	Filters map[string]string
	Query   string // the URL's query string, re-encoded
}

// readView checks the page's parameters (allowed lists the ones the page
// takes) and turns them into GET /v1/usage's. Every wrong one is named in
// one error, an api.BadParams, answered 400.
func readView(q url.Values, now time.Time, allowed []string) (view, url.Values, error) {
	var bad api.BadParams
	problem := func(param, format string, args ...any) {
		bad = append(bad, &aggregate.ParamError{Param: param, Message: fmt.Sprintf(format, args...)})
	}
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		vs := q[k]
		switch {
		case !slices.Contains(allowed, k):
			problem(cut(k), "unknown parameter (known: %s)", strings.Join(allowed, ", "))
			delete(q, k)
			continue
		case len(vs) > 1:
			problem(k, "given %d times", len(vs))
		}
		for _, v := range vs {
			if len(v) > maxParamBytes {
				problem(k, "longer than %d bytes", maxParamBytes)
				break
			}
		}
	}
	for k, vs := range q { // an empty field of the controls' form means "not set"
		if len(vs) == 1 && vs[0] == "" {
			delete(q, k)
		}
	}
	v := view{Range: q.Get("range"), Window: q.Get("window"), GroupBy: q.Get("group_by"), TZ: q.Get("tz"), Loc: time.UTC,
		Filters: map[string]string{}}
	out := url.Values{}
	if v.TZ != "" {
		loc, err := aggregate.ParseTZ(v.TZ)
		if err != nil {
			problem("tz", "unknown time zone %q: name an IANA zone such as Europe/Berlin", cut(v.TZ))
		} else {
			v.Loc = loc
			out.Set("tz", loc.String())
		}
	}
	custom := q.Get("from") != "" || q.Get("to") != ""
	var derived aggregate.Window
	switch {
	case custom && v.Range != "":
		problem("range", `give either "range" or "from"/"to", not both`)
	case custom:
		v.From = pageTime(q.Get("from"), "from", &bad)
		if q.Get("from") == "" {
			problem("from", "required with to (RFC 3339, e.g. 2026-11-01T00:00:00Z)")
		}
		v.To = now
		if s := q.Get("to"); s != "" {
			v.To = pageTime(s, "to", &bad)
		}
		if !v.From.IsZero() && !v.To.IsZero() {
			if !v.From.Before(v.To) {
				problem("to", `"from" must be before "to"`)
			} else {
				derived = windowFor(v.To.Sub(v.From))
			}
		}
	default:
		if v.Range == "" {
			v.Range = "24h"
		}
		i := slices.IndexFunc(presets, func(p preset) bool { return p.Name == v.Range })
		if i < 0 {
			problem("range", "%q is not one of 1h, 24h, 7d, 30d, 12mo", cut(v.Range))
			break
		}
		v.To = now.UTC().Truncate(time.Minute).Add(time.Minute)
		v.From = presets[i].span(v.To)
		derived = presets[i].window
	}
	w := derived
	if v.Window != "" {
		w = aggregate.Window(v.Window)
		switch w {
		case aggregate.WindowMinute, aggregate.WindowHour, aggregate.WindowDay, aggregate.WindowMonth, aggregate.WindowTotal:
		default:
			problem("window", "%q is not one of minute, hour, day, month, total", cut(v.Window))
		}
	}
	if v.GroupBy != "" && !slices.Contains(aggregate.GroupByAllowed, v.GroupBy) {
		problem("group_by", "%q is not one of %s", cut(v.GroupBy), strings.Join(aggregate.GroupByAllowed, ", "))
	}
	for _, f := range pageFilters {
		s := q.Get(f)
		if s == "" {
			continue
		}
		v.Filters[f] = s
		for _, item := range strings.Split(s, ",") {
			if len(strings.TrimSpace(item)) > 128 {
				problem(f, "a value longer than 128 bytes")
				break
			}
		}
		if f == "api_key_id" && strings.Contains(s, ",") {
			problem(f, "one key at a time")
		}
		out.Set(f, s)
	}
	if len(bad) > 0 {
		return v, nil, bad
	}
	out.Set("from", v.From.UTC().Format(time.RFC3339))
	out.Set("to", v.To.UTC().Format(time.RFC3339))
	out.Set("window", string(w))
	if v.GroupBy != "" {
		out.Set("group_by", v.GroupBy)
	}
	v.Window = string(w)
	v.Query = q.Encode()
	return v, out, nil
}

// pageTime reads a from or to field: RFC 3339, with a hint when a '+' of
// the offset arrived as a space (typed into the URL unencoded).
func pageTime(s, param string, bad *api.BadParams) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err == nil {
		return t
	}
	msg := fmt.Sprintf("%q is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)", cut(s))
	if _, err := time.Parse(time.RFC3339, strings.Replace(s, " ", "+", 1)); err == nil && strings.Contains(s, " ") {
		msg += "; a '+' in a URL reads as a space: write it as %2B"
	}
	*bad = append(*bad, &aggregate.ParamError{Param: param, Message: msg})
	return time.Time{}
}

func cut(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

// target is whose usage a page shows, after the scope check.
type target struct {
	Customer, Key string
}

// resolve checks that the session may see the customer and key of the
// URL. Anything it may not see is "not found", as unknown ones are, so ids
// cannot be probed.
func (s *Server) resolve(w http.ResponseWriter, r *http.Request) (session, target, bool) {
	ss, ok := s.signedIn(w, r)
	if !ok {
		return ss, target{}, false
	}
	t := target{Customer: r.PathValue("customer"), Key: r.PathValue("key")}
	p := ss.principal
	if t.Customer == "" || len(t.Customer) > 128 || len(t.Key) > 128 || !p.CanReadCustomer(t.Customer) {
		s.fail(w, r, http.StatusNotFound, "No such customer.")
		return ss, t, false
	}
	if t.Key != "" {
		c, known := s.d.Registry.Customer(t.Customer)
		if !known || !slices.Contains(c.AllKeys(), t.Key) {
			s.fail(w, r, http.StatusNotFound, "No such API key for this customer.")
			return ss, t, false
		}
	}
	return ss, t, true
}

// reading runs the page's queries under the principal's read limits, on
// the store's interactive connections (as the API's reads); false: the
// answer was sent (429).
func (s *Server) reading(w http.ResponseWriter, r *http.Request, p auth.Principal) (*http.Request, func(), bool) {
	if s.d.ReadLimiter == nil {
		return r.WithContext(store.Interactive(r.Context())), func() {}, true
	}
	release, refused := s.d.ReadLimiter.Acquire(p.Name)
	if refused != nil {
		w.Header().Set("Retry-After", strconv.FormatInt(max(int64(math.Ceil(refused.RetryAfter.Seconds())), 1), 10))
		s.fail(w, r, http.StatusTooManyRequests, refused.Message)
		return nil, nil, false
	}
	return r.WithContext(store.Interactive(r.Context())), release, true
}

// usage runs one usage query as GET /v1/usage would for the session's
// principal, from the page's parameters.
func (s *Server) usage(ctx context.Context, p auth.Principal, t target, params url.Values) (api.UsageResponse, int, error) {
	return s.usageOf(ctx, p, t, params, true)
}

// usageWithoutIPs is usage for a page that does not show distinct client
// IPs: they are not computed (the rows carry 0), which spares the read
// the costliest measure. Every other figure is the API's.
func (s *Server) usageWithoutIPs(ctx context.Context, p auth.Principal, t target, params url.Values) (api.UsageResponse, int, error) {
	return s.usageOf(ctx, p, t, params, false)
}

func (s *Server) usageOf(ctx context.Context, p auth.Principal, t target, params url.Values, ips bool) (api.UsageResponse, int, error) {
	q := url.Values{}
	for k, v := range params {
		q[k] = v
	}
	if t.Customer != "" {
		q.Set("customer_id", t.Customer)
	}
	if t.Key != "" {
		q.Set("api_key_id", t.Key)
	}
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v1/usage?"+q.Encode(), nil)
	uq, code, err := api.ParseUsageQuery(req, p, s.d.Now())
	if err != nil {
		return api.UsageResponse{}, code, err
	}
	uq.SkipDistinctIPs = !ips
	resp, err := api.ReadUsage(ctx, s.d.Usage, uq)
	if err != nil {
		return resp, queryStatus(err), err
	}
	return resp, http.StatusOK, nil
}

func queryStatus(err error) int {
	var pe *aggregate.ParamError
	switch {
	case errors.As(err, &pe):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// totals sums rows the way a reader of GET /v1/usage would.
type totals struct {
	Requests, ClientErrors, ServerErrors uint64
	Units                                float64
	RequestBytes, ResponseBytes          uint64
}

func sum(rows []api.UsageRow) totals {
	var t totals
	for _, r := range rows {
		t.Requests += r.Requests
		t.ClientErrors += r.ClientErrors
		t.ServerErrors += r.ServerErrors
		u, _ := r.Units.Float64()
		t.Units += u
		t.RequestBytes += r.RequestBytes
		t.ResponseBytes += r.ResponseBytes
	}
	return t
}

// ErrorRate is the share of requests answered 4xx or 5xx, in percent.
func (t totals) ErrorRate() string {
	if t.Requests == 0 {
		return "0"
	}
	return strconv.FormatFloat(100*float64(t.ClientErrors+t.ServerErrors)/float64(t.Requests), 'f', 2, 64)
}

// groupRow is one line of a "by route/method/key" table.
type groupRow struct {
	Value string
	totals
}

func byGroup(rows []api.UsageRow, dim string) []groupRow {
	m := map[string][]api.UsageRow{}
	for _, r := range rows {
		m[r.Group[dim]] = append(m[r.Group[dim]], r)
	}
	out := make([]groupRow, 0, len(m))
	for v, rs := range m {
		out = append(out, groupRow{Value: v, totals: sum(rs)})
	}
	slices.SortFunc(out, func(a, b groupRow) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Value, b.Value))
	})
	return out
}

// customerPage serves the customer page and, with a key in the path, the
// key page.
func (s *Server) customerPage(w http.ResponseWriter, r *http.Request) {
	ss, t, ok := s.resolve(w, r)
	if !ok {
		return
	}
	v, params, err := readView(r.URL.Query(), s.d.Now(), pageParamsOf(t))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if !s.keyFilterKnown(w, r, t, v) {
		return
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	data := map[string]any{"Session": ss, "Target": t, "View": v, "Presets": presets,
		"Windows": []string{"minute", "hour", "day", "month"}, "GroupByAllowed": pageGroupBy,
		"StatusClasses": statusClasses}
	if t.Key != "" {
		data["Title"] = "Key " + t.Key
	} else {
		data["Title"] = "Customer " + t.Customer
	}
	csv := "/ui/customers/" + url.PathEscape(t.Customer)
	if t.Key != "" {
		csv += "/keys/" + url.PathEscape(t.Key)
	}
	data["Base"] = csv
	data["CSV"] = template.URL(csv + "/usage.csv?" + v.Query)
	if err := s.chartData(data, csv, v, r.URL.Query()); err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	// The page's queries run at once: the chart's rows, and the tables by
	// dimension (see pageTables).
	var (
		resp   api.UsageResponse
		code   int
		tables []map[string]any
		wg     sync.WaitGroup
	)
	// Neither the chart page nor its tables show distinct client IPs (the
	// page's CSV, which has them, is its own read).
	wg.Go(func() { resp, code, err = s.usageWithoutIPs(r.Context(), ss.principal, t, params) })
	wg.Go(func() { tables = s.pageTables(r.Context(), ss.principal, t, params) })
	wg.Wait()
	if err != nil {
		data["Error"] = err.Error()
		s.render(w, code, "usage.html", data)
		return
	}
	data["Usage"] = resp
	data["Totals"] = sum(resp.Rows)
	data["Fresh"] = resp.Freshness
	data["Tables"] = tables
	data["Keys"] = s.keys(t.Customer)
	plan, planErr := s.plan(t)
	data["Plan"], data["PlanError"] = plan, planErr
	data["Alerts"] = s.alerts(r.Context(), t, plan)
	s.render(w, http.StatusOK, "usage.html", data)
}

// pageDims are the dimensions of the tables under a customer page's chart
// (a key page has no key table).
var pageDims = []string{"route", "method", "status_class"}

// pageTables are the tables by dimension of a customer or key page: the
// page's query summed over its range (window=total) and grouped by each
// dimension. The tables show additive totals only (requests, errors,
// units), so route, method and status class come from one query grouped by
// all three, folded in Go: one read of the rollups instead of three. (Its
// answer is bounded by aggregate.MaxRows combinations, which only routes in
// the ten thousands reach: raw paths rather than templates; the tables then
// show that error.) The key table is its own query, run beside it: keys
// times routes can be large. The figures are the API's for the same query
// with that one group_by.
func (s *Server) pageTables(ctx context.Context, p auth.Principal, t target, params url.Values) []map[string]any {
	grouped := func(dims string) (api.UsageResponse, int, error) {
		gp := url.Values{}
		for k, vs := range params {
			gp[k] = vs
		}
		gp.Set("group_by", dims)
		gp.Set("window", string(aggregate.WindowTotal))
		return s.usageWithoutIPs(ctx, p, t, gp)
	}
	table := func(dim string, g api.UsageResponse, err error) map[string]any {
		tb := map[string]any{"Dim": dim}
		if err != nil {
			tb["Error"] = err.Error()
		} else {
			tb["Rows"] = byGroup(g.Rows, dim)
		}
		return tb
	}
	var (
		tables = make([]map[string]any, len(pageDims))
		keys   map[string]any
		wg     sync.WaitGroup
	)
	if t.Key == "" {
		wg.Go(func() {
			g, _, err := grouped("api_key_id")
			keys = table("api_key_id", g, err)
		})
	}
	g, _, err := grouped(strings.Join(pageDims, ","))
	for i, d := range pageDims {
		tables[i] = table(d, g, err)
	}
	wg.Wait()
	if keys != nil {
		tables = append(tables, keys)
	}
	return tables
}

func (s *Server) keys(customer string) []string {
	c, ok := s.d.Registry.Customer(customer)
	if !ok {
		return nil
	}
	return c.AllKeys()
}

// plan reads the limits view for the key, or for one of the customer's
// keys (the plan and its usage are the customer's, whichever key).
func (s *Server) plan(t target) (*limits.Limit, string) {
	key := t.Key
	if key == "" {
		ks := s.keys(t.Customer)
		if len(ks) == 0 {
			return nil, "This customer has no key in the catalogue, so no plan to show."
		}
		key = ks[0]
	}
	l, err := s.d.Limits.Lookup(key, s.d.Now())
	if err != nil {
		return nil, "Plan unavailable: " + err.Error()
	}
	if l.CustomerID != t.Customer {
		return nil, "This key now belongs to another customer."
	}
	return &l, ""
}

// usageCSV downloads the rows of the page's chart: the same rows, columns
// and writer as GET /v1/usage with Accept: text/csv.
func (s *Server) usageCSV(w http.ResponseWriter, r *http.Request) {
	ss, t, ok := s.resolve(w, r)
	if !ok {
		return
	}
	v, params, err := readView(r.URL.Query(), s.d.Now(), pageParamsOf(t))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if !s.keyFilterKnown(w, r, t, v) {
		return
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	resp, code, err := s.usage(r.Context(), ss.principal, t, params)
	if err != nil {
		s.fail(w, r, code, err.Error())
		return
	}
	api.WriteUsageCSV(w, resp)
}

// overview serves the admin and finance landing page: usage over the
// range of every customer (totals, error rate, latency percentiles), the
// top customers, keys and routes, data freshness and the pipeline's
// health. Each figure is one all-customer GET /v1/usage query with
// window=total, through the API's own code.
func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	ss, ok := s.signedIn(w, r)
	if !ok {
		return
	}
	if !ss.principal.Has(auth.ScopeAdmin) && !ss.principal.Has(auth.ScopeFinance) {
		s.fail(w, r, http.StatusNotFound, "No such page.")
		return
	}
	v, params, err := readView(r.URL.Query(), s.d.Now(), overviewParams)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	var customers []string
	if c := s.d.Registry.Catalogue(); c != nil {
		for _, cu := range c.Customers {
			customers = append(customers, cu.ID)
		}
	}
	slices.Sort(customers)
	data := map[string]any{"Session": ss, "Title": "Overview", "Customers": customers, "View": v, "Presets": presets,
		"Base": "/ui/overview"}
	o, err := s.overviewFigures(r.Context(), ss.principal, params)
	if err != nil {
		data["UsageError"] = err.Error()
	} else {
		data["O"] = o
		data["Fresh"] = o.Fresh
	}
	if _, known := data["Fresh"]; !known {
		if fresh, err := s.d.Usage.Freshness(r.Context()); err == nil {
			data["Fresh"] = fresh
		} else {
			data["FreshError"] = err.Error()
		}
	}
	var health []HealthItem
	if f, ok := data["Fresh"].(time.Time); ok {
		health = append(health, freshnessItem(f, s.d.Now()))
	}
	if s.d.Health != nil {
		health = append(health, s.d.Health()...)
	}
	data["Health"] = health
	s.render(w, http.StatusOK, "overview.html", data)
}

var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	},
	// when is a time for a dense table: to the minute, in UTC, with the
	// full RFC 3339 time in its datetime and title.
	"when": func(t time.Time) template.HTML {
		if t.IsZero() {
			return "never"
		}
		full := t.UTC().Format(time.RFC3339)
		return template.HTML(`<time datetime="` + full + `" title="` + full + `">` + t.UTC().Format("2006-01-02 15:04") + `</time>`)
	},
	"num": func(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) },
	"lat": func(l *api.Latency, which string) string {
		if l == nil {
			return "–"
		}
		switch which {
		case "p50":
			return strconv.FormatFloat(l.P50, 'f', 1, 64)
		case "p95":
			return strconv.FormatFloat(l.P95, 'f', 1, 64)
		}
		return strconv.FormatFloat(l.P99, 'f', 1, 64)
	},
	"path": url.PathEscape,
	// total sums a table-to-rows map.
	"total": func(m map[string]uint64) uint64 {
		var n uint64
		for _, v := range m {
			n += v
		}
		return n
	},
	// cents shows an amount in a currency's smallest unit as units.
	"cents": func(c int64) string {
		sign := ""
		if c < 0 {
			sign, c = "-", -c
		}
		return fmt.Sprintf("%s%d.%02d", sign, c/100, c%100)
	},
	// withRange is the page's URL with another preset range (base is a
	// path of ours, the query re-encoded).
	"withRange": func(base, query, r string) template.URL {
		q, _ := url.ParseQuery(query)
		q.Del("from")
		q.Del("to")
		q.Del("window")
		q.Set("range", r)
		return template.URL(base + "?" + q.Encode())
	},
}
