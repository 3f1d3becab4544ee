-- Question: per matter and week, how many customer contacts were repeats, and how many were
--           resolved at first contact (FCR)?
-- Definitions (see docs/analysts.md):
--   contacts        new assisted contacts (calls, chats, emails, web contact forms and chats);
--                   transfer/consult legs (contact = 'continuation') are part of the contact
--                   they continue and are not counted again.
--   repeat_contacts contacts flagged repeat_contact: the same customer had another new contact
--                   on the same matter in the preceding {window_days} days (backward-looking).
--   fcr_rate        share of contacts *not* followed by another new contact of the same customer
--                   on the same matter within {window_days} days (forward-looking, any channel).
--   provisional     1 when the week's last contacts are less than {window_days} days before the
--                   newest event in the data: their come-backs may not have happened yet
--                   (right-censoring). Treat those FCR numbers as provisional.
SELECT
    week,
    matter,
    count() AS contacts,
    sum(is_repeat) AS repeat_contacts,
    round(repeat_contacts / contacts, 4) AS repeat_rate,
    round(1 - sum(came_back) / contacts, 4) AS fcr_rate,
    toUInt8(week + 6 + {window_days} > (SELECT toDate(max(occurred_at)) FROM {db}.timeline)) AS provisional
FROM
(
    SELECT
        toMonday(toDateTime(t, 'UTC')) AS week,
        matter,
        is_repeat,
        toUInt8(arrayExists(x -> x > t AND x <= t + {window_days} * 86400, times)) AS came_back
    FROM
    (
        SELECT
            customer_id,
            matter,
            groupArray(toUInt32(occurred_at)) AS times,
            groupArray(toUInt8(has(friction, 'repeat_contact'))) AS repeats
        FROM {db}.timeline
        WHERE contact = 'new' AND matter != ''
        GROUP BY customer_id, matter
    ) AS per_customer
    ARRAY JOIN times AS t, repeats AS is_repeat
) AS per_contact
GROUP BY week, matter
ORDER BY week, matter
