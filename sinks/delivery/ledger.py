"""What was delivered where: the decisions of the delivery service, as pure code.

The ledger is kept in a compacted Kafka topic (one record per destination and alert), read
back at start-up, so a restarted service neither re-delivers nor forgets a cooldown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.alert import FrictionAlert


class Decision(StrEnum):
    DELIVER = "deliver"
    ALREADY_DELIVERED = "already_delivered"  # this destination has this alert in this status
    COOLDOWN = "cooldown"  # the route told this customer's matter/field too recently
    NOTHING_TO_RETRACT = "nothing_to_retract"  # the open alert never went to this destination


def subject(alert: FrictionAlert) -> str:
    return alert.matter or alert.field or ""


def _micros(alert: FrictionAlert) -> int:
    return int(alert.occurred_at.timestamp() * 1_000_000)


@dataclass
class Ledger:
    # (destination, alert_id) -> status last delivered ("open" | "retracted") or "suppressed"
    delivered: dict[tuple[str, str], str] = field(default_factory=dict)
    # (route, customer, subject) -> (event time, alert id) of the last open alert the route let through
    last_open: dict[tuple[str, str, str], tuple[int, str]] = field(default_factory=dict)

    def decide(self, route: str, destination: str, alert: FrictionAlert, cooldown_minutes: int) -> Decision:
        before = self.delivered.get((destination, alert.alert_id))
        if alert.status == "retracted":
            return Decision.DELIVER if before == "open" else Decision.NOTHING_TO_RETRACT
        if before == "open":
            return Decision.ALREADY_DELIVERED
        if before == "suppressed":
            return Decision.COOLDOWN
        if cooldown_minutes > 0:
            last = self.last_open.get((route, alert.customer_id, subject(alert)))
            if (
                last is not None
                and last[1] != alert.alert_id
                and abs(_micros(alert) - last[0]) < cooldown_minutes * 60_000_000
            ):
                return Decision.COOLDOWN
        return Decision.DELIVER

    def let_through(self, route: str, alert: FrictionAlert) -> None:
        """Start the route's cooldown when it lets an open alert through (before delivery ends)."""
        self._open(route, alert.customer_id, subject(alert), _micros(alert), alert.alert_id)

    def _open(self, route: str, customer: str, subj: str, t: int, alert_id: str) -> None:
        key = (route, customer, subj)
        current = self.last_open.get(key)
        if current is None or t >= current[0]:
            self.last_open[key] = (t, alert_id)

    def record(self, route: str, destination: str, alert: FrictionAlert, outcome: str) -> dict[str, Any]:
        """Apply an outcome (delivered status, or "suppressed") and return its ledger record."""
        rec = {
            "route": route,
            "destination": destination,
            "alert_id": alert.alert_id,
            "customer_id": alert.customer_id,
            "subject": subject(alert),
            "occurred_at_us": _micros(alert),
            "outcome": outcome,
            "revision": alert.revision,
        }
        self.apply(rec)
        return rec

    def apply(self, rec: dict[str, Any]) -> None:
        self.delivered[(rec["destination"], rec["alert_id"])] = rec["outcome"]
        if rec["outcome"] == "open":
            self._open(rec["route"], rec["customer_id"], rec["subject"], rec["occurred_at_us"], rec["alert_id"])

    @staticmethod
    def key(rec: dict[str, Any]) -> bytes:
        return f"{rec['destination']}/{rec['alert_id']}".encode()
