package aggregate

// Table names. The schema is schemas/sql/0002_rollups.sql.
const (
	eventsTable   = "events"
	watermarkName = "watermark"
)

// rollupColumns are the columns of every rollup table, in insert order.
const rollupColumns = `customer_id, api_key_id, window_start, route, method, status_class, gateway,
    requests, client_errors, server_errors, units, request_bytes, response_bytes,
    latency_state, client_ips_state, computed_at`

// statusClassExpr turns a raw status into '1xx' ... '5xx'.
const statusClassExpr = `concat(toString(intDiv(status, 100)), 'xx')`

// latencyQuantiles are the levels of every latency state; the state type
// AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64) names them,
// so they cannot change without a migration.
const latencyQuantiles = `0.5, 0.95, 0.99`

// dirtyRows selects the raw rows a tick slice looks at: ingested in
// (lo, hi], with event times in [from, to) (whole UTC days), and in part
// part of mod of the (customer, key) hash space. A slice thus holds whole
// days of a key, so the hour and day levels computed after its minutes see
// all of them; the month level reads whole months and is recomputed by
// every slice that touches the month, the last one after all its days.
const dirtyRows = `ingested_at > {lo:DateTime64(3, 'UTC')} AND ingested_at <= {hi:DateTime64(3, 'UTC')}
          AND time >= {from:DateTime('UTC')} AND time < {to:DateTime('UTC')}
          AND cityHash64(customer_id, api_key_id) % {mod:UInt64} = {part:UInt64}`

// dirtyDaysSQL counts the dirty (customer, key, minute) groups of a tick
// per UTC day, from which the tick cuts its slices.
const dirtyDaysSQL = `SELECT toDateTime(toStartOfDay(m), 'UTC') AS day, count()
FROM
(
    SELECT DISTINCT customer_id, api_key_id, toStartOfMinute(time) AS m
    FROM events
    WHERE ingested_at > {lo:DateTime64(3, 'UTC')} AND ingested_at <= {hi:DateTime64(3, 'UTC')}
)
GROUP BY day
ORDER BY day`

// minuteSQL recomputes the dirty minutes from events FINAL. The second
// branch of the union brings every group already stored for those minutes
// with nothing to count: a group that no longer has events (its only event
// was replaced by a re-sent copy with other dimensions) is rewritten with
// requests = 0 instead of keeping its stale figures. Only rows with n = 1
// feed the states. An absent latency (NULL) stays out of the latency state
// and an absent byte count adds 0 to the sums. The explicit time bounds repeat what the dirty set
// implies, so that partitions and index ranges outside the slice are
// skipped without consulting the set.
var minuteSQL = `INSERT INTO usage_minute (` + rollupColumns + `)
WITH dirty AS (
    SELECT DISTINCT customer_id, api_key_id, toDateTime(toStartOfMinute(time), 'UTC')
    FROM events
    WHERE ` + dirtyRows + `
)
SELECT customer_id, api_key_id, window_start, route, method, status_class, gateway,
    sum(n), sumIf(n, status >= 400 AND status < 500), sumIf(n, status >= 500),
    sum(u), sum(rq), sum(rs),
    quantilesTDigestStateIf(` + latencyQuantiles + `)(assumeNotNull(lat), n = 1 AND isNotNull(lat)),
    uniqExactStateIf(ip, n = 1 AND ip != ''),
    now64(3)
FROM
(
    SELECT customer_id, api_key_id, toDateTime(toStartOfMinute(time), 'UTC') AS window_start,
        route, method, ` + statusClassExpr + ` AS status_class, gateway, status,
        toUInt64(1) AS n, units AS u, ifNull(request_bytes, 0) AS rq, ifNull(response_bytes, 0) AS rs,
        latency_ms AS lat, client_ip AS ip
    FROM events FINAL
    WHERE time >= {from:DateTime('UTC')} AND time < {to:DateTime('UTC')}
        AND (customer_id, api_key_id, toStartOfMinute(time)) IN dirty
    UNION ALL
    SELECT DISTINCT customer_id, api_key_id, window_start, route, method, status_class, gateway,
        toUInt16(0), toUInt64(0), toDecimal64(0, 6), toUInt64(0), toUInt64(0), toFloat64(0), ''
    FROM usage_minute
    WHERE window_start >= {from:DateTime('UTC')} AND window_start < {to:DateTime('UTC')}
        AND (customer_id, api_key_id, window_start) IN dirty
)
GROUP BY customer_id, api_key_id, window_start, route, method, status_class, gateway`

// mergeLevelSQL builds the statement that recomputes the dirty windows of
// table to from the FINAL rows of table from. bucket(x) gives the window
// start (DateTime('UTC')) of the target level for x; the source rows lie
// in [lower, upper), parameters that hold whole target windows.
func mergeLevelSQL(to, from string, bucket func(string) string, lower, upper string) string {
	return `INSERT INTO ` + to + ` (` + rollupColumns + `)
SELECT customer_id, api_key_id, ` + bucket("window_start") + ` AS w, route, method, status_class, gateway,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(` + latencyQuantiles + `)(latency_state),
    uniqExactMergeState(client_ips_state),
    now64(3)
FROM ` + from + ` FINAL
WHERE window_start >= {` + lower + `:DateTime('UTC')} AND window_start < {` + upper + `:DateTime('UTC')}
    AND (customer_id, api_key_id, ` + bucket("window_start") + `) IN (
        SELECT DISTINCT customer_id, api_key_id, ` + bucket("time") + `
        FROM events
        WHERE ` + dirtyRows + `
    )
GROUP BY customer_id, api_key_id, w, route, method, status_class, gateway`
}

// tickLevels are the statements of one tick slice, in order: each level
// reads the one before it. Slices hold whole UTC days, so hours and days
// read [from, to); months read the whole months around it [mfrom, mto).
var tickLevels = []struct {
	name string
	sql  string
}{
	{"minute", minuteSQL},
	{"hour", mergeLevelSQL("usage_hour", "usage_minute", func(x string) string {
		return "toDateTime(toStartOfHour(" + x + "), 'UTC')"
	}, "from", "to")},
	{"day", mergeLevelSQL("usage_day", "usage_hour", func(x string) string {
		return "toDateTime(toStartOfDay(" + x + "), 'UTC')"
	}, "from", "to")},
	{"month", mergeLevelSQL("usage_month", "usage_day", func(x string) string {
		return "toDateTime(toStartOfMonth(" + x + "), 'UTC')"
	}, "mfrom", "mto")},
}

// readWatermarkSQL reads the saved watermark (no row before the first tick).
const readWatermarkSQL = `SELECT value FROM aggregate_state FINAL WHERE name = {name:String}`

// writeWatermarkSQL saves the watermark; updated_at, the engine's clock,
// makes the latest write win.
const writeWatermarkSQL = `INSERT INTO aggregate_state (name, value, updated_at)
SELECT {name:String}, {value:DateTime64(3, 'UTC')}, now64(3)`
