-- Question: which customers meet the most friction right now?
-- Definitions: repeat_contacts and reentry_touchpoints are timeline rows flagged with that kind;
--   open_alerts counts alerts whose latest revision is open; high_alerts those of severity high.
-- Ordered by open alerts, then repeat contacts; customers without friction are left out.
SELECT
    t.customer_id AS customer_id,
    any(t.loyalty_tier) AS loyalty_tier,
    sum(t.repeat_contacts) AS repeat_contacts,
    sum(t.reentry_touchpoints) AS reentry_touchpoints,
    any(a.open_alerts) AS open_alerts,
    any(a.high_alerts) AS high_alerts
FROM
(
    SELECT
        customer_id,
        argMax(loyalty_tier, occurred_at) AS loyalty_tier,
        countIf(has(friction, 'repeat_contact')) AS repeat_contacts,
        countIf(has(friction, 're_entry')) AS reentry_touchpoints
    FROM {db}.timeline
    GROUP BY customer_id
) AS t
ANY LEFT JOIN
(
    SELECT
        customer_id,
        countIf(status = 'open') AS open_alerts,
        countIf(status = 'open' AND severity = 'high') AS high_alerts
    FROM {db}.friction_alerts
    GROUP BY customer_id
) AS a USING (customer_id)
GROUP BY customer_id
HAVING repeat_contacts + reentry_touchpoints + open_alerts > 0
ORDER BY open_alerts DESC, repeat_contacts DESC, customer_id
LIMIT {limit}
