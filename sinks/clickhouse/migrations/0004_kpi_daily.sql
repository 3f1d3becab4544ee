-- KPI table kept current by materialized views: per day x matter x channel x loyalty tier,
-- the distinct touchpoints, new contacts, repeat contacts, touchpoints with re-entered data,
-- and alerts.
--
-- One row per (day, matter, channel, tier, metric) holding a uniqExact state of ids. Counting
-- *distinct* event/alert ids makes the KPIs immune to replays and to rewritten rows, which the
-- versions tables receive. (Conditional -If states are typed differently by 18.16 and 24+,
-- so each row is fanned out to the metrics it counts towards with arrayJoin instead.)
-- Caveat: a touchpoint flagged in any version stays counted if a late event later clears the
-- flag (rare). The SQL kit reads the deduplicated views when it needs exact numbers.
-- Read through the view `kpi_daily_view`.
CREATE TABLE IF NOT EXISTS {db}.kpi_daily
(
    day          Date,
    matter       String,   -- '' for touchpoints without a matter, and for re_entry alerts
    channel      String,
    loyalty_tier String,
    metric       String,   -- touchpoint | contact | repeat_contact | re_entry | repeat_contact_alert | re_entry_alert
    ids          AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, matter, channel, loyalty_tier, metric);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_daily_from_timeline TO {db}.kpi_daily AS
SELECT
    toDate(occurred_at) AS day,
    matter,
    toString(channel) AS channel,
    loyalty_tier,
    arrayJoin(arrayFilter(m -> m != '', [
        'touchpoint',
        if(contact = 'new', 'contact', ''),
        if(has(friction, 'repeat_contact'), 'repeat_contact', ''),
        if(has(friction, 're_entry'), 're_entry', '')
    ])) AS metric,
    uniqExactState(event_id) AS ids
FROM {db}.timeline_versions
GROUP BY day, matter, channel, loyalty_tier, metric;

-- An alert counts on the day and channel of the event that triggered it (open in any revision).
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_daily_from_alerts TO {db}.kpi_daily AS
SELECT
    toDate(occurred_at) AS day,
    matter,
    toString(trigger_channel) AS channel,
    loyalty_tier,
    concat(toString(kind), '_alert') AS metric,
    uniqExactState(alert_id) AS ids
FROM {db}.friction_alert_versions
WHERE status = 'open'
GROUP BY day, matter, channel, loyalty_tier, metric;

-- Backfill what was written before this migration (distinct counts: overlap is harmless).
INSERT INTO {db}.kpi_daily
SELECT toDate(occurred_at) AS day, matter, toString(channel) AS channel, loyalty_tier,
    arrayJoin(arrayFilter(m -> m != '', ['touchpoint', if(contact = 'new', 'contact', ''),
        if(has(friction, 'repeat_contact'), 'repeat_contact', ''), if(has(friction, 're_entry'), 're_entry', '')])) AS metric,
    uniqExactState(event_id) AS ids
FROM {db}.timeline_versions
GROUP BY day, matter, channel, loyalty_tier, metric;

INSERT INTO {db}.kpi_daily
SELECT toDate(occurred_at) AS day, matter, toString(trigger_channel) AS channel, loyalty_tier,
    concat(toString(kind), '_alert') AS metric, uniqExactState(alert_id) AS ids
FROM {db}.friction_alert_versions
WHERE status = 'open'
GROUP BY day, matter, channel, loyalty_tier, metric;

CREATE VIEW IF NOT EXISTS {db}.kpi_daily_view AS
SELECT
    day, matter, channel, loyalty_tier,
    sumIf(n, metric = 'touchpoint')           AS touchpoints,
    sumIf(n, metric = 'contact')              AS contacts,
    sumIf(n, metric = 'repeat_contact')       AS repeat_contacts,
    sumIf(n, metric = 're_entry')             AS reentry_touchpoints,
    sumIf(n, metric = 'repeat_contact_alert') AS repeat_contact_alerts,
    sumIf(n, metric = 're_entry_alert')       AS re_entry_alerts
FROM
(
    SELECT day, matter, channel, loyalty_tier, metric, uniqExactMerge(ids) AS n
    FROM {db}.kpi_daily
    GROUP BY day, matter, channel, loyalty_tier, metric
) AS per_metric
GROUP BY day, matter, channel, loyalty_tier;
