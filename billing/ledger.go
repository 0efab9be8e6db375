package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterline/meterline/internal/retry"
	"github.com/meterline/meterline/store"
)

// LedgerTable holds every report attempt and outcome (migration 0004).
const LedgerTable = "billing_ledger"

// Results recorded in the ledger.
const (
	resultPending      = "pending"      // about to be sent with this idempotency key
	resultAcknowledged = "acknowledged" // Stripe answered 2xx
	resultRetrying     = "retrying"     // no answer, 409, 429 or 5xx: open, attempted again
	resultFailed       = "failed"       // refused (4xx): not applied
	resultAbandoned    = "abandoned"    // open longer than Stripe's identifier window: never re-sent
	resultUnbillable   = "unbillable"   // usage Meterline will not report, with the reason
)

// stateOpen is a report sent (or about to be) without a final outcome.
const stateOpen = "open"

var ledgerColumns = []string{
	"customer_id", "stripe_customer_id", "mode", "target", "period_start", "window_start", "window_end",
	"quantity", "cumulative", "stripe_timestamp", "idempotency_key", "identifier", "stripe_object_id",
	"stripe_request_id", "http_status", "attempt", "result", "error", "attempted_at",
}

// report is one request to Stripe, identified by its identifier: a meter
// event (a window's correction bringing Stripe's total for the window to
// cumulative) or a usage record (the period-to-date total quantity set at
// stripeTimestamp). The fields after identifier summarise its ledger rows.
type report struct {
	customerID       string
	stripeCustomerID string
	mode             string
	target           string // meter event name or subscription item
	periodStart      time.Time
	windowStart      time.Time
	windowEnd        time.Time
	stripeTimestamp  time.Time
	quantity         decimal.Decimal
	cumulative       decimal.Decimal
	identifier       string

	key        string // idempotency key of the last row; "" for a new report
	lastResult string
	lastStatus int
	attempts   int // highest attempt recorded
	keys       int // distinct idempotency keys used
	firstAt    time.Time
	// openSince is the first pending row after the last refusal: since
	// then Stripe may hold the identifier (zero when never sent since).
	// For an uncertain meter event it is at the latest uncertainSince.
	openSince time.Time
	// uncertain: an attempt was answered with a 5xx, whose outcome Stripe
	// leaves indeterminate (it may have been applied), and no answer
	// since proved the identifier held (an acknowledgement, or a refusal
	// as a duplicate identifier, which is recorded as one). A later
	// refusal does not prove such a meter event unapplied, so it stays
	// open: re-sent under the same identifier, never replaced by another.
	uncertain      bool
	uncertainSince time.Time
	acked          bool
	abandoned      bool
	unbillable     bool
	requestID      string // Request-Id of the acknowledgement
	lastError      string
}

// state is acknowledged, unbillable, abandoned, failed or open.
func (r *report) state() string {
	switch {
	case r.acked:
		return resultAcknowledged
	case r.unbillable:
		return resultUnbillable
	case r.abandoned:
		return resultAbandoned
	case r.lastResult == resultFailed && !(r.mode == ModeMeterEvents && r.uncertain):
		return resultFailed
	default:
		return stateOpen
	}
}

// markUncertain records an answer whose outcome Stripe leaves
// indeterminate (a 5xx: some requests are applied before it).
func (r *report) markUncertain(at time.Time) {
	if !r.uncertain {
		r.uncertain, r.uncertainSince = true, at
	}
	if r.openSince.IsZero() || r.openSince.Unix() <= 0 || r.uncertainSince.Before(r.openSince) {
		r.openSince = r.uncertainSince
	}
}

// hashID is the first 40 hex digits of SHA-256 of the parts joined by
// "|", behind prefix: ids are deterministic (a restarted worker computes
// the same ones) and carry no customer id to Stripe.
func hashID(prefix string, parts ...string) string {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{'|'})
		}
		h.Write([]byte(p))
	}
	return prefix + hex.EncodeToString(h.Sum(nil))[:40]
}

