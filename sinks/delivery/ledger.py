"""What was delivered where: the decisions of the delivery service, as pure code.

The ledger is kept in a compacted Kafka topic (one record per destination and alert), read
back at start-up, so a restarted service neither re-delivers nor forgets a cooldown.

It is bounded: entries further behind the newest alert (event time) than the retention are
forgotten, and so are the oldest ones past `max_entries`. A forgotten delivery gets a
tombstone on the topic, so compaction drops it and start-up reads stay bounded too.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from schemas.alert import FrictionAlert

DAY_US = 86_400 * 1_000_000
K = TypeVar("K")


class Decision(StrEnum):
    DELIVER = "deliver"
    ALREADY_DELIVERED = "already_delivered"  # this destination has this alert in this status
    COOLDOWN = "cooldown"  # the route told this customer's matter/field too recently
    NOTHING_TO_RETRACT = "nothing_to_retract"  # the open alert never went to this destination
    ALREADY_FAILED = "already_failed"  # this open alert was given up for this destination


def subject(alert: FrictionAlert) -> str:
    return alert.matter or alert.field or ""


def _micros(alert: FrictionAlert) -> int:
    return int(alert.occurred_at.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Pruned:
    keys: list[bytes]  # ledger-topic keys of the forgotten deliveries: tombstone them
    expired: int  # entries older than the retention
    evicted: int  # entries within the retention, forgotten because a map was full


def _oldest_past_cap(entries: dict[K, Any], time_of: Any, cap: int) -> list[K]:
    """The oldest entries to drop once a map holds more than `cap`: down to 90 % of it, so
    that a full map is not scanned again for every new entry."""
    if len(entries) <= cap:
        return []
    n = len(entries) - cap + cap // 10
    return [k for k, _ in heapq.nsmallest(n, entries.items(), key=lambda kv: time_of(kv[1]))]


@dataclass
class Ledger:
    retention_us: int = 8 * DAY_US
    max_entries: int = 500_000
    # (destination, alert_id) -> (state, event time in µs). State: what the destination holds,
    # "open" | "retracted"; or "suppressed" (cooldown); or "failed" (the open alert was given up)
    delivered: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # (route, customer, subject) -> (event time, alert id) of the last open alert the route let through
    last_open: dict[tuple[str, str, str], tuple[int, str]] = field(default_factory=dict)
    newest_us: int = 0  # event time of the newest alert recorded: pruning's clock
    _pruned_at_us: int = 0

    def decide(self, route: str, destination: str, alert: FrictionAlert, cooldown_minutes: int) -> Decision:
        entry = self.delivered.get((destination, alert.alert_id))
        before = entry[0] if entry else None
        if alert.status == "retracted":
            return Decision.DELIVER if before == "open" else Decision.NOTHING_TO_RETRACT
        if before == "open":
            return Decision.ALREADY_DELIVERED
        if before == "suppressed":
            return Decision.COOLDOWN
        if before == "failed":
            return Decision.ALREADY_FAILED
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

    def record(
        self, route: str, destination: str, alert: FrictionAlert, outcome: str, reason: str | None = None
    ) -> dict[str, Any]:
        """Apply an outcome (delivered status, "suppressed" or "failed") and return its ledger record."""
        rec = {
            "route": route,
            "destination": destination,
            "alert_id": alert.alert_id,
            "customer_id": alert.customer_id,
            "subject": subject(alert),
            "occurred_at_us": _micros(alert),
            "outcome": outcome,
            "status": alert.status,
            "revision": alert.revision,
        }
        if reason is not None:
            rec["reason"] = reason
        self.apply(rec)
        return rec

    def apply(self, rec: dict[str, Any]) -> None:
        state = rec["outcome"]
        if state == "failed" and rec.get("status") == "retracted":
            state = "open"  # the retraction was given up: the destination still holds the alert
        t = rec["occurred_at_us"]
        self.delivered[(rec["destination"], rec["alert_id"])] = (state, t)
        if state in ("open", "failed"):  # the route let it through: its cooldown runs either way
            self._open(rec["route"], rec["customer_id"], rec["subject"], t, rec["alert_id"])
        self.newest_us = max(self.newest_us, t)

    def prune(self, ceiling_us: int | None = None) -> Pruned:
        """Forget what is older than the retention behind the newest alert, then the oldest past
        `max_entries`. `ceiling_us` bounds the newest event time (the clock, plus the skew
        allowed): one alert dated in the far future must not wipe the ledger."""
        now = self.newest_us if ceiling_us is None else min(self.newest_us, ceiling_us)
        self._pruned_at_us = self.newest_us
        cutoff = now - self.retention_us
        gone = [k for k, (_, t) in self.delivered.items() if t < cutoff]
        stale = [k for k, (t, _) in self.last_open.items() if t < cutoff]
        expired = len(gone) + len(stale)
        for k in gone:
            del self.delivered[k]
        for s in stale:
            del self.last_open[s]
        full = _oldest_past_cap(self.delivered, lambda v: v[1], self.max_entries)
        full_open = _oldest_past_cap(self.last_open, lambda v: v[0], self.max_entries)
        for k in full:
            del self.delivered[k]
        for s in full_open:
            del self.last_open[s]
        keys = [self._key(d, a) for d, a in gone + full]
        return Pruned(keys, expired, len(full) + len(full_open))

    def prune_due(self) -> bool:
        """A map is over its cap, or the newest alert moved a sixteenth of the retention on."""
        return (
            len(self.delivered) > self.max_entries
            or len(self.last_open) > self.max_entries
            or self.newest_us - self._pruned_at_us >= self.retention_us // 16
        )

    @staticmethod
    def _key(destination: str, alert_id: str) -> bytes:
        return f"{destination}/{alert_id}".encode()

    @staticmethod
    def key(rec: dict[str, Any]) -> bytes:
        return Ledger._key(rec["destination"], rec["alert_id"])
