-- requires: clickhouse >= 20.1
-- Storage improvements a modern server supports and 18.16 does not: LowCardinality for
-- repetitive strings, and codecs for timestamps and offsets. On an older server this migration
-- is skipped, not recorded, so upgrading the server and re-running `cem migrate` applies it.
-- Sort-key columns keep their types (ClickHouse cannot alter them in place); that is also
-- why occurred_at stays DateTime rather than DateTime64.
ALTER TABLE {db}.timeline_versions
    MODIFY COLUMN type LowCardinality(String),
    MODIFY COLUMN matter LowCardinality(String),
    MODIFY COLUMN contact LowCardinality(String),
    MODIFY COLUMN place LowCardinality(String),
    MODIFY COLUMN agent_id LowCardinality(String),
    MODIFY COLUMN loyalty_tier LowCardinality(String),
    MODIFY COLUMN resolved_by LowCardinality(String),
    MODIFY COLUMN _topic LowCardinality(String),
    MODIFY COLUMN _offset UInt64 CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN ingested_at DateTime('UTC') CODEC(Delta, ZSTD(1));

ALTER TABLE {db}.friction_alert_versions
    MODIFY COLUMN matter LowCardinality(String),
    MODIFY COLUMN field LowCardinality(String),
    MODIFY COLUMN loyalty_tier LowCardinality(String),
    MODIFY COLUMN _topic LowCardinality(String),
    MODIFY COLUMN detected_at DateTime('UTC') CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN ingested_at DateTime('UTC') CODEC(Delta, ZSTD(1));
