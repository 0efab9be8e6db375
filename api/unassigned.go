package api

import (
	"encoding/json"
	"net/http"

	"github.com/meterline/meterline/aggregate"
	"github.com/meterline/meterline/auth"
	"github.com/meterline/meterline/internal/httpx"
	"github.com/meterline/meterline/store"
)

// NewUnassignedHandler serves GET /v1/admin/unassigned (admin): the API
// keys with events stored without a customer, because the catalogue gave
// the key to nobody at the event's time (events.unknown_keys: accept).
// Such usage is never billed; it is attributed once the catalogue gives
// the key to a customer.
func NewUnassignedHandler(db store.Conn, tokens *auth.Tokens) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			httpx.MethodNotAllowed(w, http.MethodGet)
			return
		}
		if _, ok := httpx.Authenticate(w, r, tokens, auth.ScopeAdmin); !ok {
			return
		}
		if err := httpx.CheckParams(r.URL.Query(), nil); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
		keys, err := aggregate.UnassignedKeys(r.Context(), db)
		if err != nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Keys []aggregate.UnassignedKey `json:"keys"`
		}{keys})
	})
}
