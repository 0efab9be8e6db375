-- Narrow usage rollups: per customer, API key and window only, at the same
-- four levels as the wide rollups of 0002_rollups.sql (minute, hour, day,
-- month), with the same measures, versioning and retention.
--
-- Most reads ask for a customer's or a key's usage without splitting it by
-- route, method, status class or gateway; over the wide tables such a read
-- merges one row per combination of those four dimensions in every window.
-- A narrow row is exactly the sum of the wide rows of its (customer, key,
-- window) cell: package aggregate writes it in the same tick, right after
-- the wide level of that window, for the same dirty groups (usage_key_minute
-- from usage_minute FINAL, each level above from the narrow level below,
-- which sums the same minute rows), before the watermark is saved. A group
-- that disappears is written as a row with requests = 0, which readers
-- skip. Readers use these tables for queries that neither group nor filter
-- by route, method, status_class or gateway.
--
-- The statements after the tables fill them once from the wide rollups
-- already stored, so a database migrated from an older version answers the
-- same numbers at once. An aggregator of an older version that keeps
-- running after this migration writes the wide tables only: upgrade every
-- process that runs the aggregator role together.

CREATE TABLE IF NOT EXISTS usage_key_minute
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC minute
    requests         UInt64,
    client_errors    UInt64,                  -- status 400-499
    server_errors    UInt64,                  -- status 500-599
    units            Decimal(38, 6),
    request_bytes    UInt64,
    response_bytes   UInt64,
    latency_state    AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64),
    client_ips_state AggregateFunction(uniqExact, String),
    computed_at      DateTime64(3, 'UTC'),    -- version: the latest computation wins
    INDEX idx_api_key_id api_key_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (customer_id, api_key_id, window_start)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_key_hour
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC hour
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
ORDER BY (customer_id, api_key_id, window_start)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_key_day
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC day
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
ORDER BY (customer_id, api_key_id, window_start)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

CREATE TABLE IF NOT EXISTS usage_key_month
(
    customer_id      String,
    api_key_id       String,
    window_start     DateTime('UTC'),         -- start of the UTC month
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
ORDER BY (customer_id, api_key_id, window_start)
TTL window_start + INTERVAL {{ .RollupRetentionMonths }} MONTH;

-- The fill from the wide rollups (a statement that runs twice only adds a
-- newer version of the same rows).
INSERT INTO usage_key_minute
SELECT customer_id, api_key_id, window_start,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state), uniqExactMergeState(client_ips_state), now64(3)
FROM usage_minute FINAL
GROUP BY customer_id, api_key_id, window_start;

INSERT INTO usage_key_hour
SELECT customer_id, api_key_id, window_start,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state), uniqExactMergeState(client_ips_state), now64(3)
FROM usage_hour FINAL
GROUP BY customer_id, api_key_id, window_start;

INSERT INTO usage_key_day
SELECT customer_id, api_key_id, window_start,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state), uniqExactMergeState(client_ips_state), now64(3)
FROM usage_day FINAL
GROUP BY customer_id, api_key_id, window_start;

INSERT INTO usage_key_month
SELECT customer_id, api_key_id, window_start,
    sum(requests), sum(client_errors), sum(server_errors), sum(units), sum(request_bytes), sum(response_bytes),
    quantilesTDigestMergeState(0.5, 0.95, 0.99)(latency_state), uniqExactMergeState(client_ips_state), now64(3)
FROM usage_month FINAL
GROUP BY customer_id, api_key_id, window_start;
