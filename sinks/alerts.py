"""Friction alerts as published on `cem.friction.alerts` (keyed by customer_id)."""

from __future__ import annotations

from processors.judge import AlertVersion
from processors.normalize import from_micros
from schemas.alert import AlertContext, FrictionAlert


def to_alert(a: AlertVersion) -> FrictionAlert:
    b = a.body
    return FrictionAlert(
        alert_id=a.alert_id,
        status=a.status,
        kind=b["kind"],
        customer_id=b["customer_id"],
        severity=b["severity"],
        occurred_at=from_micros(b["t"]),
        detected_at=from_micros(a.detected_at),
        matter=b["matter"],
        field=b["field"],
        count=b["count"],
        window_days=b["window_days"],
        channels=b["channels"],
        distinct_agents=b["distinct_agents"],
        places=b["places"],
        known_in_crm=b["known_in_crm"],
        evidence=b["evidence"],
        loyalty_tier=b["loyalty_tier"],
        summary=b["summary"],
        trigger_event_id=b["trigger"],
        trigger_channel=b["trigger_channel"],
        context=AlertContext.model_validate(b.get("context", {})),
        revision=a.revision,
    )
