-- Usage rollups per minute, hour, day and month, and the aggregator's state.
--
-- Why not a materialized view: the raw table holds physical duplicates of an
-- event until its parts merge (0001_events.sql), and a view over inserts
-- would count every copy. The rollups are instead recomputed from
-- deduplicated input by package aggregate, driven by a watermark:
--
--   * every tick (default 10 s) takes a bound B = now - settle (default 5 s,
--     so that an insert in flight has landed) and the watermark W saved by
--     the last tick, and finds the dirty groups: the distinct (customer_id,
--     api_key_id, minute of time) of the raw rows whose ingested_at lies in
--     (W - overlap, B] (overlap default 2 min: re-work that covers clock
--     skew and slow inserts). Late events, of any age the ingest accepts,
--     make their old windows dirty again;
--   * usage_minute is recomputed for exactly those groups from events FINAL,
--     usage_hour for their hours from usage_minute FINAL (merging the
--     states), usage_day (UTC days) from usage_hour FINAL and usage_month
--     (UTC months) from usage_day FINAL, each as one INSERT ... SELECT;
--   * only then is W = B saved in aggregate_state, so a crash re-does the
--     whole tick, which is idempotent.
--
-- Every rollup table is a ReplacingMergeTree versioned by computed_at, set by
-- now64(3) inside the INSERT ... SELECT that computed the row: a window that
-- is recomputed replaces its earlier row (read with FINAL) instead of adding
-- to it, so re-aggregating a window never counts twice, and the computation
-- that started last (it read the most data) wins, even when two aggregators
-- run at once. A group that disappears from a recomputed minute (an event
-- replaced by a re-sent copy with other dimensions) is written as a row
-- with requests = 0, which readers skip.
--
-- Columns are the same in the four tables. status_class is '1xx' to '5xx';
-- client_errors count 4xx and server_errors 5xx; units keep the raw
-- Decimal(18, 6) exactly, summed into Decimal(38, 6); latency_state and
-- client_ips_state are mergeable states (t-digest quantiles p50/p95/p99 in
-- milliseconds, the exact set of anonymised client IPs without the empty
-- one). Windows are UTC. The TTL enforces retention
-- (RollupRetentionMonths, 12 by default) when parts merge.

CREATE TABLE IF NOT EXISTS usage_minute
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC minute
    route            LowCardinality(String),
    method           LowCardinality(String),
    status_class     LowCardinality(String),  -- '1xx' ... '5xx'
    gateway          LowCardinality(String),
    requests         UInt64,
    client_errors    UInt64,                  -- status 400-499
    server_errors    UInt64,                  -- status 500-599
    units            Decimal(38, 6),          -- exact sum of the raw Decimal(18, 6)
    request_bytes    UInt64,
    response_bytes   UInt64,
    latency_state    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    client_ips_state AggregateFunction(uniqExact, String),
    computed_at      DateTime64(3, 'UTC'),    -- version: the latest computation wins
    -- Queries by api_key_id alone cannot use the sort key's customer_id prefix.
    INDEX idx_api_key_id api_key_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer_id, api_key_id, window_start, route, method, status_class, gateway)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_hour
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC hour
    route            LowCardinality(String),
    method           LowCardinality(String),
    status_class     LowCardinality(String),
    gateway          LowCardinality(String),
    requests         UInt64,
    client_errors    UInt64,
    server_errors    UInt64,
    units            Decimal(38, 6),
    request_bytes    UInt64,
    response_bytes   UInt64,
    latency_state    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    client_ips_state AggregateFunction(uniqExact, String),
    computed_at      DateTime64(3, 'UTC'),
    INDEX idx_api_key_id api_key_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer_id, api_key_id, window_start, route, method, status_class, gateway)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_day
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC day
    route            LowCardinality(String),
    method           LowCardinality(String),
    status_class     LowCardinality(String),
    gateway          LowCardinality(String),
    requests         UInt64,
    client_errors    UInt64,
    server_errors    UInt64,
    units            Decimal(38, 6),
    request_bytes    UInt64,
    response_bytes   UInt64,
    latency_state    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    client_ips_state AggregateFunction(uniqExact, String),
    computed_at      DateTime64(3, 'UTC'),
    INDEX idx_api_key_id api_key_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer_id, api_key_id, window_start, route, method, status_class, gateway)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_month
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC month
    route            LowCardinality(String),
    method           LowCardinality(String),
    status_class     LowCardinality(String),
    gateway          LowCardinality(String),
    requests         UInt64,
    client_errors    UInt64,
    server_errors    UInt64,
    units            Decimal(38, 6),
    request_bytes    UInt64,
    response_bytes   UInt64,
    latency_state    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    client_ips_state AggregateFunction(uniqExact, String),
    computed_at      DateTime64(3, 'UTC'),
    INDEX idx_api_key_id api_key_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYear(window_start)
ORDER BY (customer_id, api_key_id, window_start, route, method, status_class, gateway)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

-- The aggregator's watermark (name 'watermark'): every event ingested at or
-- before value is in the rollups. The latest write wins; a watermark that
-- moves back (two aggregators, a clock step) only causes re-work.
CREATE TABLE IF NOT EXISTS aggregate_state
(
    name       String,
    value      DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

-- The dirty-group scan filters on ingested_at, which is not in the sort key:
-- a minmax index lets it skip the granules of parts written long ago.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_ingested_at ingested_at TYPE minmax GRANULARITY 1;

-- Builds the index for parts written before this migration, in the
-- background (a mutation); new parts get it as they are written.
ALTER TABLE events MATERIALIZE INDEX idx_ingested_at;
