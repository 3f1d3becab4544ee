"""Events later than the allowed lateness land in the timeline, are counted, and crash nothing."""

from __future__ import annotations

import json

from pipeline.kafka.admin import Record, producer, send_all, wait_until_processed
from tests.integration.conftest import Namespace


def call(event_id: str, at: str) -> bytes:
    return json.dumps({"event_id": event_id, "occurred_at": at, "type": "call", "customer_id": "L-1",
                       "reason": "refund_status", "agent_id": "A-1"}).encode()  # fmt: skip


def test_very_late_events_land_and_are_counted(ns: Namespace) -> None:
    topic = ns.settings.kafka.topics.callcenter
    prod = producer(ns.settings)
    send_all(prod, [Record(topic, None, call("now-1", "2026-03-30T10:00:00Z"))])
    wait_until_processed(ns.settings, timeout_s=120)
    late = [
        call("late-1", "2026-03-29T10:00:00Z"),  # 1 day behind: within the allowed lateness
        call("late-20", "2026-03-10T10:00:00Z"),  # 20 days behind: beyond it, still in the kept history
        call("late-88", "2026-01-01T10:00:00Z"),  # 88 days behind: older than anything kept
        call("late-88", "2026-01-01T10:00:00Z"),  # and its duplicate
    ]
    send_all(prod, [Record(topic, None, raw) for raw in late])
    prod.close()
    wait_until_processed(ns.settings, timeout_s=120)
    rows = ns.ch().execute(f"SELECT event_id, friction FROM {ns.db}.timeline ORDER BY occurred_at")
    assert rows == [
        ("late-88", []),
        ("late-20", []),
        ("late-1", []),
        ("now-1", ["repeat_contact"]),  # corrected by late-1, which arrived within the lateness
    ]
    stats = ns.stats()
    # late-20, late-88, and late-88 again: an event older than the kept history is pruned once
    # judged, so its duplicate is judged (and counted) again; the view still shows it once
    assert stats["late_events"] == 3 and stats["duplicates"] == 0
    assert ns.worker is not None and ns.worker.poll() is None and stats["ready"]
