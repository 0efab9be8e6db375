-- Raw request events, one row per gateway request, as the sink inserts them
-- from Kafka.
--
-- Duplicates: a gateway retry or a Kafka redelivery carries the same event
-- (same id, identical content). ReplacingMergeTree collapses rows with the
-- same sort key, and the sort key ends in id, so duplicates of one event
-- become one row when parts merge. Merges happen in the background, at no
-- fixed time: reads that must be exact (billing, quotas) use FINAL or count
-- distinct ids.
--
-- Retried inserts: the sink inserts each batch with insert_deduplication_token.
-- non_replicated_deduplication_window keeps the hashes of the last 10,000
-- inserted blocks, so a retried identical insert (same token) is a no-op
-- instead of a second copy waiting for a merge.
--
-- Partitioned by month of the event time, so retention and erasure work on
-- whole months. The TTL enforces retention (RawRetentionMonths, 12 by
-- default): rows older than that are deleted when their part merges.
CREATE TABLE IF NOT EXISTS events
(
    id              String,                  -- unique per request; the deduplication key
    time            DateTime64(3, 'UTC'),    -- when the gateway handled the request (ms)
    api_key_id      String,                  -- public id of the API key, never its secret
    customer_id     String,                  -- owner of the key, resolved at ingest if absent
    gateway         LowCardinality(String),  -- gateway or region that emitted the event
    method          LowCardinality(String),  -- HTTP method
    route           LowCardinality(String),  -- endpoint template (/v1/pets/{id}), not the raw path
    status          UInt16,                  -- HTTP status, 100-599 (validated at ingest)
    latency_ms      Float64,                 -- request latency in milliseconds
    request_bytes   UInt64,                  -- bytes received from the client
    response_bytes  UInt64,                  -- bytes sent to the client
    client_ip       String,                  -- client address, already anonymised at ingest
    user_agent      String,                  -- client user agent, at most 512 characters
    units           Decimal(18, 6),          -- billable units for this request (default 1)
    properties      Map(String, String),     -- free dimensions (plan, region, sdk), at most 32
    kafka_partition Int32,                   -- Kafka partition the sink read the event from
    kafka_offset    Int64,                   -- Kafka offset within that partition
    ingested_at     DateTime64(3, 'UTC')     -- when the sink inserted the row
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (customer_id, api_key_id, time, id)
TTL toDateTime(time) + INTERVAL {{ .RawRetentionMonths }} MONTH
SETTINGS non_replicated_deduplication_window = 10000
