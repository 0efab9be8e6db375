package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
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

// LimitChanges answers the bulk limits from memory.
type LimitChanges interface {
	Changes(since string, limit int, see func(customerID string) bool, now time.Time) (limits.ChangesPage, error)
}

// Page sizes of GET /v1/limits.
const (
	DefaultLimitChanges = 1000
	MaxLimitChanges     = 10000
)

// NewLimitChangesHandler serves GET /v1/limits?since=VERSION&limit=N: every
// key's limit state changed since an earlier answer's version, oldest
// change first, at most limit (default 1000, at most 10000) per answer,
// with the version to ask from next and more=true when the page was cut.
// A gateway with many keys polls this instead of asking per key. Scopes
// as for GET /v1/limits/{api_key_id}: ingest, admin and finance see every
// key, a customer token its own keys only.
func NewLimitChangesHandler(v LimitChanges, tokens *auth.Tokens) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		p, ok := httpx.Authenticate(w, r, tokens, auth.ScopeIngest, auth.ScopeAdmin, auth.ScopeFinance, auth.ScopeCustomer)
		if !ok {
			return
		}
		if len(r.URL.RawQuery) > 1024 {
			httpx.WriteError(w, http.StatusBadRequest, "query string longer than 1024 bytes")
			return
		}
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			httpx.WriteError(w, http.StatusBadRequest, "query string: "+err.Error())
			return
		}
		if err := httpx.CheckParams(q, []string{"since", "limit"}); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		n := DefaultLimitChanges
		if s := q.Get("limit"); s != "" {
			n, err = strconv.Atoi(s)
			if err != nil || n < 1 || n > MaxLimitChanges {
				httpx.WriteError(w, http.StatusBadRequest, fmt.Sprintf(`parameter "limit": %q is not a whole number in 1-%d`, truncate(s, 32), MaxLimitChanges))
				return
			}
		}
		var see func(string) bool
		if !p.HasAny(auth.ScopeIngest) {
			see = p.CanReadCustomer
		}
		page, err := v.Changes(q.Get("since"), n, see, time.Now())
		switch {
		case errors.Is(err, limits.ErrBadVersion):
			httpx.WriteError(w, http.StatusBadRequest, `parameter "since": `+err.Error())
			return
		case errors.Is(err, limits.ErrStale):
			w.Header().Set("Retry-After", "5")
			httpx.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		case err != nil:
			httpx.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("X-Meterline-Staleness-Seconds", strconv.FormatFloat(page.StalenessSeconds, 'f', 3, 64))
		httpx.WriteJSON(w, page)
	})
}

// truncate cuts s for an error text.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
