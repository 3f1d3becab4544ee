-- Friction rules as configuration (config/rules.yaml, docs/rules.md).
--
-- An alert's kind is the name of the rule that raised it: repeat_contact and re_entry as
-- before, and whatever rules the rule file holds, so it becomes a String. rule_version is
-- the rule's version when it raised the alert; backfilled = 1 for alerts written by
-- `cem rules backfill` over the history rather than by the live judge.
ALTER TABLE {db}.friction_alert_versions MODIFY COLUMN kind String;

ALTER TABLE {db}.friction_alert_versions ADD COLUMN rule_version UInt32 DEFAULT 1 AFTER kind;

ALTER TABLE {db}.friction_alert_versions ADD COLUMN backfilled UInt8 DEFAULT 0 AFTER revision;

-- What a rule can test that the timeline did not keep, so that `cem rules preview` computes
-- a rule over the history with the same inputs as the live judge: the contact's outcome, the
-- first contact of its continuation chain (chain rules; '' for events that are not contacts),
-- and the fields the CRM already held when the event was processed (names only; known_entry).
ALTER TABLE {db}.timeline_versions ADD COLUMN outcome String DEFAULT '' AFTER contact;

ALTER TABLE {db}.timeline_versions ADD COLUMN chain String DEFAULT '' AFTER outcome;

ALTER TABLE {db}.timeline_versions ADD COLUMN crm_known Array(String) AFTER fields;

DROP TABLE IF EXISTS {db}.timeline;

CREATE VIEW {db}.timeline AS
SELECT
    customer_id, occurred_at, event_id, channel, type, matter, contact, outcome, chain, place, agent_id,
    fields, crm_known, friction, reentered_fields, loyalty_tier, profile_version, resolved_by,
    _topic, _partition, _offset, _version, ingested_at
FROM {db}.timeline_versions FINAL;

DROP TABLE IF EXISTS {db}.friction_alerts;

CREATE VIEW {db}.friction_alerts AS
SELECT
    alert_id, status, kind, rule_version, customer_id, severity, occurred_at, detected_at, matter, field,
    count, window_days, channels, distinct_agents, places, known_in_crm, evidence,
    loyalty_tier, summary, trigger_event_id, trigger_channel, context, revision, backfilled,
    _topic, _partition, _offset, ingested_at
FROM {db}.friction_alert_versions FINAL;
