package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/schemas"
	"github.com/meterline/meterline/store"
)

// storedQuery reads stored events back, deduplicated (FINAL), newest first.
// An empty filter parameter matches everything; at least one is required.
const storedQuery = `SELECT id, time, api_key_id, customer_id, gateway, method, route, status,
       ifNull(latency_ms, 0), ifNull(request_bytes, 0), ifNull(response_bytes, 0), client_ip, user_agent, toFloat64(units), properties,
       isNull(latency_ms), isNull(request_bytes), isNull(response_bytes)
FROM events FINAL
WHERE ({api_key_id:String} = '' OR api_key_id = {api_key_id:String})
  AND ({customer_id:String} = '' OR customer_id = {customer_id:String})
  AND ({id:String} = '' OR id = {id:String})
ORDER BY time DESC, id
LIMIT {limit:UInt32}`

// absentMeasures marks the measurements stored as NULL: the canonical JSON
// of a stored event leaves them out, as the event that carried none did.
func absentMeasures(latency, requestBytes, responseBytes bool) schemas.Measures {
	var a schemas.Measures
	if latency {
		a |= schemas.MeasureLatency
	}
	if requestBytes {
		a |= schemas.MeasureRequestBytes
	}
	if responseBytes {
		a |= schemas.MeasureResponseBytes
	}
	return a
}

// NewStoredHandler serves GET /v1/events/stored: the raw events stored for a
// key, a customer or an id, newest first, as they are in ClickHouse (after
// anonymisation); a measurement the event did not carry (stored as NULL) is
// left out of it. It lets an operator check that a gateway's events arrive;
// it needs the admin scope because it shows single requests.
//
// Parameters: api_key_id, customer_id, id (at least one), limit (1-1000,
// default 100).
func NewStoredHandler(db store.Conn, tokens *auth.Tokens) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		if _, ok := httpx.Authenticate(w, r, tokens, auth.ScopeAdmin); !ok {
			return
		}
		q := r.URL.Query()
		if err := httpx.CheckParams(q, []string{"api_key_id", "customer_id", "id", "limit"}); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		key, cust, id := q.Get("api_key_id"), q.Get("customer_id"), q.Get("id")
		if key == "" && cust == "" && id == "" {
			httpx.WriteError(w, http.StatusBadRequest, "give at least one of api_key_id, customer_id, id")
			return
		}
		for name, v := range map[string]string{"api_key_id": key, "customer_id": cust, "id": id} {
			if len(v) > 128 {
				httpx.WriteError(w, http.StatusBadRequest, fmt.Sprintf("parameter %q: longer than 128 bytes", name))
				return
			}
		}
		limit := 100
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 1000 {
				httpx.WriteError(w, http.StatusBadRequest, fmt.Sprintf("parameter \"limit\": %q is not an integer from 1 to 1000", s))
				return
			}
			limit = n
		}
		rows, err := db.Query(r.Context(), storedQuery,
			store.P("api_key_id", key), store.P("customer_id", cust), store.P("id", id), store.P("limit", uint64(limit)))
		if err != nil {
			if !writeStoreLimit(w, err) {
				httpx.WriteError(w, http.StatusServiceUnavailable, "reading events: "+err.Error())
			}
			return
		}
		defer rows.Close()
		out := struct {
			Events []json.RawMessage `json:"events"`
		}{Events: []json.RawMessage{}}
		for rows.Next() {
			var e schemas.Event
			var status uint16
			var noLatency, noRequestBytes, noResponseBytes bool
			if err := rows.Scan(&e.ID, &e.Time, &e.APIKeyID, &e.CustomerID, &e.Gateway, &e.Method, &e.Route, &status,
				&e.LatencyMS, &e.RequestBytes, &e.ResponseBytes, &e.ClientIP, &e.UserAgent, &e.Units, &e.Properties,
				&noLatency, &noRequestBytes, &noResponseBytes); err != nil {
				httpx.WriteError(w, http.StatusInternalServerError, "reading events: "+err.Error())
				return
			}
			e.Status = int(status)
			e.Absent = absentMeasures(noLatency, noRequestBytes, noResponseBytes)
			out.Events = append(out.Events, e.AppendJSON(nil))
		}
		if err := rows.Err(); err != nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, "reading events: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}
