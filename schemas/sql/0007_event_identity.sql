-- Event identity and absent measurements.
--
-- event_ids holds one claim per (api_key_id, id): the copy of the event that
-- the sink stored first, by its event time. The raw table's sort key is
-- (customer_id, api_key_id, time, id), so ReplacingMergeTree only collapses
-- copies with the same time, within one monthly partition; a producer that
-- re-stamps a retry (same id, new time) would be stored, counted and billed
-- twice. Before each insert the sink looks the batch's ids up here (package
-- ingest, dedup.go) and drops every copy whose id is claimed with another
-- time; a copy with the claimed time is the stored one (a Kafka redelivery
-- or a replay) and goes through, the raw table collapsing it as before.
-- The sink writes the claims of a batch before the batch's events, so a
-- crash between the two leaves claims whose copy is re-read from Kafka and
-- then matches its claim: nothing is lost, nothing counts twice.
--
-- Sorted by (api_key_id, id) with small granules, so that a lookup of a
-- batch's ids reads about one granule per id whatever the table's size.
-- Partitioned by the month of the claim, and kept as long as raw events
-- (RawRetentionMonths, counted from the claim, so a claim outlives its
-- event): the deduplication horizon is the raw retention. customer_id lets
-- privacy erasure and export find the claims like every customer table.
CREATE TABLE IF NOT EXISTS event_ids
(
    api_key_id  String,
    id          String,
    time        DateTime64(3, 'UTC'),   -- event time of the stored copy
    customer_id String,
    claimed_at  DateTime64(3, 'UTC')    -- when the sink claimed the id
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(claimed_at)
ORDER BY (api_key_id, id)
TTL toDateTime(claimed_at) + INTERVAL {{ .RawRetentionMonths }} MONTH
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;

-- Claims for the events stored before this migration, so that a re-stamped
-- copy of one of them is recognised too. A copy already stored twice keeps
-- both rows (the raw table is not rewritten); its later copies are dropped.
INSERT INTO event_ids (api_key_id, id, time, customer_id, claimed_at)
SELECT api_key_id, id, time, customer_id, ingested_at FROM events;

-- latency_ms, request_bytes and response_bytes are optional in the v1 event:
-- an event that does not carry one stores NULL, so that percentiles and
-- averages use only the events that measured it (sums count it as 0).
-- Rows stored before this migration keep the 0 they were stored with: that
-- an omitted value was stored as 0 cannot be told apart from a measured 0.
ALTER TABLE events
    MODIFY COLUMN latency_ms Nullable(Float64),
    MODIFY COLUMN request_bytes Nullable(UInt64),
    MODIFY COLUMN response_bytes Nullable(UInt64);
