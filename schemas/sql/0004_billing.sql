-- Billing to Stripe: the ledger of every report attempt, and the invoices
-- Stripe announced by webhook. Written by package billing.
--
-- billing_ledger is event-sourced: rows are only appended, never updated.
-- What is still to be reported is derived from the rollups minus this
-- ledger, so the billing worker can be killed at any instant and resume:
--
--   * before a report is sent, a 'pending' row records its exact request
--     (identifier, quantity, idempotency key): a worker that dies after
--     sending replays that request with the same key, and Stripe answers
--     with the stored result instead of billing again;
--   * each attempt's outcome is a row: 'acknowledged' (2xx), 'retrying'
--     (no answer, 409, 429 or 5xx; the report stays open and is attempted
--     again), 'failed' (refused with another 4xx: not applied, the usage is
--     reported again by a later report), 'abandoned' (open for longer than
--     Stripe keeps identifiers unique: outcome unknown, never re-sent);
--   * 'unbillable' rows record usage Meterline will never report, with the
--     reason (a meter event window older than Stripe's 35-day limit).
--
-- One report is one identifier: for meter events a window's correction
-- bringing Stripe's total for (customer, window) to cumulative; for usage
-- records a period-to-date total set at stripe_timestamp.
--
-- customer_id is deliberately not in the sort key: a customer's erasure
-- pseudonymises it with ALTER TABLE ... UPDATE, which cannot change key
-- columns. The table holds ids only (no names, no card data). It is kept
-- LedgerRetentionMonths (retention.ledger_months, default 12; finance may
-- set 84 for seven years of bookkeeping).
CREATE TABLE IF NOT EXISTS billing_ledger
(
    customer_id        String,                  -- Meterline customer
    stripe_customer_id String,                  -- cus_... the usage was reported on
    mode               LowCardinality(String),  -- meter_events | usage_records
    target             String,                  -- meter event name, or subscription item si_...
    period_start       DateTime('UTC'),         -- billing period (calendar month, UTC)
    window_start       DateTime('UTC'),         -- meter events: the window; usage records: period start
    window_end         DateTime('UTC'),         -- meter events: window end; usage records: end of the settled time the total covers
    quantity           Decimal(38, 6),          -- meter events: value sent (this report's delta); usage records: total set
    cumulative         Decimal(38, 6),          -- the rollup total this report brings Stripe to
    stripe_timestamp   DateTime('UTC'),         -- timestamp sent to Stripe
    idempotency_key    String,                  -- Idempotency-Key header, deterministic
    identifier         String,                  -- the report's id: meter event identifier, or usage record report id
    stripe_object_id   String,                  -- id Stripe returned (usage record mbur_...), when any
    stripe_request_id  String,                  -- Request-Id of Stripe's answer, empty without one
    http_status        UInt16,                  -- Stripe's HTTP status, 0 without an answer
    attempt            UInt16,                  -- attempt number of this report, across restarts
    result             LowCardinality(String),  -- pending | acknowledged | retrying | failed | abandoned | unbillable
    error              String,                  -- Stripe's error or the reason, empty when acknowledged
    attempted_at       DateTime64(3, 'UTC')     -- when the row was written
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (stripe_customer_id, window_start, attempted_at, idempotency_key)
TTL toDateTime(attempted_at) + INTERVAL {{ .LedgerRetentionMonths }} MONTH
-- A retried insert of the same rows is stored once.
SETTINGS non_replicated_deduplication_window = 1000;

-- Stripe invoice events received on POST /v1/stripe/webhook (signature
-- verified), so a reconciliation shows which invoice billed which period.
-- Each insert carries the event id as its deduplication token, so a
-- redelivered event within the last 1,000 inserts is stored once; readers
-- still take one row per (invoice_id, latest received_at).
CREATE TABLE IF NOT EXISTS billing_invoices
(
    customer_id        String,                  -- Meterline customer mapped to stripe_customer_id, empty if unknown
    stripe_customer_id String,
    invoice_id         String,                  -- in_...
    event_id           String,                  -- evt_...
    event_type         LowCardinality(String),  -- invoice.created | invoice.finalized | ...
    status             LowCardinality(String),  -- the invoice's status in the event
    period_start       DateTime('UTC'),
    period_end         DateTime('UTC'),
    amount_due         Int64,                   -- in the currency's smallest unit
    currency           LowCardinality(String),
    received_at        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(period_start)
ORDER BY (stripe_customer_id, period_start, invoice_id, received_at)
TTL toDateTime(received_at) + INTERVAL {{ .LedgerRetentionMonths }} MONTH
SETTINGS non_replicated_deduplication_window = 1000
