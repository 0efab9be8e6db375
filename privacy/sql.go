package privacy

// The statements of package privacy. Statements over the customer tables
// are built at run time from the table list (tables.go, export.go, the
// erasure passes in erase.go); these are the fixed ones.

// tablesSQL lists the columns of every MergeTree table of the current
// database that has a customer_id column.
const tablesSQL = `SELECT c.table, c.name, c.type, t.engine
FROM system.columns AS c
INNER JOIN system.tables AS t ON t.database = c.database AND t.name = c.table
WHERE c.database = currentDatabase()
  AND c.table IN (SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'customer_id')
  AND t.engine LIKE '%MergeTree'
ORDER BY c.table, c.position`

// saveErasureSQL appends a version of an erasure request (the counts come
// as JSON objects).
const saveErasureSQL = `INSERT INTO privacy_erasures
(id, customer_id, kind, requested_by, reason, requested_at, not_before, status, started_at, finished_at,
 removed, pseudonymised, pseudonym, error, updated_at)
SELECT {id:String}, {customer_id:String}, {kind:String}, {requested_by:String}, {reason:String},
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
const selectErasuresSQL = `SELECT id, customer_id, kind, requested_by, reason, requested_at, not_before, status, started_at,
 finished_at, toJSONString(removed), toJSONString(pseudonymised), pseudonym, error, updated_at
FROM privacy_erasures FINAL
WHERE `

// erasedCustomersSQL lists the customers whose events the sink drops.
const erasedCustomersSQL = `SELECT DISTINCT customer_id FROM privacy_erasures FINAL
WHERE status IN ('running', 'done', 'failed')`
