"""`cem rules backfill`: a rule's flags and alerts over the past, written into ClickHouse.

Idempotent by construction: an alert's id is the one the live judge gives the same alert
(processors.judge.alert_id), and an alert id already in the table (written live, or by an
earlier backfill) is left alone; a timeline row already flagged with the rule is left alone,
and one that is not gets a new version (its `_version` + 1) with the rule's name added to
`friction`. Backfilled alerts say so (`backfilled` = 1) and are not published on the alerts
topic: they describe the past.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.engine.rows import alert_row
from pipeline.ops.rules_preview import Executor, Preview
from processors.judge import AlertVersion, alert_body, alert_id
from processors.model import AlertDraft
from sinks.clickhouse.writer import ALERT_COLUMNS, TIMELINE_COLUMNS, now_seconds

BATCH = 1000


@dataclass
class Backfilled:
    rows: int = 0
    rows_already: int = 0
    alerts: int = 0
    alerts_already: int = 0


def _q(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def backfill(
    client: Executor, db: str, spec: Any, result: Preview, drafts: list[AlertDraft], dry_run: bool = False
) -> Backfilled:
    out = Backfilled()
    now = now_seconds()
    # alerts
    ids = [alert_id(d.kind, d.customer_id, d.subject, d.trigger_uid) for d in drafts]
    there: set[str] = set()
    for i in range(0, len(ids), BATCH):
        listed = ", ".join(_q(a) for a in ids[i : i + BATCH])
        there |= {r[0] for r in client.execute(f"SELECT alert_id FROM {db}.friction_alert_versions "
                                               f"WHERE alert_id IN ({listed}) GROUP BY alert_id")}  # fmt: skip
    rows = []
    for aid, d in zip(ids, drafts, strict=True):
        if aid in there:
            out.alerts_already += 1
            continue
        body = alert_body(d, min(d.first_t or d.t, d.t))
        body["backfilled"] = True
        rows.append(alert_row(AlertVersion(aid, "open", 1, now * 1_000_000, body), ("", 0, 0), now))
        there.add(aid)
    out.alerts = len(rows)
    if rows and not dry_run:
        for i in range(0, len(rows), BATCH):
            client.execute(f"INSERT INTO {db}.friction_alert_versions ({', '.join(ALERT_COLUMNS)}) VALUES",
                           rows[i : i + BATCH])  # fmt: skip
    # flags
    keys = [(f.customer_id, f.channel, f.event_id) for f in result.flags]
    name = spec.name
    at = {c: i for i, c in enumerate(TIMELINE_COLUMNS)}
    for i in range(0, len(keys), BATCH):
        listed = ", ".join(f"({_q(c)}, {_q(ch)}, {_q(e)})" for c, ch, e in keys[i : i + BATCH])
        found = client.execute(
            f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM {db}.timeline "
            f"WHERE (customer_id, toString(channel), event_id) IN ({listed})"
        )
        new = []
        for row in found:
            row = list(row)
            if name in row[at["friction"]]:
                out.rows_already += 1
                continue
            row[at["friction"]] = [*row[at["friction"]], name]
            row[at["_version"]] += 1
            row[at["ingested_at"]] = now
            new.append(tuple(row))
        out.rows += len(new)
        if new and not dry_run:
            client.execute(f"INSERT INTO {db}.timeline_versions ({', '.join(TIMELINE_COLUMNS)}) VALUES", new)
    return out
