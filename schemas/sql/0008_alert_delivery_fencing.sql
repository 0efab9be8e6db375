-- Fencing of usage alert deliveries (package aggregate/limits).
--
-- Before each webhook attempt the sender records a claim: a row with
-- outcome 'sending', its lease generation and its sender id, and reads the
-- delivery's rows back. It sends only if nobody delivered the alert, no
-- other sender recorded a row under a newer lease generation, and no other
-- sender's claim may still be in flight (not concluded by a row of the same
-- sender and attempt, and younger than the webhook timeout plus the time to
-- record it). A claim it gives up is concluded with outcome 'withdrawn'.
--
-- lease_generation: the alert lease's generation the row was written under
-- (0 without a lease, limits.alert_sender: always). sender: a random id of
-- the process's limits view, the same for all its rows.
ALTER TABLE alert_deliveries ADD COLUMN IF NOT EXISTS lease_generation Int64 DEFAULT 0;
ALTER TABLE alert_deliveries ADD COLUMN IF NOT EXISTS sender String DEFAULT '';
