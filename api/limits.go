package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/meterline/meterline/aggregate/limits"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
)

// LimitResponse is the JSON answer of GET /v1/limits/{api_key_id}: the
// view's Limit as it is.
type LimitResponse = limits.Limit

// LimitLooker answers limits from memory.
type LimitLooker interface {
	Lookup(apiKeyID string, now time.Time) (limits.Limit, error)
}

// NewLimitsHandler serves GET /v1/limits/{api_key_id} from the in-memory
// limits view: no I/O per request, so gateways may call it per request.
// Gateways (ingest scope), admin and finance read any key; a customer token
// only its own keys (others answer 404, as unknown keys do, so keys cannot
// be enumerated). A view older than its bound answers 503.
func NewLimitsHandler(v LimitLooker, tokens *auth.Tokens) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		p, ok := httpx.Authenticate(w, r, tokens, auth.ScopeIngest, auth.ScopeAdmin, auth.ScopeFinance, auth.ScopeCustomer)
		if !ok {
			return
		}
		if len(r.URL.RawQuery) > 0 {
			httpx.WriteError(w, http.StatusBadRequest, "this endpoint takes no query parameters")
			return
		}
		key := r.PathValue("api_key_id")
		if key == "" || len(key) > 128 {
			httpx.WriteError(w, http.StatusBadRequest, `path parameter "api_key_id": must be 1-128 bytes`)
			return
		}
		l, err := v.Lookup(key, time.Now())
		switch {
		case errors.Is(err, limits.ErrUnknownKey):
			httpx.WriteError(w, http.StatusNotFound, "unknown api key")
			return
		case errors.Is(err, limits.ErrStale):
			w.Header().Set("Retry-After", "5")
			httpx.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		case err != nil:
			httpx.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		if !p.HasAny(auth.ScopeIngest) && !p.CanReadCustomer(l.CustomerID) {
			httpx.WriteError(w, http.StatusNotFound, "unknown api key")
			return
		}
		w.Header().Set("X-Meterline-Staleness-Seconds", strconv.FormatFloat(l.StalenessSeconds, 'f', 3, 64))
		httpx.WriteJSON(w, l)
	})
}
