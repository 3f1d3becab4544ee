"""The core's verdicts as the rows the ClickHouse sink writes (`sinks.clickhouse.writer`):
the sink takes plain tuples, in its tables' column order, and knows nothing of the core."""

from __future__ import annotations

from typing import Any

import orjson

from processors.judge import AlertVersion, RowVersion


def timeline_row(row: RowVersion, ingested_at: int) -> tuple[Any, ...]:
    """`ingested_at` and the DateTime columns as whole seconds since the epoch: the driver
    takes integers as they are, where each datetime costs it a time-zone conversion (a tenth
    of the worker's time in a profile)."""
    t = row.touch
    return (
        t.customer_id, t.t // 1_000_000, t.event_id, t.channel, t.type, t.matter, row.contact, t.outcome, row.chain,
        t.place, t.agent_id, t.fields, t.crm_known, row.friction, row.reentered, t.loyalty_tier, t.profile_version,
        t.resolved_by, t.topic, max(t.partition, 0), max(t.offset, 0), row.revision, ingested_at,
    )  # fmt: skip


def alert_row(a: AlertVersion, provenance: tuple[str, int, int], ingested_at: int) -> tuple[Any, ...]:
    b = a.body
    return (
        a.alert_id, a.status, b["kind"], b.get("rule_version", 1), b["customer_id"], b["severity"], b["t"] // 1_000_000,
        a.detected_at // 1_000_000, b["matter"] or "", b["field"] or "", b["count"], b["window_days"],
        b["channels"], b["distinct_agents"], b["places"], int(b["known_in_crm"]), b["evidence"],
        b["loyalty_tier"], b["summary"], b["trigger"], b["trigger_channel"],
        orjson.dumps(b.get("context", {})).decode(), a.revision, int(b.get("backfilled", False)), provenance[0],
        max(provenance[1], 0),
        max(provenance[2], 0), ingested_at,
    )  # fmt: skip
