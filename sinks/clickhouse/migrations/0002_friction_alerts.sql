-- cem.friction_alerts: one row per alert, in its latest revision (same fields as the
-- message on cem.friction.alerts).
--
-- An alert is re-published with a higher revision when a late event changes it, and with
-- status = 'retracted' when a late event shows it was wrong. friction_alert_versions keeps
-- every revision; ReplacingMergeTree(revision) collapses them eventually, and the view
-- `friction_alerts` shows only the latest (FINAL). Filter `status = 'open'` for live alerts.
--
-- ORDER BY (customer_id, alert_id): "all alerts of a customer", and the natural id.
-- PARTITION BY month of the triggering event: a given alert_id always lands in one partition.
CREATE TABLE IF NOT EXISTS {db}.friction_alert_versions
(
    alert_id        String,
    status          Enum8('open' = 1, 'retracted' = 2),
    kind            Enum8('repeat_contact' = 1, 're_entry' = 2),
    customer_id     String,
    severity        Enum8('medium' = 1, 'high' = 2),
    occurred_at     DateTime('UTC'),     -- of the triggering event
    detected_at     DateTime('UTC'),
    matter          String,              -- repeat_contact: the matter, else ''
    field           String,              -- re_entry: the field name, else ''
    count           UInt32,
    window_days     UInt16,
    channels        Array(String),
    distinct_agents UInt16,
    places          Array(String),
    known_in_crm    UInt8,
    evidence        Array(String),       -- event ids
    loyalty_tier    String,
    summary         String,
    trigger_event_id String,             -- the event whose arrival in event-time order raised it
    trigger_channel Enum8('web' = 1, 'call_center' = 2, 'booking' = 3),
    revision        UInt32,
    _topic          String,              -- provenance of the triggering event
    _partition      UInt32,
    _offset         UInt64,
    ingested_at     DateTime('UTC')
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, alert_id);

CREATE VIEW IF NOT EXISTS {db}.friction_alerts AS
SELECT
    alert_id, status, kind, customer_id, severity, occurred_at, detected_at, matter, field,
    count, window_days, channels, distinct_agents, places, known_in_crm, evidence,
    loyalty_tier, summary, trigger_event_id, trigger_channel, revision, _topic, _partition, _offset, ingested_at
FROM {db}.friction_alert_versions FINAL;
