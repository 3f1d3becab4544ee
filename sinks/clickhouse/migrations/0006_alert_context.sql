-- The "already told us" context of each alert, as JSON: previous contacts on the matter (when,
-- channel, agent, outcome) and the fields the customer already gave and where (names only).
-- Read it with visitParamExtract* / JSONExtract* (24+), or in Python.
ALTER TABLE {db}.friction_alert_versions ADD COLUMN context String DEFAULT '' AFTER trigger_channel;

DROP TABLE IF EXISTS {db}.friction_alerts;

CREATE VIEW {db}.friction_alerts AS
SELECT
    alert_id, status, kind, customer_id, severity, occurred_at, detected_at, matter, field,
    count, window_days, channels, distinct_agents, places, known_in_crm, evidence,
    loyalty_tier, summary, trigger_event_id, trigger_channel, context, revision,
    _topic, _partition, _offset, ingested_at
FROM {db}.friction_alert_versions FINAL;
