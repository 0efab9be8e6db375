-- The sink's canary: before the sink blames the rows of a failed insert and
-- splits the batch to dead-letter the ones that cannot be stored, it inserts
-- one known-good row here. If that fails too, the engine or its storage is
-- at fault (disk full, read-only, access denied) and the sink stalls and
-- retries instead of dead-lettering good events.
--
-- A table of the same engine family on the same storage as events, with
-- no materialized view attached; one row per sink consumer group (the
-- latest check wins on merge), gone a week after the last check.
CREATE TABLE IF NOT EXISTS sink_canary
(
    sink       String,                -- the sink's consumer group
    checked_at DateTime64(3, 'UTC')   -- when the canary was inserted
)
ENGINE = ReplacingMergeTree(checked_at)
ORDER BY sink
TTL toDateTime(checked_at) + INTERVAL 7 DAY;
