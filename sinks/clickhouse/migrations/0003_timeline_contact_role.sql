-- The contact role of a timeline row: '' (not an assisted contact), 'new', or 'continuation'
-- (a transfer or consult leg of an earlier contact). Contact-centre metrics count only new
-- contacts: a transferred call is one contact, not two. A late event can change a row's role
-- (the leg it continues arrives later), and the row is then rewritten like any flag change.
ALTER TABLE {db}.timeline_versions ADD COLUMN contact String DEFAULT '' AFTER matter;

DROP TABLE IF EXISTS {db}.timeline;

CREATE VIEW {db}.timeline AS
SELECT
    customer_id, occurred_at, event_id, channel, type, matter, contact, place, agent_id, fields,
    friction, reentered_fields, loyalty_tier, profile_version, resolved_by,
    _topic, _partition, _offset, _version, ingested_at
FROM {db}.timeline_versions FINAL;
