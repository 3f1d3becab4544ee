-- Question: when customers come back about the same matter, how soon do they come back?
-- Definition: for every repeat contact, the hours since the same customer's previous new
--   contact on the same matter (only gaps within the {window_days}-day repeat window).
--   Short gaps point at answers that did not hold; long ones at follow-ups that never came.
SELECT
    matter,
    count() AS repeat_contacts,
    round(avg(gap) / 3600, 2) AS avg_hours,
    round(min(gap) / 3600, 2) AS min_hours,
    round(max(gap) / 3600, 2) AS max_hours
FROM
(
    SELECT matter, gap
    FROM
    (
        SELECT
            customer_id,
            matter,
            arrayDifference(arraySort(groupArray(toInt64(toUInt32(occurred_at))))) AS gaps
        FROM {db}.timeline
        WHERE contact = 'new' AND matter != ''
        GROUP BY customer_id, matter
    ) AS per_customer
    ARRAY JOIN gaps AS gap, arrayEnumerate(gaps) AS i
    WHERE i > 1 AND gap <= {window_days} * 86400
) AS repeats
GROUP BY matter
ORDER BY matter
