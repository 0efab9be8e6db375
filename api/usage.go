package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/store"
)

// UsageReader is what the usage endpoint needs of the rollups.
type UsageReader interface {
	Usage(ctx context.Context, q aggregate.UsageQuery) ([]aggregate.UsageRow, error)
	Freshness(ctx context.Context) (time.Time, error)
}

var usageParams = []string{"customer_id", "api_key_id", "from", "to", "window", "group_by", "tz",
	"route", "method", "status_class", "gateway"}

// usageLists are the parameters that may be repeated and hold
// comma-separated lists: group_by and the filters.
var usageLists = []string{"group_by", "route", "method", "status_class", "gateway"}

// BadParams is the answer to a usage query with bad parameters: every one
// of them, each named, so that one 400 says all that must change.
type BadParams []*aggregate.ParamError

// Error lists every bad parameter.
func (b BadParams) Error() string {
	parts := make([]string, len(b))
	for i, pe := range b {
		parts[i] = fmt.Sprintf("parameter %q: %s", pe.Param, pe.Message)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return fmt.Sprintf("%d bad parameters: %s", len(parts), strings.Join(parts, "; "))
}

// Params names the bad parameters, in the order reported.
func (b BadParams) Params() []string {
	out := make([]string, len(b))
	for i, pe := range b {
		out[i] = pe.Param
	}
	return out
}

// add appends pe unless a problem of the same parameter is already there
// (a time that did not parse is not also "required").
func (b *BadParams) add(pe *aggregate.ParamError) {
	for _, x := range *b {
		if x.Param == pe.Param && x.Message == pe.Message {
			return
		}
	}
	*b = append(*b, pe)
}

// checkUsageParams reports every unknown and every wrongly repeated
// parameter.
func checkUsageParams(q url.Values, bad *BadParams) {
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		shown := name
		if len(shown) > 64 || !utf8.ValidString(shown) {
			shown = strconv.QuoteToASCII(shown[:min(len(shown), 64)]) + "..."
		}
		switch {
		case !slices.Contains(usageParams, name):
			bad.add(&aggregate.ParamError{Param: shown, Message: "unknown parameter (known: " + strings.Join(usageParams, ", ") + ")"})
		case len(q[name]) > 1 && !slices.Contains(usageLists, name):
			bad.add(&aggregate.ParamError{Param: name, Message: fmt.Sprintf("given %d times", len(q[name]))})
		}
	}
}

// parseTime reads an RFC 3339 time of parameter param. A "+01:00" that
// arrived as " 01:00" was an unencoded '+' (a space in a URL query): the
// message says to encode it.
func parseTime(param, s string, bad *BadParams) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err == nil {
		return t
	}
	shown := s
	if len(shown) > 64 {
		shown = shown[:64] + "..."
	}
	msg := fmt.Sprintf("%q is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)", shown)
	if strings.Contains(s, " ") {
		if _, err := time.Parse(time.RFC3339Nano, strings.Replace(s, " ", "+", 1)); err == nil {
			msg = fmt.Sprintf("%q is not an RFC 3339 time: a '+' in a URL query reads as a space, so encode it as %%2B (%s)",
				shown, strings.Replace(url.QueryEscape(strings.Replace(s, " ", "+", 1)), "%3A", ":", -1))
		}
	}
	bad.add(&aggregate.ParamError{Param: param, Message: msg})
	return time.Time{}
}

// splitList reads a repeatable, comma-separated parameter; empty items
// are skipped.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, x := range strings.Split(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
	}
	return out
}

// UsageResponse is the JSON answer of GET /v1/usage.
type UsageResponse struct {
	CustomerID string     `json:"customer_id,omitempty"`
	APIKeyID   string     `json:"api_key_id,omitempty"`
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
	Window     string     `json:"window"`
	TZ         string     `json:"tz"`
	GroupBy    []string   `json:"group_by"`
	Freshness  time.Time  `json:"rollups_fresh_until"`
	Rows       []UsageRow `json:"rows"`
}

