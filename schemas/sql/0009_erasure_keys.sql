-- The API keys of an erased customer, kept with its erasure request: the
-- keys its catalogue entry listed when the erasure ran and every key its
-- stored rows carried. An erasure deletes the rows stored without a
-- customer_id under these keys (events of keys the catalogue did not know
-- yet, or no longer knew), and the sink drops events of these keys as well
-- as events of the customer id, even after the customer's catalogue entry
-- is removed. Key ids are public identifiers, not secrets.
ALTER TABLE privacy_erasures ADD COLUMN IF NOT EXISTS api_key_ids Array(String) AFTER customer_id;
