"""Counters a worker keeps and serves at /cem/stats/ (Prometheus metrics: see issue #3)."""

from __future__ import annotations

from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()  # per source topic
        self.deadletter: Counter[str] = Counter()  # per reason
        self.alerts: Counter[str] = Counter()  # per kind:status
        self.counters: Counter[str] = Counter()  # duplicates, late, rows_written, ...

    def snapshot(self) -> dict[str, Any]:
        return {
            "events_in": dict(self.events_in),
            "deadletter": dict(self.deadletter),
            "alerts": dict(self.alerts),
            **dict(self.counters),
        }
