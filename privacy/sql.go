package privacy

import "github.com/meterline/meterline/store"

// The statements of package privacy. Statements over the customer tables
// are built at run time from the table list (tables.go, export.go, the
// erasure passes in erase.go); these are the fixed ones.

// tablesSQL lists the columns of every MergeTree table of the current
// database that has a customer_id column. On a ClickHouse cluster of
// several shards a sharded table NAME is a Distributed table over
// NAME_local (store.LocalSuffix): NAME is listed, with its local table's
// engine, so that reads see every shard (and the server engine sends the
// mutations of NAME to NAME_local on every shard), and NAME_local is not.
const tablesSQL = `SELECT c.table, c.name, c.type, if(t.engine = 'Distributed', l.engine, t.engine) AS engine
FROM system.columns AS c
INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
LEFT JOIN system.tables AS l ON l.database = t.database AND l.name = concat(t.name, '_local')
WHERE c.database = currentDatabase()
  AND c.table IN (SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'customer_id')
  AND (t.engine LIKE '%MergeTree' OR (t.engine = 'Distributed' AND l.engine LIKE '%MergeTree'))
  AND NOT (endsWith(t.name, '_local') AND substring(t.name, 1, length(t.name) - 6) IN
      (SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'Distributed'))
ORDER BY c.table, c.position`

// saveErasureSQL appends a version of an erasure request (the counts come
// as JSON objects).
const saveErasureSQL = `INSERT INTO privacy_erasures
(id, customer_id, api_key_ids, kind, requested_by, reason, requested_at, not_before, status, started_at, finished_at,
 removed, pseudonymised, pseudonym, error, updated_at)
SELECT {id:String}, {customer_id:String}, {api_key_ids:Array(String)}, {kind:String}, {requested_by:String}, {reason:String},
 {requested_at:DateTime64(3, 'UTC')}, {not_before:DateTime64(3, 'UTC')}, {status:String},
 {started_at:DateTime64(3, 'UTC')}, {finished_at:DateTime64(3, 'UTC')},
 JSONExtract({removed:String}, 'Map(String, UInt64)'), JSONExtract({pseudonymised:String}, 'Map(String, UInt64)'),
 {pseudonym:String}, {error:String}, {updated_at:DateTime64(3, 'UTC')}`

// auditSQL appends one entry to the audit trail.
const auditSQL = `INSERT INTO privacy_audit (at, actor, action, customer_id, api_key_id, erasure_id, detail)
SELECT {at:DateTime64(3, 'UTC')}, {actor:String}, {action:String}, {customer_id:String}, {api_key_id:String},
 {erasure_id:String}, {detail:String}`

// selectErasuresSQL reads the latest version of erasure requests; a filter
// follows WHERE.
const selectErasuresSQL = `SELECT id, customer_id, api_key_ids, kind, requested_by, reason, requested_at, not_before, status, started_at,
 finished_at, toJSONString(removed), toJSONString(pseudonymised), pseudonym, error, updated_at
FROM privacy_erasures FINAL
WHERE `

// erasedCustomersSQL lists the customers whose events the sink drops.
const erasedCustomersSQL = `SELECT DISTINCT customer_id FROM privacy_erasures FINAL
WHERE status IN ('running', 'done', 'failed')`

// erasedKeysSQL lists the API keys of those customers: the sink drops their
// events too, with or without a customer_id.
const erasedKeysSQL = `SELECT DISTINCT arrayJoin(api_key_ids) AS k FROM privacy_erasures FINAL
WHERE status IN ('running', 'done', 'failed') AND k != ''`

// customerFilter is the WHERE condition that selects a customer's rows of
// t, and its parameters: the customer's customer_id and, in a table of class
// Delete with an api_key_id column, the rows stored without a customer
// under one of its keys (events of a key the catalogue did not know, and
// their rollups).
func customerFilter(t Table, customerID string, keys []string) (string, []store.Param) {
	c := store.P("customer_id", customerID)
	if t.Class == Delete && t.HasAPIKey && len(keys) > 0 {
		return "(customer_id = {customer_id:String} OR (customer_id = '' AND api_key_id IN {api_key_ids:Array(String)}))",
			[]store.Param{c, store.P("api_key_ids", keys)}
	}
	return "customer_id = {customer_id:String}", []store.Param{c}
}

// keysOfCustomerSQL lists the API keys a customer's rows of t carry.
func keysOfCustomerSQL(t Table) string {
	return "SELECT DISTINCT api_key_id FROM " + t.ident + " WHERE customer_id = {customer_id:String} AND api_key_id != ''"
}