// UsageRow is one window (and group) of usage.
type UsageRow struct {
	WindowStart       time.Time         `json:"window_start"`
	Group             map[string]string `json:"group,omitempty"`
	Requests          uint64            `json:"requests"`
	ClientErrors      uint64            `json:"client_errors"`
	ServerErrors      uint64            `json:"server_errors"`
	Units             json.Number       `json:"units"`
	RequestBytes      uint64            `json:"request_bytes"`
	ResponseBytes     uint64            `json:"response_bytes"`
	LatencyMS         *Latency          `json:"latency_ms"` // null when no event of the window carried a latency
	DistinctClientIPs uint64            `json:"distinct_client_ips"`
}

// Latency holds the latency percentiles of a window, in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// NewUsageHandler serves GET /v1/usage.
//
// Parameters: customer_id and/or api_key_id (admin and finance tokens may
// omit both: every customer); from (RFC 3339, required); to (RFC 3339,
// default now); window (minute, hour, day, month, or total for one row per
// group over the whole range; default hour); group_by (comma-separated or
// repeated: api_key_id, route, method, status_class, gateway, customer_id);
// the filters route, method, status_class and gateway (comma-separated or
// repeated values, any of which matches); tz (IANA zone for day and month
// windows; default UTC). `Accept: text/csv` answers CSV.
func NewUsageHandler(r UsageReader, tokens *auth.Tokens) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		p, ok := httpx.Authenticate(w, req, tokens, auth.ScopeAdmin, auth.ScopeFinance, auth.ScopeCustomer)
		if !ok {
			return
		}
		uq, code, err := parseUsage(req, p, time.Now())
		if err != nil {
			httpx.WriteError(w, code, err.Error())
			return
		}
		resp, err := ReadUsage(req.Context(), r, uq)
		if err != nil {
			writeQueryError(w, err)
			return
		}
		if wantsCSV(req) {
			writeUsageCSV(w, resp)
			return
		}
		httpx.WriteJSON(w, resp)
	})
}

// parseUsage turns the request into a query the principal may run. Bad
// parameters, all of them, are one BadParams (400); a customer the
// principal may not read is a 403, reported when the parameters are good.
func parseUsage(req *http.Request, p auth.Principal, now time.Time) (aggregate.UsageQuery, int, error) {
	q := req.URL.Query()
	var bad BadParams
	checkUsageParams(q, &bad)
	uq := aggregate.UsageQuery{
		CustomerID: q.Get("customer_id"),
		APIKeyID:   q.Get("api_key_id"),
		Window:     aggregate.Window(q.Get("window")),
		GroupBy:    splitList(q["group_by"]),
		TZ:         time.UTC,
	}
	if uq.Window == "" {
		uq.Window = aggregate.WindowHour
	}
	for _, dim := range usageLists[1:] {
		if vals := splitList(q[dim]); len(vals) > 0 {
			if uq.Filters == nil {
				uq.Filters = map[string][]string{}
			}
			uq.Filters[dim] = vals
		}
	}
	if s := q.Get("from"); s == "" {
		bad.add(&aggregate.ParamError{Param: "from", Message: "required (RFC 3339, e.g. 2026-11-01T00:00:00Z)"})
	} else {
		uq.From = parseTime("from", s, &bad)
	}
	uq.To = now
	if s := q.Get("to"); s != "" {
		uq.To = parseTime("to", s, &bad)
	}
	if s := q.Get("tz"); s != "" {
		loc, err := aggregate.ParseTZ(s)
		var pe *aggregate.ParamError
		if errors.As(err, &pe) {
			bad.add(&aggregate.ParamError{Param: "tz", Message: pe.Message + " (name an IANA zone, e.g. Europe/Berlin)"})
		} else {
			uq.TZ = loc
		}
	}
	// A customer-scoped token reads its own customer only; admin and
	// finance tokens without customer_id and api_key_id read every
	// customer.
	var forbidden error
	if !p.Has(auth.ScopeAdmin) && !p.Has(auth.ScopeFinance) {
		own := p.Customers()
		switch {
		case uq.CustomerID != "" && !p.CanReadCustomer(uq.CustomerID):
			forbidden = fmt.Errorf("token %q may not read customer %q", p.Name, uq.CustomerID)
		case uq.CustomerID == "" && len(own) == 1:
			uq.CustomerID = own[0]
		case uq.CustomerID == "":
			bad.add(&aggregate.ParamError{Param: "customer_id", Message: "required with a token scoped to several customers"})
		}
	} else if uq.CustomerID == "" && uq.APIKeyID == "" {
		uq.AllCustomers = true
	}
	reported := map[string]bool{}
	for _, pe := range bad {
		reported[pe.Param] = true
	}
	for _, pe := range paramErrors(uq.Validate()) {
		if (pe.Param == "from" || pe.Param == "to") && (reported["from"] || reported["to"]) {
			continue // the range cannot be judged without both times
		}
		if pe.Param == "customer_id" && uq.CustomerID == "" && reported["customer_id"] {
			continue
		}
		if pe.Param == "tz" && reported["tz"] {
			continue
		}
		bad.add(pe)
	}
	if len(bad) > 0 {
		return uq, http.StatusBadRequest, bad
	}
	if forbidden != nil {
		return uq, http.StatusForbidden, forbidden
	}
	return uq, 0, nil
}

