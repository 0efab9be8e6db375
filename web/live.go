package web

import (
	"net/http"
	"slices"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/api"
	"github.com/meterline/meterline/internal/httpx"
)

// liveAnswer is the JSON of GET /ui/customers/{customer}[/keys/{key}]/live.json:
// what a page in live mode redraws. Usage is GET /v1/usage's answer for the
// page's range grouped by status_class, Limit GET /v1/limits' for the key
// (or the customer's first key).
type liveAnswer struct {
	Usage api.UsageResponse `json:"usage"`
	// Totals sum Usage's rows as the page's cards do.
	Totals struct {
		Requests     uint64  `json:"requests"`
		ClientErrors uint64  `json:"client_errors"`
		ServerErrors uint64  `json:"server_errors"`
		Units        float64 `json:"units"`
		ErrorRate    string  `json:"error_rate"`
	} `json:"totals"`
	Limit      *limits.Limit `json:"limit"`
	LimitError string        `json:"limit_error,omitempty"`
	At         time.Time     `json:"at"`
}

// liveData serves live.json: the page's parameters (as the page takes
// them; group_by, when given, must be status_class), the session's scope
// (another customer's data is "not found"), read-limited as every page.
func (s *Server) liveData(w http.ResponseWriter, r *http.Request) {
	ss, t, ok := s.resolve(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	if gb := q["group_by"]; len(gb) == 1 && gb[0] != "" && gb[0] != "status_class" {
		httpx.WriteError(w, http.StatusBadRequest, `"group_by": live data is grouped by status_class`)
		return
	}
	if _, err := liveParam(q); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	v, params, err := readView(q, s.d.Now(), pageParamsOf(t))
	if err != nil {
		httpx.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if k := v.Filters["api_key_id"]; k != "" && !slices.Contains(s.keys(t.Customer), k) {
		httpx.WriteError(w, http.StatusNotFound, "no such API key for this customer")
		return
	}
	params.Set("group_by", "status_class")
	r, release, ok := s.reading(w, r, ss.principal)
	if !ok {
		return
	}
	defer release()
	resp, code, err := s.usage(r.Context(), ss.principal, t, params)
	if err != nil {
		httpx.WriteError(w, code, err.Error())
		return
	}
	var out liveAnswer
	out.Usage = resp
	tt := sum(resp.Rows)
	out.Totals.Requests, out.Totals.ClientErrors, out.Totals.ServerErrors = tt.Requests, tt.ClientErrors, tt.ServerErrors
	out.Totals.Units, out.Totals.ErrorRate = tt.Units, tt.ErrorRate()
	out.Limit, out.LimitError = s.plan(t)
	out.At = s.d.Now().UTC()
	httpx.WriteJSON(w, out)
}
