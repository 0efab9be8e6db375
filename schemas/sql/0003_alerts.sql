-- Usage alert delivery attempts: one row per webhook attempt, written by the
-- limits view (package aggregate/limits) as each attempt ends.
--
-- The table is the alerts' memory across restarts: before sending an alert,
-- the sender looks for a 'delivered' row of its delivery_id, so an alert
-- delivered once is not sent again by a restarted process. It is also the
-- audit trail operators and customers' support read ("did the 80 % alert go
-- out, and what did the receiver answer?").
--
-- outcome: 'delivered' (2xx), 'retrying' (failed, another attempt follows) or
-- 'failed' (no further attempt this period: refused with a 4xx other than
-- 429, or out of attempts). status_code is 0 when no HTTP answer arrived
-- (connection refused, timeout); error then holds the transport error.
--
-- The table holds customer ids, so it has the raw events' retention
-- (RawRetentionMonths) and belongs to a customer's erasure like every table
-- that names customers.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    delivery_id  String,                  -- hex(sha256(customer|period|threshold))[:32], same on every attempt
    customer_id  String,                  -- customer alerted
    plan_id      String,                  -- the customer's plan when the crossing was seen
    period_start DateTime('UTC'),         -- billing period (calendar month, UTC) of the crossing
    threshold    Float64,                 -- crossed fraction of the plan's included units
    attempt      UInt16,                  -- 1 for the first attempt, counted across restarts
    attempted_at DateTime64(3, 'UTC'),    -- when the attempt started
    status_code  UInt16,                  -- receiver's HTTP status, 0 without an answer
    outcome      LowCardinality(String),  -- delivered | retrying | failed
    error        String                   -- why the attempt failed, empty when delivered
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (customer_id, period_start, threshold, attempted_at)
TTL toDateTime(attempted_at) + INTERVAL {{ .RawRetentionMonths }} MONTH