// paramErrors returns the *aggregate.ParamError values joined in err.
func paramErrors(err error) []*aggregate.ParamError {
	var out []*aggregate.ParamError
	var walk func(error)
	walk = func(e error) {
		if pe, ok := e.(*aggregate.ParamError); ok {
			out = append(out, pe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if pe := (*aggregate.ParamError)(nil); errors.As(e, &pe) {
			out = append(out, pe)
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

func wantsCSV(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(mt, "text/csv") {
			return true
		}
	}
	return false
}

func writeUsageCSV(w http.ResponseWriter, resp UsageResponse) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="usage.csv"`)
	cw := csv.NewWriter(w)
	head := append([]string{"window_start"}, resp.GroupBy...)
	head = append(head, "requests", "client_errors", "server_errors", "units", "request_bytes", "response_bytes",
		"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "distinct_client_ips")
	_ = cw.Write(head)
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	f := func(l *Latency, q func(*Latency) float64) string {
		if l == nil {
			return "" // no event of the window carried a latency
		}
		return strconv.FormatFloat(q(l), 'f', -1, 64)
	}
	p50, p95, p99 := func(l *Latency) float64 { return l.P50 }, func(l *Latency) float64 { return l.P95 }, func(l *Latency) float64 { return l.P99 }
	for _, r := range resp.Rows {
		rec := []string{r.WindowStart.Format(time.RFC3339)}
		for _, g := range resp.GroupBy {
			rec = append(rec, csvSafe(r.Group[g]))
		}
		rec = append(rec, u(r.Requests), u(r.ClientErrors), u(r.ServerErrors), r.Units.String(), u(r.RequestBytes), u(r.ResponseBytes),
			f(r.LatencyMS, p50), f(r.LatencyMS, p95), f(r.LatencyMS, p99), u(r.DistinctClientIPs))
		_ = cw.Write(rec)
	}
	cw.Flush()
}

// csvSafe keeps a value from being read as a formula by spreadsheets
// (routes and gateway names come from gateways, not from us).
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func writeQueryError(w http.ResponseWriter, err error) {
	if writeStoreLimit(w, err) {
		return
	}
	var pe *aggregate.ParamError
	switch {
	case errors.As(err, &pe):
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		w.Header().Set("Retry-After", "5")
		httpx.WriteError(w, http.StatusServiceUnavailable, "usage store unavailable: "+err.Error())
	default:
		httpx.WriteError(w, http.StatusInternalServerError, "reading usage: "+err.Error())
	}
}
