-- Erasure receipts say what else an erasure reached: the anon:/unresolved: keys of the
-- customer's identifiers (events from before the customer was known), the alert delivery
-- ledger, and the dead letters holding the customer's data (left to the dead-letter topic's
-- retention: Kafka deletes no single message of a topic that is not compacted).
ALTER TABLE {db}.erasure_receipts ADD COLUMN related_keys UInt32 DEFAULT 0;
ALTER TABLE {db}.erasure_receipts ADD COLUMN ledger_entries UInt32 DEFAULT 0;
ALTER TABLE {db}.erasure_receipts ADD COLUMN dead_letters UInt32 DEFAULT 0;
