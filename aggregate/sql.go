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
    ` + dirtyGroupsOf("toDateTime(toStartOfMinute(time), 'UTC')") + `
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

// wideDims are the dimensions of the wide rollup tables after the
// (customer_id, api_key_id, window_start) that every rollup table starts
// with; the narrow tables (usage_key_*) have none.
const wideDims = `route, method, status_class, gateway`

// narrowColumns are the columns of every narrow rollup table, in insert
// order.
const narrowColumns = `customer_id, api_key_id, window_start,
    requests, client_errors, server_errors, units, request_bytes, response_bytes,
    latency_state, client_ips_state, computed_at`

// mergeLevelSQL builds the statement that recomputes the dirty windows of
// table to from the FINAL rows of table from. bucket(x) gives the window
// start (DateTime('UTC')) of the target level for x; the source rows lie
// in [lower, upper), parameters that hold whole target windows. narrow
// says that the target is a narrow table: the rows are summed over the
// wide dimensions, which it does not have.
func mergeLevelSQL(to, from string, bucket func(string) string, lower, upper string, narrow bool) string {
	cols, dims := rollupColumns, ", "+wideDims
	if narrow {
		cols, dims = narrowColumns, ""
	}
	return `INSERT INTO ` + to + ` (` + cols + `)
SELECT customer_id, api_key_id, ` + bucket("window_start") + ` AS w` + dims + `,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(` + latencyQuantiles + `)(latency_state),
    uniqExactMergeState(client_ips_state),
    now64(3)
FROM ` + from + ` FINAL
WHERE window_start >= {` + lower + `:DateTime('UTC')} AND window_start < {` + upper + `:DateTime('UTC')}
    AND (customer_id, api_key_id, ` + bucket("window_start") + `) IN (
        ` + dirtyGroupsOf(bucket("time")) + `
    )
GROUP BY customer_id, api_key_id, w` + dims
}

func minuteOf(x string) string { return "toDateTime(toStartOfMinute(" + x + "), 'UTC')" }
func hourOf(x string) string   { return "toDateTime(toStartOfHour(" + x + "), 'UTC')" }
func dayOf(x string) string    { return "toDateTime(toStartOfDay(" + x + "), 'UTC')" }
func monthOf(x string) string  { return "toDateTime(toStartOfMonth(" + x + "), 'UTC')" }

// tickLevels are the statements of one tick slice, in order: each level
// reads the one before it. Slices hold whole UTC days, so hours and days
// read [from, to); months read the whole months around it [mfrom, mto).
// Each narrow level follows the wide level of the same windows: the
// narrow minutes sum the wide minutes just recomputed, and each narrow
// level above sums the narrow level below, as the wide levels do, so a
// narrow row is the sum of the wide rows of its cell at every level.
var tickLevels = []struct {
	name string
	sql  string
}{
	{"minute", minuteSQL},
	{"key minute", mergeLevelSQL("usage_key_minute", "usage_minute", minuteOf, "from", "to", true)},
	{"hour", mergeLevelSQL("usage_hour", "usage_minute", hourOf, "from", "to", false)},
	{"key hour", mergeLevelSQL("usage_key_hour", "usage_key_minute", hourOf, "from", "to", true)},
	{"day", mergeLevelSQL("usage_day", "usage_hour", dayOf, "from", "to", false)},
	{"key day", mergeLevelSQL("usage_key_day", "usage_key_hour", dayOf, "from", "to", true)},
	{"month", mergeLevelSQL("usage_month", "usage_day", monthOf, "mfrom", "mto", false)},
	{"key month", mergeLevelSQL("usage_key_month", "usage_key_day", monthOf, "mfrom", "mto", true)},
}

// readWatermarkSQL reads the saved watermark (no row before the first tick).
const readWatermarkSQL = `SELECT value FROM aggregate_state FINAL WHERE name = {name:String}`

// writeWatermarkSQL saves the watermark; updated_at, the engine's clock,
// makes the latest write win.
const writeWatermarkSQL = `INSERT INTO aggregate_state (name, value, updated_at)
SELECT {name:String}, {value:DateTime64(3, 'UTC')}, now64(3)`

// unassignedKeysSQL lists the keys with events stored without a customer
// (the sort key starts with customer_id, so only that prefix is read).
const unassignedKeysSQL = `SELECT api_key_id, count(), toFloat64(sum(units)), min(time), max(time)
FROM events FINAL
WHERE customer_id = ''
GROUP BY api_key_id
ORDER BY api_key_id`

// attributeCopySQL copies a key's unassigned events with time in
// [from, until) to the customer that holds the key then. Every column is
// copied (SELECT * REPLACE), so columns a later migration adds travel
// too; ingested_at is new, so the next tick re-rolls the minutes. The
// filter sits in a subquery: the REPLACE aliases would shadow the columns
// in a WHERE beside them.
const attributeCopySQL = `INSERT INTO events
SELECT * REPLACE ({customer:String} AS customer_id, now64(3) AS ingested_at)
FROM
(
    SELECT * FROM events FINAL
    WHERE customer_id = '' AND api_key_id = {key:String}
        AND time >= {from:DateTime64(3, 'UTC')} AND time < {until:DateTime64(3, 'UTC')}
)`

// attributeDeleteSQL removes the unassigned events of keys that have an
// attributed copy (same key, id and time under a customer), and only
// those: an unassigned row inserted after the copy stays. The mutation is
// waited for, so the next tick reads without them.
const attributeDeleteSQL = `ALTER TABLE events DELETE
WHERE customer_id = '' AND api_key_id IN {keys:Array(String)}
    AND (api_key_id, id, time) IN (
        SELECT api_key_id, id, time FROM events
        WHERE customer_id != '' AND api_key_id IN {keys:Array(String)}
    )
SETTINGS mutations_sync = 2, allow_nondeterministic_mutations = 1`

// dirtyGroupsOf selects the dirty (customer, key, bucket) groups of a tick
// slice, bucket being an expression of time. Each dirty group of a key
// also dirties the key's unassigned group (empty customer_id) of that bucket:
// when unassigned events are attributed, their copies are the new rows,
// and the unassigned group they left must be re-rolled (to zero requests
// if nothing is left) so that nothing counts twice.
func dirtyGroupsOf(bucket string) string {
	return `SELECT DISTINCT c, api_key_id, b
        FROM (
            SELECT customer_id, api_key_id, ` + bucket + ` AS b
            FROM events
            WHERE ` + dirtyRows + `
        )
        ARRAY JOIN [customer_id, ''] AS c`
}
