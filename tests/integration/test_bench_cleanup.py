"""A benchmark run removes what it left on the stack: its topics, consumer groups, ClickHouse
databases and worker data, and nothing of another run's; its logs stay."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from kafka.admin import NewTopic

from bench.cleanup import clean_up
from pipeline.kafka.admin import admin_client, ensure_topics
from sinks.clickhouse.client import connect
from tests.integration.conftest import Namespace


def _topics(space: Namespace, part: str) -> set[str]:
    admin = admin_client(space.settings)
    try:
        return {t for t in admin.list_topics() if part in t}
    finally:
        admin.close()


def test_a_run_removes_its_own_and_nothing_else(space: Namespace, tmp_path: Path) -> None:
    ours, other = uuid.uuid4().hex[:6], uuid.uuid4().hex[:6]
    names = {
        tag: [f"bench{tag}.web", f"bench{tag}.alerts", f"bench-baseline-{tag}-table-changelog"] for tag in (ours, other)
    }
    ensure_topics(space.settings, [NewTopic(t, 2, 1) for tag in (ours, other) for t in names[tag]])
    ch = connect(space.settings.clickhouse.as_role("admin"), "default")
    for db in (f"bench_{ours}", f"bench_{ours}one", f"bench_{other}"):
        ch.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    root = tmp_path / "bench"
    for tag in (ours, other):
        (root / tag / "w0" / "state" / "0").mkdir(parents=True)
        (root / tag / "w0" / "state" / "0" / "000012.sst").write_bytes(b"x" * 4000)
        (root / tag / "w0" / "state" / "0" / "000013.log").write_bytes(b"w" * 96)  # RocksDB's write-ahead log
        (root / tag / "main-worker0.log").write_text("log\n")
        (root / f"bench-baseline-{tag}-data" / "v1").mkdir(parents=True)
        (root / f"bench-baseline-{tag}-data" / "v1" / "table.db").write_bytes(b"y" * 1024)

    removed = clean_up(space.settings, ours, root)

    assert removed.topics == 3 and removed.databases == 2 and removed.bytes == 4096 + 1024
    deadline = time.monotonic() + 30
    while _topics(space, ours) and time.monotonic() < deadline:  # deletion is asynchronous
        time.sleep(0.5)
    assert _topics(space, ours) == set()
    assert _topics(space, other) == set(names[other])
    dbs = {r[0] for r in ch.execute("SELECT name FROM system.databases") if ours in r[0] or other in r[0]}
    assert dbs == {f"bench_{other}"}
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ours in p.as_posix()) == [
        ours,
        f"{ours}/main-worker0.log",
    ]
    assert (root / other / "w0" / "state" / "0" / "000012.sst").exists() and (
        root / f"bench-baseline-{other}-data"
    ).exists()

    clean_up(space.settings, other, root)
    assert {r[0] for r in ch.execute("SELECT name FROM system.databases") if other in r[0]} == set()
