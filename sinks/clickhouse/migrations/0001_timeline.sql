-- cem.timeline: one row per distinct touchpoint, per customer, in event time.
--
-- timeline_versions holds every version of every row. A row is rewritten (with a higher
-- _version) when a late event changes its flags, and a replayed or duplicated event writes
-- the same row again; ReplacingMergeTree(_version) keeps one row per sort key, *eventually*
-- (at merge time). Analysts therefore read the view `timeline`, which deduplicates with FINAL.
--
-- ORDER BY (customer_id, occurred_at, channel, event_id): serves "one customer's timeline in
-- time order" (cem timeline, the ops context) with a primary-key range read, and is the
-- natural id that deduplication needs. PARTITION BY month: old months can be dropped whole.
-- Portable DDL: runs on ClickHouse 18.16 and 24+ alike.
CREATE TABLE IF NOT EXISTS {db}.timeline_versions
(
    customer_id      String,
    occurred_at      DateTime('UTC'),
    event_id         String,
    channel          Enum8('web' = 1, 'call_center' = 2, 'booking' = 3),
    type             String,
    matter           String,            -- lower-cased reason of an assisted contact, else ''
    place            String,            -- channel:form|step|queue, where fields were entered
    agent_id         String,
    fields           Array(String),     -- names of personal-data fields entered (never values)
    friction         Array(String),     -- kinds flagged on this touchpoint: repeat_contact, re_entry
    reentered_fields Array(String),
    loyalty_tier     String,
    profile_version  UInt64,
    resolved_by      String,            -- customer_id | loyalty_id | email | phone | anonymous_id | anonymous | unresolved
    _topic           String,            -- Kafka provenance of the original message
    _partition       UInt32,
    _offset          UInt64,
    _version         UInt32,            -- the row's revision: grows when its flags are rewritten
    ingested_at      DateTime('UTC')
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, channel, event_id);

CREATE VIEW IF NOT EXISTS {db}.timeline AS
SELECT
    customer_id, occurred_at, event_id, channel, type, matter, place, agent_id, fields,
    friction, reentered_fields, loyalty_tier, profile_version, resolved_by,
    _topic, _partition, _offset, _version, ingested_at
FROM {db}.timeline_versions FINAL;
