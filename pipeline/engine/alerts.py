"""Friction alerts as published on `cem.friction.alerts` (keyed by customer_id)."""

from __future__ import annotations

from processors.judge import AlertVersion
from processors.normalize import from_micros
from schemas.alert import AlertContext, FrictionAlert

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
        **{name: b[name] for name in _SAME_NAME},
    )
