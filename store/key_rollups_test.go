package store

import (
	"io/fs"
	"testing"
	"testing/fstest"
)

// TestKeyRollupsMigrationFillsFromTheWideRollups migrates a database to
// the version before the narrow rollups, stores wide rollup rows (several
// routes and statuses per key and window, some with zero requests), then
// applies the rest: every narrow table must hold exactly the wide rows
// summed per customer, key and window (sums and distinct addresses), with
// the rollups' retention.
func TestKeyRollupsMigrationFillsFromTheWideRollups(t *testing.T) {
	forEachEngine(t, func(t *testing.T, c Conn) {
		ctx := testCtx(t)
		all, err := migrationFS(nil)
		if err != nil {
			t.Fatal(err)
		}
		before := fstest.MapFS{}
		entries, err := fs.ReadDir(all, ".")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() < "0010" {
				b, err := fs.ReadFile(all, e.Name())
				if err != nil {
					t.Fatal(err)
				}
				before[e.Name()] = &fstest.MapFile{Data: b}
			}
		}
		if _, err := Migrate(ctx, c, MigrateOptions{FS: before}, testLogger); err != nil {
			t.Fatal(err)
		}
		// 2 customers x 2 keys x 3 windows x 6 routes x 2 statuses; the
		// states hold each row's latencies and addresses.
		windows := map[string]string{
			"usage_minute": "toDateTime('2026-11-03 10:07:00', 'UTC') + 60 * w",
			"usage_hour":   "toDateTime('2026-11-03 10:00:00', 'UTC') + 3600 * w",
			"usage_day":    "toDateTime('2026-11-03 00:00:00', 'UTC') + 86400 * w",
			"usage_month":  "toDateTime('2026-09-01 00:00:00', 'UTC') + toIntervalMonth(w)",
		}
		for table, ws := range windows {
			if err := c.Exec(ctx, `INSERT INTO `+table+` (customer_id, api_key_id, window_start, route, method, status_class, gateway,
    requests, client_errors, server_errors, units, request_bytes, response_bytes, latency_state, client_ips_state, computed_at)
SELECT concat('c', toString(cu)), concat('c', toString(cu), '-k', toString(k)), `+ws+`,
    concat('/r', toString(r)), 'GET', if(s = 0, '2xx', '5xx'), 'gw',
    if(r = 5, 0, 1 + r + k), if(s = 0, 0, 0), if(s = 1 AND r != 5, 1 + r + k, 0), toDecimal128(r + 0.125, 6), 10 * r, 100 * r,
    (SELECT quantilesTDigestState(0.5, 0.95, 0.99)(toFloat64(number + r)) FROM numbers(5)),
    (SELECT uniqExactState(concat('10.0.', toString(number % (r + 2)), '.0')) FROM numbers(4)),
    now64(3)
FROM (SELECT number % 2 AS cu, intDiv(number, 2) % 2 AS k, intDiv(number, 4) % 3 AS w, intDiv(number, 12) % 6 AS r, intDiv(number, 72) AS s FROM numbers(144))`); err != nil {
				t.Fatalf("%s: %v", table, err)
			}
		}
		if _, err := Migrate(ctx, c, MigrateOptions{}, testLogger); err != nil {
			t.Fatal(err)
		}
		for table := range windows {
			narrow := "usage_key_" + table[len("usage_"):]
			var diff, cells, wideCells uint64
			queryOne(t, c, `SELECT count() FROM
(
    SELECT customer_id, api_key_id, window_start, requests, client_errors, server_errors, units, request_bytes, response_bytes,
        finalizeAggregation(client_ips_state) AS ips
    FROM `+narrow+` FINAL
) AS n
FULL OUTER JOIN
(
    SELECT customer_id, api_key_id, window_start, sum(requests) AS requests, sum(client_errors) AS client_errors,
        sum(server_errors) AS server_errors, sum(units) AS units, sum(request_bytes) AS request_bytes, sum(response_bytes) AS response_bytes,
        uniqExactMerge(client_ips_state) AS ips
    FROM `+table+` FINAL
    GROUP BY customer_id, api_key_id, window_start
) AS w USING (customer_id, api_key_id, window_start)
WHERE (n.requests, n.client_errors, n.server_errors, n.units, n.request_bytes, n.response_bytes, n.ips)
    != (w.requests, w.client_errors, w.server_errors, w.units, w.request_bytes, w.response_bytes, w.ips)`, nil, &diff)
			queryOne(t, c, "SELECT count() FROM "+narrow+" FINAL", nil, &cells)
			queryOne(t, c, "SELECT count() FROM (SELECT DISTINCT customer_id, api_key_id, window_start FROM "+table+")", nil, &wideCells)
			if diff != 0 || cells != 12 || wideCells != 12 {
				t.Errorf("%s: %d cells differ from %s summed; %d narrow cells, %d wide, want 12", narrow, diff, table, cells, wideCells)
			}
			var ttl string
			queryOne(t, c, "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}", []Param{P("t", narrow)}, &ttl)
			if months, err := currentMonths(ctx, c, narrow); err != nil || months != DefaultRollupRetentionMonths {
				t.Errorf("%s: TTL %d months (%v), want %d: %s", narrow, months, err, DefaultRollupRetentionMonths, ttl)
			}
		}
	})
}
