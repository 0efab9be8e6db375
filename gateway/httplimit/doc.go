// Package httplimit enforces Meterline's plan limits in a Go net/http
// service, in front of its handlers: per-key rate limits (sliding windows in
// memory), the plan's monthly hard limit, and the key's status (disabled,
// expired, not yet valid), from a copy of GET /v1/limits that a goroutine
// refreshes every Config.PollInterval with only the changes since the last
// fetch.
//
//	lim, err := httplimit.New(httplimit.Config{
//		Endpoint: "https://meterline.internal:8080",
//		Token:    os.Getenv("METERLINE_INGEST_TOKEN"),
//		KeyFunc:  func(r *http.Request) string { return r.Header.Get("X-Api-Key-Id") },
//	})
//	...
//	http.ListenAndServe(":8081", meter.Middleware(lim.Middleware(mux)))
//
// Refusals: 429 over a rate limit (Retry-After, RateLimit-Policy and
// RateLimit as draft-ietf-httpapi-ratelimit-headers writes them:
// `RateLimit-Policy: "1s";q=20;w=1, "1m";q=600;w=60` and
// `RateLimit: "1s";r=0;t=1`) or over the hard limit (Retry-After until the
// next period, the first of the next month UTC); 403 for a key that is not
// active; a JSON body {"error", "reason", "retry_after_seconds"}. Inside a
// httpmeter.Meter, a refused request is still metered: its event has the
// property "rejected" (the reason) and 0 units, unless its plan bills
// refused requests.
//
// Rate limits count per key, in this process: several replicas of a service
// each allow the full rate (divide the plan's figures, or route a key to one
// replica). A refused request does not count against the windows. Memory is
// bounded by Config.MaxKeys keys.
//
// Staleness: a key's status, plan and rate limits reach the middleware at
// most limits.refresh (Meterline's, 5s) plus PollInterval (5s) after the
// catalogue reload; a customer reaching its hard limit, at most the rollup's
// delay (aggregate.interval plus aggregate.settle) plus limits.refresh plus
// PollInterval after its last request. When the copy is older than
// Config.MaxStaleness (1m), FailMode decides: FailOpen (default) keeps the
// last states and passes keys it does not know, FailClosed answers 503.
//
// Metrics (on Config.Registerer): meterline_gateway_requests_total{decision},
// meterline_gateway_limits_fetches_total{result},
// meterline_gateway_limits_staleness_seconds, meterline_gateway_limits_keys,
// meterline_gateway_rate_windows and
// meterline_gateway_rate_windows_evicted_total.
package httplimit