// meterIdentifier identifies the meter event that brings Stripe's total
// of (customer, event name, window) to cumulative. Acknowledged totals of
// a window only grow, so a window never reuses an identifier for another
// value; a retry after a crash recomputes the same one.
func meterIdentifier(customer, eventName string, window time.Time, cumulative decimal.Decimal) string {
	return hashID("mlme_", ModeMeterEvents, customer, eventName, strconv.FormatInt(window.Unix(), 10), cumulative.String())
}

// usageIdentifier identifies the usage record that sets the
// period-to-date total of (customer, subscription item, period) at ts.
func usageIdentifier(customer, item string, period time.Time, total int64, ts time.Time) string {
	return hashID("mlur_", ModeUsageRecords, customer, item, strconv.FormatInt(period.Unix(), 10),
		strconv.FormatInt(total, 10), strconv.FormatInt(ts.Unix(), 10))
}

// unbillableIdentifier names an unbillable record of a window's usage.
func unbillableIdentifier(customer, eventName string, window time.Time, cumulative decimal.Decimal) string {
	return hashID("mlub_", ModeMeterEvents, customer, eventName, strconv.FormatInt(window.Unix(), 10), cumulative.String())
}

// idempotencyKey is the key of the gen-th request of a report. The key
// changes only after Stripe stored a result under the previous one that
// is not an acknowledgement (a 5xx, or a 4xx refusal), which Stripe would
// replay for the same key; the identifier (meter events: Stripe drops a
// repeated identifier; usage records: action=set) keeps a new key from
// billing twice.
func idempotencyKey(identifier string, gen int) string {
	return identifier + "-" + strconv.Itoa(gen)
}

// row is one ledger row of r.
func (r *report) row(key, result string, a answer, attempt int, errText string, at time.Time) []any {
	return []any{
		r.customerID, r.stripeCustomerID, r.mode, r.target, r.periodStart.UTC(), r.windowStart.UTC(), r.windowEnd.UTC(),
		r.quantity, r.cumulative, r.stripeTimestamp.UTC(), key, r.identifier, a.objectID,
		a.requestID, uint16(min(max(a.status, 0), 65535)), uint16(min(max(attempt, 0), 65535)), result,
		retry.CleanText(errText, maxErrorBytes), at.UTC(),
	}
}

// ledgerInsertTries bounds the attempts to append one ledger row.
const ledgerInsertTries = 3

// appendRows stores ledger rows, retrying briefly: a lost outcome row only
// makes the next run replay the request with the same key.
func appendRows(ctx context.Context, db store.Conn, rows ...[]any) error {
	var err error
	bo := retry.NewBackoff(100*time.Millisecond, time.Second)
	for try := range ledgerInsertTries {
		if err = db.Insert(ctx, LedgerTable, ledgerColumns, rows, store.InsertOptions{}); err == nil {
			return nil
		}
		if try < ledgerInsertTries-1 && !retry.Sleep(ctx, bo.Next()) {
			break
		}
	}
	return fmt.Errorf("billing: append to %s: %w", LedgerTable, err)
}

// readReportsSQL summarises the ledger per report. Rows of one report
// share every column up to identifier; the last row decides the state
// (an outcome row wins over a pending row written in the same millisecond).
const readReportsSQL = `SELECT customer_id, identifier,
    any(stripe_customer_id), any(mode), any(target), any(period_start), any(window_start), any(window_end),
    any(stripe_timestamp), toString(any(quantity)), toString(any(cumulative)),
    argMax(idempotency_key, (attempted_at, result != 'pending')),
    argMax(result, (attempted_at, result != 'pending')),
    argMax(http_status, (attempted_at, result != 'pending')),
    max(attempt), uniqExact(idempotency_key), min(attempted_at),
    max(result = 'acknowledged'), max(result = 'abandoned'), max(result = 'unbillable'),
    argMaxIf(stripe_request_id, attempted_at, result = 'acknowledged'),
    argMaxIf(error, attempted_at, error != ''),
    arrayMin(arrayFilter(x -> x > last_failed_at, groupArrayIf(attempted_at, result = 'pending'))) AS open_since,
    maxIf(attempted_at, result = 'failed') AS last_failed_at,
    max(result = 'retrying' AND http_status >= 500) AS uncertain,
    minIf(attempted_at, result = 'retrying' AND http_status >= 500) AS uncertain_since
FROM billing_ledger
WHERE customer_id IN {customers:Array(String)}
  AND window_start >= {from:DateTime('UTC')} AND window_start < {to:DateTime('UTC')}
GROUP BY customer_id, identifier
ORDER BY customer_id, any(window_start), min(attempted_at)`

