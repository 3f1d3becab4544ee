-- Erasure receipts: one row per erasure request, written once its deletions are done.
-- A receipt says who asked, when, and how much was removed (counts, never content). The
-- customer appears only as `subject`, a keyed fingerprint of the customer id (HMAC with
-- privacy.fingerprint_secret), so the receipt itself does not identify the customer to a
-- reader without the secret. ReplacingMergeTree by request_id: a request re-run after a
-- restart keeps one receipt.
CREATE TABLE IF NOT EXISTS {db}.erasure_receipts
(
    request_id       String,
    subject          String,     -- HMAC fingerprint of the customer id
    requested_by     String,
    requested_at     DateTime('UTC'),
    completed_at     DateTime('UTC'),
    customer_state   UInt8,      -- stream state removed (0: there was none)
    identity_entries UInt32,     -- identity index entries removed
    timeline_rows    UInt64,     -- rows (all revisions) deleted from timeline_versions
    alert_rows       UInt64      -- rows (all revisions) deleted from friction_alert_versions
)
ENGINE = ReplacingMergeTree()
ORDER BY request_id;
