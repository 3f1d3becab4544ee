-- Question: how much friction does each rule of the rule file find: touchpoints flagged,
--   customers, open alerts?
-- Definitions: a rule's flagged touchpoints are timeline rows whose friction names it (the
--   rule's name, config/rules.yaml); open_alerts counts the rule's alerts (kind = the rule's
--   name) whose latest revision is open, high_alerts those of severity high, backfilled_alerts
--   those written over the past by `cem rules backfill`. A rule that flagged nothing and raised
--   no alert does not show (preview it: `cem rules preview RULE`).
SELECT
    rule,
    sum(flagged) AS flagged_touchpoints,
    sum(customers) AS customers,
    sum(open_alerts) AS open_alerts,
    sum(high_alerts) AS high_alerts,
    sum(backfilled) AS backfilled_alerts
FROM
(
    SELECT
        rule,
        count() AS flagged,
        uniqExact(customer_id) AS customers,
        toUInt64(0) AS open_alerts,
        toUInt64(0) AS high_alerts,
        toUInt64(0) AS backfilled
    FROM {db}.timeline
    ARRAY JOIN friction AS rule
    GROUP BY rule
    UNION ALL
    SELECT
        toString(kind) AS rule,
        toUInt64(0) AS flagged,
        toUInt64(0) AS customers,
        countIf(status = 'open') AS open_alerts,
        countIf(status = 'open' AND severity = 'high') AS high_alerts,
        countIf(status = 'open' AND backfilled = 1) AS backfilled
    FROM {db}.friction_alerts
    GROUP BY rule
) AS per_source
GROUP BY rule
ORDER BY open_alerts DESC, flagged_touchpoints DESC, rule
LIMIT {limit}
