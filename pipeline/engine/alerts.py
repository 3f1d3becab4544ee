"""Friction alerts as published on `cem.friction.alerts` (keyed by customer_id)."""

from __future__ import annotations

import logging

from pipeline.engine.sends import MESSAGE_BYTES
from processors.judge import AlertVersion
from processors.normalize import from_micros
from schemas.alert import AlertContext, FrictionAlert

log = logging.getLogger("cem.judge")

#: alert fields that the judge's alert body holds under the same name
_SAME_NAME = (
    "kind", "customer_id", "severity", "matter", "field", "count", "window_days", "channels",
    "distinct_agents", "places", "known_in_crm", "evidence", "loyalty_tier", "summary", "trigger_channel",
)  # fmt: skip


def to_alert(a: AlertVersion) -> FrictionAlert:
    b = a.body
    return FrictionAlert(
        alert_id=a.alert_id,
        status=a.status,
        occurred_at=from_micros(b["t"]),
        detected_at=from_micros(a.detected_at),
        trigger_event_id=b["trigger"],
        context=AlertContext.model_validate(b.get("context", {})),
        revision=a.revision,
        rule_version=b.get("rule_version", 1),
        backfilled=b.get("backfilled", False),
        **{name: b[name] for name in _SAME_NAME},
    )


def alert_message(a: AlertVersion) -> bytes:
    """The alert as published. The rules' caps keep it far below the limit; past it, the
    parts that can grow lose their tail, since a message that cannot be sent stops the partition."""
    alert = to_alert(a)
    payload = alert.model_dump_json().encode()
    if len(payload) > MESSAGE_BYTES:
        log.warning("alert %s is %d bytes: its context and evidence are cut", a.alert_id, len(payload))
        cut = {"context": AlertContext(), "evidence": alert.evidence[:100], "summary": alert.summary[:1000],
               "places": alert.places[:100], "channels": alert.channels[:10]}  # fmt: skip
        payload = alert.model_copy(update=cut).model_dump_json().encode()
    return payload
