-- Privacy requests: erasures (and account deletions, which are erasures
-- scheduled after a grace period) and the audit trail of every privacy
-- operation. Written by package privacy.
--
-- privacy_erasures is event-sourced: every change of a request (scheduled,
-- pending, running, done, failed, cancelled) appends a new version of its
-- row, and readers take the latest one (FINAL, versioned by updated_at).
-- The sink reads the customer ids of requests that are running, done or
-- failed and drops their events, so that neither a redelivery from Kafka nor
-- a late gateway brings erased data back. That is why these rows keep the
-- customer id: it is the minimum needed to honour the erasure, and it is an
-- account identifier, not a person's usage data.
--
-- removed and pseudonymised count, per table, the rows deleted and the rows
-- whose customer_id was replaced by the erasure's pseudonym.
--
-- Neither table has a TTL: they are the proof that requests were carried
-- out. They hold no usage data.
CREATE TABLE IF NOT EXISTS privacy_erasures
(
    id            String,                  -- er_ + 20 hex digits, random
    customer_id   String,                  -- customer whose data is erased
    kind          LowCardinality(String),  -- erasure | account_deletion
    requested_by  String,                  -- API token name, or the OS user for the CLI
    reason        String,                  -- free text from the requester
    requested_at  DateTime64(3, 'UTC'),
    not_before    DateTime64(3, 'UTC'),    -- earliest execution (requested_at + delay for account deletions)
    status        LowCardinality(String),  -- scheduled | pending | running | done | failed | cancelled
    started_at    DateTime64(3, 'UTC'),    -- zero until running
    finished_at   DateTime64(3, 'UTC'),    -- zero until done, failed or cancelled
    removed       Map(String, UInt64),     -- table -> rows deleted
    pseudonymised Map(String, UInt64),     -- table -> rows whose customer_id became the pseudonym
    pseudonym     String,                  -- 'erased:' || id
    error         String,                  -- why the last attempt failed
    updated_at    DateTime64(3, 'UTC')     -- version of this row
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY id;

CREATE TABLE IF NOT EXISTS privacy_audit
(
    at          DateTime64(3, 'UTC'),
    actor       String,                  -- API token name, or the OS user for the CLI
    action      LowCardinality(String),  -- export | erasure_requested | erasure_started | erasure_done | erasure_failed | erasure_cancelled
    customer_id String,
    api_key_id  String,                  -- set for exports by key
    erasure_id  String,
    detail      String                   -- JSON: row counts per table, format, error
)
ENGINE = MergeTree
ORDER BY at;
