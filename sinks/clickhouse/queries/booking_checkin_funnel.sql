-- Question: of the customers who booked, how many started and completed check-in?
-- Definition: windowFunnel over each customer's booking-channel events in event time, steps
--   booking_created -> checkin_started -> checkin_completed, each within {funnel_seconds} seconds
--   (default 30 days) of the booking. The window is a literal: 18.16 takes no expressions there. A step counts when the customer reached it in that order.
SELECT
    countIf(level >= 1) AS booked,
    countIf(level >= 2) AS checkin_started,
    countIf(level >= 3) AS checkin_completed,
    round(checkin_completed / booked, 4) AS completion_rate
FROM
(
    SELECT
        customer_id,
        windowFunnel({funnel_seconds})(
            occurred_at, type = 'booking_created', type = 'checkin_started', type = 'checkin_completed'
        ) AS level
    FROM {db}.timeline
    WHERE channel = 'booking'
    GROUP BY customer_id
) AS funnel
