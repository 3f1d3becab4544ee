"""The PII scan: after the demo workload (the airline story and generated customers, whose
producers send emails, phones, loyalty ids and passport numbers), plus malformed messages
that carry personal data in the wrong places, no such value appears in any ClickHouse table,
on the alerts topic, on any internal topic or in the snapshots of the judge's state, or in
the worker's log.

The dead-letter topic is the one place that keeps raw input (to replay it once fixed): it is
left out here and its retention is configurable (docs/security.md)."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from pipeline.kafka import clients
from pipeline.kafka.admin import Record, producer, read_jsonl, read_to_end, send_all, wait_until_processed
from pipeline.ops.workload import generate
from sinks.clickhouse.client import connect
from tests.integration.conftest import Namespace
from tests.scenario import STORY

PII_KEYS = {"email", "phone", "loyalty_id", "passport_number"}
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]+")

# Producers' mistakes: personal data in the wrong place, in messages that must be rejected.
MALFORMED = [
    ("web", '{"event_id": "bad-1", "occurred_at": "2026-03-02", "identifiers": {"email": "leak.one@example.net"'),
    ("web", {"event_id": "bad-2", "occurred_at": "2026-03-02T10:00:00Z", "type": "form_submit", "session_id": "s",
             "customer_id": "C-1", "form": "f", "fields": ["leak.two@example.net"]}),
    ("web", {"event_id": "bad-3", "occurred_at": "2026-03-02T10:00:00Z", "type": "login",
             "identifiers": {"phone": 447700912345, "email": "leak.three@example.net"}}),
    ("booking", {"event_id": "bad-4", "occurred_at": "X99887766", "type": "passenger_details",
                 "customer_id": "C-1", "booking_ref": "B1", "passport_number": "X99887766"}),
    ("callcenter", {"event_id": "bad-5", "occurred_at": "2026-03-02T10:00:00Z", "type": "call",
                    "customer_id": ["leak.four@example.net"], "reason": "refund_status"}),
]  # fmt: skip
LEAKS = ["leak.one@example.net", "leak.two@example.net", "leak.three@example.net", "leak.four@example.net", "X99887766"]


def _pii_values(obj: Any, key: str = "") -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_pii_values(v, k) for k, v in obj.items())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_pii_values(v, key) for v in obj)) if obj else set()
    if isinstance(obj, str) and key in PII_KEYS:
        forms = {obj, obj.lower()}
        if key == "phone":
            forms.add(re.sub(r"\D", "", obj))
        return forms
    return set()


def test_no_personal_data_value_reaches_clickhouse_alerts_internal_topics_or_logs(space: Namespace) -> None:
    space.env["CEM_WORKER__SNAPSHOT_MIN_TOUCHPOINTS"] = "500"  # so that the scan sees snapshots too
    space.env["CEM_STATE__COMPRESSION"] = "none"  # so that the scan can read the state's files as they are
    space.start_worker()
    ns = space
    s = ns.settings
    lines = [json.loads(x) for x in STORY.read_text().splitlines() if x.strip()] + list(generate(400))
    values = set().union(*(_pii_values(line["value"]) for line in lines)) | set(LEAKS)
    # the scan must have something to find: the input is full of personal data
    assert sum("@" in v for v in values) >= 300
    assert sum(v.startswith("+") for v in values) >= 200
    assert sum(re.fullmatch(r"X\d{8}", v) is not None for v in values) >= 20

    path = ns.tmp / "workload.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ns.cem("produce", str(path), "--wait-profiles")
    bad = [
        Record(getattr(s.kafka.topics, channel), None, v.encode() if isinstance(v, str) else json.dumps(v).encode())
        for channel, v in MALFORMED
    ]
    prod = producer(s)
    send_all(prod, bad)
    prod.close()
    wait_until_processed(s, timeout_s=180)
    stats = ns.stats()
    assert sum(stats["deadletter"].values()) == len(MALFORMED)
    assert stats["touchpoints_judged"] >= sum(1 for r in read_jsonl(path, s) if r.topic != s.kafka.topics.profiles) - 5

    needle = re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)).encode())
    found: dict[str, list[bytes]] = {}

    def scan(where: str, blob: bytes) -> None:
        hits = needle.findall(blob) + EMAIL.findall(blob)
        if hits:
            found[where] = sorted(set(hits))[:5]

    # every table of the database, every column
    ch = connect(s.clickhouse.as_role("admin"))
    tables = [t for (t,) in ch.execute(f"SELECT name FROM system.tables WHERE database = '{ns.db}'")]
    assert {"timeline_versions", "friction_alert_versions", "kpi_daily", "erasure_receipts"} <= set(tables)
    rows_seen = 0
    for table in tables:
        # AggregateFunction columns (kpi_daily) hold uniqExact states: hashes of event ids
        columns = [
            name
            for name, typ in ch.execute(
                f"SELECT name, type FROM system.columns WHERE database = '{ns.db}' AND table = '{table}'"
            )
            if not typ.startswith("AggregateFunction")
        ]
        rows = ch.execute(f"SELECT {', '.join(columns)} FROM {ns.db}.{table}")
        rows_seen += len(rows)
        scan(f"clickhouse {table}", json.dumps(rows, default=str).encode())
    assert rows_seen > 1000

    # every topic of the namespace but the sources (producers' input) and the dead-letter topic
    admin = KafkaAdminClient(**clients.kafka_python(s.kafka))
    tag = s.worker.app_id.removeprefix("cem-test-")
    t = s.kafka.topics
    inputs = {t.web, t.callcenter, t.booking, t.profiles, t.deadletter}
    ours = sorted(name for name in admin.list_topics() if tag in name and name not in inputs)
    admin.close()
    assert {t.alerts, t.by_customer, t.identity, t.snapshots} <= set(ours)
    for topic in ours:
        records = read_to_end(s, topic)
        scan(f"topic {topic}", b"\n".join((r.key or b"") + b" " + (r.value or b"") for r in records))
    # snapshot chunks are compressed: scan what they hold
    chunks = [r.value for r in read_to_end(s, t.snapshots) if r.value and b"/c/" in (r.key or b"")]
    assert chunks, "no snapshot was written"
    scan("snapshots", b"\n".join(zlib.decompress(c) for c in chunks))

    log = ns.worker_log().encode()
    assert b"dead-letter" in log  # the log level shows rejections, so the scan can see their reasons
    scan("worker log", log)

    # the worker's data directory: the RocksDB files of its state and identity index (their
    # write-ahead logs, tables, manifests and logs), as they are on disk once it has stopped
    ns.stop_worker()
    files = [f for f in Path(ns.env["CEM_WORKER__DATA_DIR"]).rglob("*") if f.is_file()]
    state = b"".join(f.read_bytes() for f in files)
    assert len(files) > 10 and b"passport_number" in state  # field names are there, uncompressed
    scan("worker data directory", state)

    assert found == {}
    # what the dead-letter topic keeps is raw on purpose: the scan would have caught it there
    dlq = b"\n".join(r.value or b"" for r in read_to_end(s, t.deadletter))
    assert all(leak.encode() in dlq for leak in LEAKS)
