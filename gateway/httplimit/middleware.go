package httplimit

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/meterline/meterline/gateway/httpmeter"
)

// PropertyRejected is the event property that names why the middleware
// refused a request: rate_limit:<per> (rate_limit:1s), hard_limit,
// key_disabled, key_expired, key_not_yet_valid, key_unknown or
// limits_unavailable.
const PropertyRejected = "rejected"

// errorBody is the JSON of a refusal.
type errorBody struct {
	Error             string `json:"error"`
	Reason            string `json:"reason"`
	RetryAfterSeconds int64  `json:"retry_after_seconds,omitempty"`
}

// Middleware returns next behind the limits. A request whose key is
// refused is answered here: 429 over a rate limit or the hard limit
// (Retry-After, and for rate limits the RateLimit-Policy and RateLimit
// headers of the IETF draft), 403 for a key that is disabled, expired or
// not yet valid (or unknown, with DenyUnknown), 503 while the states are
// stale and FailMode is FailClosed. A passed request of a key with rate
// limits carries RateLimit-Policy and RateLimit too.
//
// Put it inside the meter, meter.Middleware(limiter.Middleware(mux)), so
// that refused requests are metered as well: each carries the event
// property "rejected" with the reason, and 0 units unless the plan bills
// refused requests (bill_rejected).
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := l.cfg.KeyFunc(r)
		if key == "" {
			next.ServeHTTP(w, r)
			return
		}
		now := l.cfg.now()
		s := l.cur.Load()
		fresh := s != nil && now.Sub(s.asOf) <= l.cfg.MaxStaleness
		if !fresh && l.cfg.FailMode == FailClosed {
			l.refuse(w, nil, http.StatusServiceUnavailable, decUnavailable, "limits_unavailable",
				"usage limits cannot be checked now", int64(l.cfg.PollInterval/time.Second)+1)
			return
		}
		var st *keyState
		if s != nil {
			st = s.keys[key]
		}
		if st == nil {
			if fresh && l.cfg.UnknownKeys == DenyUnknown {
				l.refuse(w, nil, http.StatusForbidden, decForbidden, "key_unknown", "unknown API key", 0)
				return
			}
			l.decisions[decAllowed].Add(1)
			next.ServeHTTP(w, r)
			return
		}
		if status := st.statusAt(now); status != "active" {
			msg := map[string]string{"disabled": "this API key is disabled", "expired": "this API key has expired",
				"not_yet_valid": "this API key is not valid yet"}[status]
			l.refuse(w, st, http.StatusForbidden, decForbidden, "key_"+status, msg, 0)
			return
		}
		if st.overHard {
			y, m, _ := now.UTC().Date()
			reset := time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
			l.refuse(w, st, http.StatusTooManyRequests, decHardLimited, "hard_limit",
				"the plan's monthly limit is reached", ceilSeconds(int64(reset.Sub(now))))
			return
		}
		if len(st.limits) > 0 {
			v := l.wins.take(key, st.limits, now)
			h := w.Header()
			// The policy's slice is shared by every request of the key;
			// its capacity is its length, so an Add copies it.
			h["Ratelimit-Policy"] = st.policy
			rl := &st.limits[v.limit]
			h["Ratelimit"] = []string{rateLimitHeader(rl, v)}
			if !v.allowed {
				l.refuse(w, st, http.StatusTooManyRequests, decRateLimited, rl.reason,
					"rate limit of "+strconv.FormatInt(rl.requests, 10)+" requests per "+rl.name+" exceeded", v.reset)
				return
			}
		}
		l.decisions[decAllowed].Add(1)
		next.ServeHTTP(w, r)
	})
}

// rateLimitHeader writes the RateLimit value: "1s";r=<remaining>;t=<reset>.
func rateLimitHeader(rl *rateLimit, v verdict) string {
	var buf [64]byte
	b := append(buf[:0], rl.quoted...)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, v.remaining, 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, v.reset, 10)
	return string(b)
}

// refuse answers a refused request and marks its event.
func (l *Limiter) refuse(w http.ResponseWriter, st *keyState, code, decision int, reason, msg string, retryAfter int64) {
	l.decisions[decision].Add(1)
	httpmeter.SetProperty(w, PropertyRejected, reason)
	if st == nil || !st.billRejected {
		httpmeter.SetUnits(w, 0)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(retryAfter, 10))
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg, Reason: reason, RetryAfterSeconds: retryAfter})
}