// readReports returns the customers' reports with window_start in
// [from, to), per customer, oldest first.
func readReports(ctx context.Context, db store.Conn, customers []string, from, to time.Time) (map[string][]*report, error) {
	out := map[string][]*report{}
	if len(customers) == 0 {
		return out, nil
	}
	rows, err := db.Query(ctx, readReportsSQL, store.P("customers", customers), store.P("from", from.UTC().Truncate(time.Second)), store.P("to", to.UTC().Truncate(time.Second)))
	if err != nil {
		return nil, fmt.Errorf("billing: read ledger: %w", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		r := &report{}
		var qty, cum string
		var status, attempts, keys, acked, abandoned, unbillable, uncertain int64
		var uncertainSince time.Time
		if err := rows.Scan(&r.customerID, &r.identifier, &r.stripeCustomerID, &r.mode, &r.target, &r.periodStart,
			&r.windowStart, &r.windowEnd, &r.stripeTimestamp, &qty, &cum, &r.key, &r.lastResult, &status,
			&attempts, &keys, &r.firstAt, &acked, &abandoned, &unbillable, &r.requestID, &r.lastError, &r.openSince, new(time.Time),
			&uncertain, &uncertainSince); err != nil {
			return nil, fmt.Errorf("billing: read ledger: %w", err)
		}
		if r.quantity, err = decimal.NewFromString(qty); err != nil {
			return nil, fmt.Errorf("billing: read ledger: quantity %q: %w", qty, err)
		}
		if r.cumulative, err = decimal.NewFromString(cum); err != nil {
			return nil, fmt.Errorf("billing: read ledger: cumulative %q: %w", cum, err)
		}
		r.lastStatus, r.attempts, r.keys = int(status), int(attempts), int(keys)
		r.acked, r.abandoned, r.unbillable = acked != 0, abandoned != 0, unbillable != 0
		if uncertain != 0 && !r.acked {
			r.markUncertain(uncertainSince)
		}
		out[r.customerID] = append(out[r.customerID], r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("billing: read ledger: %w", err)
	}
	return out, nil
}

// windowUnitsSQL reads the units of settled windows per customer. Windows
// whose every row is a tombstone (requests = 0) are left out.
const windowUnitsSQL = `SELECT customer_id, window_start, toString(sum(units))
FROM %s FINAL
WHERE customer_id IN {customers:Array(String)}
  AND window_start >= {from:DateTime('UTC')} AND window_start < {to:DateTime('UTC')}
GROUP BY customer_id, window_start
HAVING sum(requests) > 0
ORDER BY customer_id, window_start`

// windowUnits returns units per customer and window start (Unix seconds)
// from table for windows starting in [from, to).
func windowUnits(ctx context.Context, db store.Conn, table string, customers []string, from, to time.Time) (map[string]map[int64]decimal.Decimal, error) {
	out := map[string]map[int64]decimal.Decimal{}
	if len(customers) == 0 || !to.After(from) {
		return out, nil
	}
	rows, err := db.Query(ctx, fmt.Sprintf(windowUnitsSQL, table), store.P("customers", customers), store.P("from", from.UTC().Truncate(time.Second)), store.P("to", to.UTC().Truncate(time.Second)))
	if err != nil {
		return nil, fmt.Errorf("billing: read rollups: %w", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var c, u string
		var ws time.Time
		if err := rows.Scan(&c, &ws, &u); err != nil {
			return nil, fmt.Errorf("billing: read rollups: %w", err)
		}
		d, err := decimal.NewFromString(u)
		if err != nil {
			return nil, fmt.Errorf("billing: read rollups: units %q: %w", u, err)
		}
		if out[c] == nil {
			out[c] = map[int64]decimal.Decimal{}
		}
		out[c][ws.Unix()] = d
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("billing: read rollups: %w", err)
	}
	return out, nil
}
