-- Question: whose contacts most often leave the customer coming back about the same matter?
-- Definition: for each agent, the new call-centre contacts they handled, and how many were
--   followed by another new contact of the same customer on the same matter (any channel)
--   within {window_days} days. Transfer legs (continuations) are not counted for anyone.
-- Caveats: small numbers say little; set {min_contacts}. Matters differ in difficulty: compare
--   agents within a matter or queue before drawing conclusions. Right-censoring applies.
SELECT
    agent_id,
    count() AS contacts,
    sum(came_back) AS followed_by_repeat,
    round(followed_by_repeat / contacts, 4) AS repeat_after_rate
FROM
(
    SELECT
        agent,
        toUInt8(arrayExists(x -> x > t AND x <= t + {window_days} * 86400, times)) AS came_back
    FROM
    (
        SELECT
            customer_id,
            matter,
            groupArray(toUInt32(occurred_at)) AS times,
            groupArray(if(channel = 'call_center', agent_id, '')) AS agents
        FROM {db}.timeline
        WHERE contact = 'new' AND matter != ''
        GROUP BY customer_id, matter
    ) AS per_customer
    ARRAY JOIN times AS t, agents AS agent
    WHERE agent != ''
) AS per_contact
GROUP BY agent AS agent_id
HAVING contacts >= {min_contacts}
ORDER BY repeat_after_rate DESC, contacts DESC, agent_id
