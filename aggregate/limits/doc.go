// Package limits holds plans and their limits: the key registry and plan
// catalogue (a YAML file, reloaded on change), the in-memory limits view
// that GET /v1/limits/{api_key_id} answers from, and usage alerts sent as
// signed webhooks when a customer crosses a threshold of its plan.
//
// # Registry
//
// The catalogue maps API keys to customers and customers to plans. It is
// validated as a whole (every problem reported at once) and swapped in
// atomically; WatchFile reloads it when the file changes and keeps the
// previous catalogue when the new file is invalid.
//
// # Limits view
//
// A gateway may ask for a key's limit on every request, so answers come
// from memory: View.Run recomputes every customer's usage in the current
// billing period (a calendar month, UTC) every Refresh, from the rollups,
// and publishes it as an immutable snapshot. View.Lookup reads the current
// catalogue and snapshot with no lock, no I/O and no allocation. Each
// answer says how old its figures are (AsOf, StalenessSeconds); beyond
// MaxStaleness, Lookup refuses with ErrStale rather than let a gateway
// enforce limits with figures from long ago.
//
// Usage is per customer: every key of a customer shares its plan's units.
//
// # Usage alerts
//
// After each refresh, for each customer with an alert_webhook and each
// threshold t of its plan, used >= t * included_units means a crossing.
// Each crossing is one alert, identified by DeliveryID(customer, period,
// threshold), and is delivered at most once per period as far as Meterline
// can know:
//
//   - before sending, the view checks ClickHouse (table alert_deliveries)
//     for a delivered attempt of that id, which survives restarts, and it
//     keeps the alerts it handled in memory, so refreshes cost no query
//     once a crossing is settled;
//   - if that check fails, nothing is sent in that refresh;
//   - a crash after the receiver answered 2xx and before the attempt was
//     recorded sends the alert again after the restart. The delivery id is
//     the same (in the Meterline-Delivery header and the body), so the
//     receiver drops the repeat. Receivers must deduplicate on it; no
//     webhook system can promise exactly once without the receiver.
//   - with several processes, one sends at a time (an AlertGate such as
//     ingest.Lease), and every attempt is fenced: the sender records a
//     claim with its lease generation (AlertFence) and reads the
//     delivery's rows back before sending, so two senders that overlap
//     never both send (docs/design.md lists what is and is not
//     guaranteed).
//
// Deliveries run in the background, one worker per customer (a customer's
// alerts arrive in threshold order; customers never wait for each other),
// at most 64 requests in flight. An attempt that fails with a network
// error, a timeout, 429 or 5xx is retried with exponential backoff and
// jitter (RetryMin to RetryMax, at least the receiver's Retry-After, capped
// at an hour), up to MaxAttempts. Redirects are not followed. A 3xx or a
// 4xx other than 429 is a permanent failure: the receiver refuses this
// request, and the same bytes would be refused again. A permanently failed
// (or exhausted) alert is not retried for the rest of the period by this
// process unless the customer's webhook URL changes in the catalogue; a
// restarted process tries it once more (the table remembers deliveries,
// not refusals, because a receiver that has been fixed should get its
// alert). Every attempt is recorded: attempt number, status code, outcome
// (delivered, retrying, failed) and error.
//
// The body is an AlertEvent in JSON; the same bytes on every attempt. The
// Meterline-Signature header is "t=<unix>,v1=<hex HMAC-SHA256(secret,
// "<unix>.<body>")>", as Stripe signs its webhooks; see VerifySignature for
// the receiver's steps.
//
// # Metrics
//
// meterline_limits_refresh_duration_seconds,
// meterline_limits_refresh_errors_total,
// meterline_limits_staleness_seconds,
// meterline_alerts_deliveries_total{outcome},
// meterline_alerts_sender, meterline_alerts_pending and
// meterline_registry_reloads_total{result}.
package limits
