// Package httpx holds the small HTTP conventions every Meterline endpoint
// shares: JSON error bodies, bearer authentication with scopes, and strict
// query-parameter parsing.
package httpx

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/meterline/meterline/auth"
)

// ErrorBody is the body of every 4xx and 5xx answer of the API.
type ErrorBody struct {
	Error string `json:"error"`
}

// WriteError writes a JSON error answer.
func WriteError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(ErrorBody{Error: msg})
}

// MethodNotAllowed answers 405 with the Allow header listing allow.
func MethodNotAllowed(w http.ResponseWriter, allow ...string) {
	w.Header().Set("Allow", strings.Join(allow, ", "))
	WriteError(w, http.StatusMethodNotAllowed, "use "+strings.Join(allow, " or "))
}

// WriteJSON writes v as a 200 JSON answer.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// Authenticate checks the bearer token and that it carries one of scopes.
// It writes the 401/403 answer itself and reports whether to go on.
func Authenticate(w http.ResponseWriter, r *http.Request, tokens *auth.Tokens, scopes ...auth.Scope) (auth.Principal, bool) {
	p, err := tokens.Authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meterline"`)
		WriteError(w, http.StatusUnauthorized, err.Error())
		return p, false
	}
	if p.HasAny(scopes...) {
		return p, true
	}
	names := make([]string, len(scopes))
	for i, s := range scopes {
		names[i] = string(s)
		if s == auth.ScopeCustomer {
			names[i] = "customer:<id>"
		}
	}
	WriteError(w, http.StatusForbidden, fmt.Sprintf("token %q lacks a scope for this endpoint (one of: %s)", p.Name, strings.Join(names, ", ")))
	return p, false
}

// CheckParams rejects parameters that are not in known, and repeated
// parameters other than those in repeatable; the error names the parameter.
func CheckParams(q url.Values, known []string, repeatable ...string) error {
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !slices.Contains(known, name) {
			return fmt.Errorf("unknown parameter %q (known: %s)", name, strings.Join(known, ", "))
		}
		if len(q[name]) > 1 && !slices.Contains(repeatable, name) {
			return fmt.Errorf("parameter %q given %d times", name, len(q[name]))
		}
	}
	return nil
}
