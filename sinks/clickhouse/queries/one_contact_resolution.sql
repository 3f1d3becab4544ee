-- Question: per matter, how often is a customer's matter settled in one contact on *any*
--           channel (one-contact resolution, OCR), compared with the call-centre-only view (FCR)?
-- Definitions:
--   ocr_rate   share of new contacts (all channels) not followed by another new contact of the
--              same customer on the same matter, on any channel, within {window_days} days.
--   fcr_calls  the same, counting only call-centre contacts and call-centre come-backs: the number
--              a contact-centre report shows. OCR below FCR means customers switch channels.
-- Caveat: contacts in the last {window_days} days of the data are right-censored (see the
--         repeat-rate query).
SELECT
    matter,
    count() AS contacts,
    round(1 - sum(came_back_any) / contacts, 4) AS ocr_rate,
    countIf(channel = 'call_center') AS call_contacts,
    round(1 - sumIf(came_back_call, channel = 'call_center') / call_contacts, 4) AS fcr_calls
FROM
(
    SELECT
        matter,
        channel,
        toUInt8(arrayExists(x -> x > t AND x <= t + {window_days} * 86400, times)) AS came_back_any,
        toUInt8(arrayExists((x, c) -> x > t AND x <= t + {window_days} * 86400 AND c = 'call_center',
                            times, channels)) AS came_back_call
    FROM
    (
        SELECT
            customer_id,
            matter,
            groupArray(toUInt32(occurred_at)) AS times,
            groupArray(toString(channel)) AS channels
        FROM {db}.timeline
        WHERE contact = 'new' AND matter != ''
        GROUP BY customer_id, matter
    ) AS per_customer
    ARRAY JOIN times AS t, channels AS channel
) AS per_contact
GROUP BY matter
ORDER BY matter
