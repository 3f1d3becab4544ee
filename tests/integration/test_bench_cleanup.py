"""A benchmark run removes what it left on the stack: its topics, consumer groups, ClickHouse
databases and worker data, and nothing of another run's or anyone else's; its logs stay.
Removing every run's passes a run in progress by."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from bench.cleanup import claim, clean_up, release
from pipeline.kafka import clients
from pipeline.kafka.admin import admin_client, ensure_topics
from sinks.clickhouse.client import connect
from tests.integration.conftest import Namespace


def _topics(space: Namespace, part: str) -> set[str]:
    admin = admin_client(space.settings)
    try:
        return {t for t in admin.list_topics() if part in t}
    finally:
        admin.close()


def _groups(space: Namespace, part: str) -> set[str]:
    admin = admin_client(space.settings)
    try:
        return {g for g, _ in admin.list_consumer_groups() if part in g}
    finally:
        admin.close()


def _gone(space: Namespace, part: str) -> set[str]:
    """The topics named with `part` once a deletion has gone through (it is asynchronous)."""
    deadline = time.monotonic() + 30
    while (left := _topics(space, part)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _run_leftovers(space: Namespace, root: Path, tag: str, ch: Any) -> None:
    """What a run of `tag` leaves: topics, a consumer group with offsets, databases, data."""
    topics = [f"bench{tag}.web", f"bench-{tag}-__assignor-__leader", f"bench-baseline-{tag}-customers-changelog"]
    ensure_topics(space.settings, [NewTopic(t, 2, 1) for t in topics])
    consumer = KafkaConsumer(**clients.kafka_python(space.settings.kafka), group_id=f"bench-{tag}-judge")
    consumer.commit({TopicPartition(topics[0], 0): OffsetAndMetadata(0, "", -1)})
    consumer.close()
    for db in (f"bench_{tag}", f"bench_{tag}one"):
        ch.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    for data in (root / tag / "w0" / "state" / "0", root / tag / "data" / "0", root / f"{tag}one" / "w0"):
        data.mkdir(parents=True)
        (data / "000012.sst").write_bytes(b"x" * 1000)
        (data / "000013.log").write_bytes(b"w" * 24)  # RocksDB's write-ahead log, not a run's log
    (root / tag / "main-worker0.log").write_text("log\n")
    (root / f"{tag}one" / "one-worker0.log").write_text("log\n")
    (root / f"bench-baseline-{tag}-data" / "v1").mkdir(parents=True)
    (root / f"bench-baseline-{tag}-data" / "v1" / "table.db").write_bytes(b"y" * 976)


def test_a_run_removes_its_own_and_nothing_else(space: Namespace, tmp_path: Path) -> None:
    ours, other, busy = (uuid.uuid4().hex[:6] for _ in range(3))
    ch = connect(space.settings.clickhouse.as_role("admin"), "default")
    root = tmp_path / "bench"
    for tag in (ours, other, busy):
        _run_leftovers(space, root, tag, ch)
    stranger = f"x{ours}.web"  # the tag inside a name that is not a benchmark's
    ensure_topics(space.settings, [NewTopic(stranger, 1, 1)])
    claim(busy, root)  # in progress: this process
    try:
        removed = clean_up(space.settings, ours, root)

        assert (removed.topics, removed.groups, removed.databases) == (3, 1, 2)
        assert removed.bytes == 3 * 1024 + 976
        assert _gone(space, f"bench{ours}") == set() and _gone(space, f"-{ours}-") == set()
        assert _topics(space, ours) == {stranger}
        assert _groups(space, ours) == set() and _groups(space, other) == {f"bench-{other}-judge"}
        assert len(_topics(space, other)) == 3
        dbs = {r[0] for r in ch.execute("SELECT name FROM system.databases") if "bench_" in r[0]}
        assert dbs == {f"bench_{t}{v}" for t in (other, busy) for v in ("", "one")}
        left = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*") if ours in p.name or ours in p.parent.name
        )
        assert left == [ours, f"{ours}/main-worker0.log", f"{ours}one", f"{ours}one/one-worker0.log"]
        assert (root / other / "w0" / "state" / "0" / "000013.log").exists()

        # every run's: the one in progress is passed by
        removed = clean_up(space.settings, "", root)
        assert (removed.topics, removed.databases) == (3, 2)
        assert _gone(space, f"bench{other}") == set() and len(_topics(space, busy)) == 3
        assert not (root / other / "w0").exists() and (root / busy / "w0" / "state" / "0" / "000012.sst").exists()
        assert (root / other / "main-worker0.log").exists()
    finally:
        release(busy, root)
        clean_up(space.settings, busy, root)
    assert _gone(space, f"bench{busy}") == set()
    assert {r[0] for r in ch.execute("SELECT name FROM system.databases") if "bench_" in r[0]} == set()
