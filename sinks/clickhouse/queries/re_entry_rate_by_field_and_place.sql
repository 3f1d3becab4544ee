-- Question: which forms, booking steps and queues make customers give us personal data again
--           (the "once only" principle), and which fields?
-- Definitions:
--   entries    times the field was typed or said at that place (field names only, never values).
--   reentries  entries that were re-entries: the CRM already held the field when the event was
--              processed, or the customer had entered it at another place within the re-entry
--              window.
--   place      channel:form (web), channel:step (booking), channel:queue (call centre).
SELECT
    field,
    place,
    count() AS entries,
    countIf(has(reentered_fields, field)) AS reentries,
    round(reentries / entries, 4) AS reentry_rate
FROM {db}.timeline
ARRAY JOIN fields AS field
GROUP BY field, place
ORDER BY reentries DESC, field, place
