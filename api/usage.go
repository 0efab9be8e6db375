package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

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

var usageParams = []string{"customer_id", "api_key_id", "from", "to", "window", "group_by", "tz"}

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
// Parameters: customer_id and/or api_key_id; from (RFC 3339, required); to
// (RFC 3339, default now); window (minute, hour, day, month; default hour);
// group_by (comma-separated or repeated: api_key_id, route, method,
// status_class, gateway); tz (IANA zone for day and month windows; default
// UTC). `Accept: text/csv` answers CSV.
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

// parseUsage turns the request into a query the principal may run.
func parseUsage(req *http.Request, p auth.Principal, now time.Time) (aggregate.UsageQuery, int, error) {
	q := req.URL.Query()
	if err := httpx.CheckParams(q, usageParams, "group_by"); err != nil {
		return aggregate.UsageQuery{}, http.StatusBadRequest, err
	}
	uq := aggregate.UsageQuery{
		CustomerID: q.Get("customer_id"),
		APIKeyID:   q.Get("api_key_id"),
		Window:     aggregate.Window(q.Get("window")),
		TZ:         time.UTC,
	}
	if uq.Window == "" {
		uq.Window = "hour"
	}
	for _, v := range q["group_by"] {
		for _, g := range strings.Split(v, ",") {
			if g = strings.TrimSpace(g); g != "" {
				uq.GroupBy = append(uq.GroupBy, g)
			}
		}
	}
	var errs []error
	var err error
	if s := q.Get("from"); s == "" {
		errs = append(errs, errors.New(`parameter "from": required (RFC 3339, e.g. 2026-11-01T00:00:00Z)`))
	} else if uq.From, err = time.Parse(time.RFC3339Nano, s); err != nil {
		errs = append(errs, fmt.Errorf(`parameter "from": %q is not an RFC 3339 time`, s))
	}
	uq.To = now
	if s := q.Get("to"); s != "" {
		if uq.To, err = time.Parse(time.RFC3339Nano, s); err != nil {
			errs = append(errs, fmt.Errorf(`parameter "to": %q is not an RFC 3339 time`, s))
		}
	}
	if s := q.Get("tz"); s != "" {
		loc, err := time.LoadLocation(s)
		if err != nil || s == "Local" || len(s) > 64 {
			errs = append(errs, fmt.Errorf(`parameter "tz": %q is not an IANA time zone name (e.g. Europe/Berlin)`, s))
		} else {
			uq.TZ = loc
		}
	}
	if err := errors.Join(errs...); err != nil {
		return uq, http.StatusBadRequest, err
	}
	// A customer-scoped token reads its own customer only.
	if !p.Has(auth.ScopeAdmin) && !p.Has(auth.ScopeFinance) {
		own := p.Customers()
		switch {
		case uq.CustomerID != "" && !p.CanReadCustomer(uq.CustomerID):
			return uq, http.StatusForbidden, fmt.Errorf("token %q may not read customer %q", p.Name, uq.CustomerID)
		case uq.CustomerID == "" && len(own) == 1:
			uq.CustomerID = own[0]
		case uq.CustomerID == "":
			return uq, http.StatusBadRequest, fmt.Errorf(`parameter "customer_id": required with a token scoped to several customers`)
		}
	}
	if uq.CustomerID == "" && uq.APIKeyID == "" {
		return uq, http.StatusBadRequest, errors.New(`give parameter "customer_id" or "api_key_id"`)
	}
	if err := uq.Validate(); err != nil {
		return uq, http.StatusBadRequest, err
	}
	return uq, 0, nil
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
