"""Delivery guarantees under faults, on the real Kafka broker and ClickHouse server.

Each run feeds a generated workload of 50k+ touchpoints (10,500 customers; profiles first),
breaks something in the middle, and then requires the exact results of event-time order:
every touchpoint once in `timeline` with the flags the pure core computes, every implied alert
exactly once in `friction_alerts` (and open on the alerts topic in its latest revision).
Run with `make test-faults` and `make test-scaleout` (CI runs both).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka.admin import (
    Record,
    configured_topic,
    consumer_lag,
    encode_value,
    producer,
    send_all,
    wait_until_processed,
)
from pipeline.kafka.admin import read_to_end as read_topic
from pipeline.ops.workload import generate
from schemas.alert import FrictionAlert
from tests.integration.conftest import ROOT, STACK_ENV, Namespace
from tests.scenario import run_pure

pytestmark = pytest.mark.faults

CUSTOMERS = 10_500


@dataclass
class Workload:
    lines: list[dict[str, Any]]
    flags: dict[str, list[str]]  # event_id -> friction, in event-time order
    open_alerts: set[str]


@pytest.fixture(scope="module")
def workload() -> Workload:
    lines = list(generate(CUSTOMERS, seed=11))
    expected = run_pure(lines)
    assert len(expected.rows) >= 50_000
    return Workload(
        lines,
        {event_id: row["friction"] for event_id, row in expected.rows.items()},
        set(expected.open_alerts()),
    )


def records(space: Namespace, lines: list[dict[str, Any]]) -> list[Record]:
    return [
        Record(
            configured_topic(space.settings, line["topic"]),
            None if line["key"] is None else str(line["key"]).encode(),
            encode_value(line["value"]),
        )
        for line in lines
    ]


def feed(space: Namespace, wl: Workload, upto: float = 1.0) -> int:
    """Profiles first (and held), then the touchpoints (the first `upto` of them); returns the
    number of touchpoints in the workload."""
    recs = records(space, wl.lines)
    profiles = [r for r in recs if r.topic == space.settings.kafka.topics.profiles]
    everything = [r for r in recs if r.topic != space.settings.kafka.topics.profiles]
    touches = everything[: int(len(everything) * upto)]
    prod = producer(space.settings)
    send_all(prod, profiles)
    wait_until_processed(space.settings, timeout_s=300)
    # "held" by every worker: each one's copy of the identity index has every CRM identifier
    fingerprints = sum(
        len([v for v in (line["value"].get("identifiers") or {}).values() if v])
        for line in wl.lines
        if line["topic"] == "cem.crm.profiles"
    )
    workers = [p for p in space.procs if p.poll() is None and p.pid in space.ports]
    counts: list[int] = []

    def everyone_holds_them() -> bool:
        counts[:] = [space.stats(w)["identity_entries"] for w in workers]
        return all(n >= fingerprints for n in counts)

    wait_until(everyone_holds_them, 120, f"every worker to hold {fingerprints} identifiers (have {counts})")
    send_all(prod, touches)
    prod.close()
    return len(everything)


def rest(space: Namespace, wl: Workload, after: float) -> list[Record]:
    """The touchpoints `feed(..., upto=after)` left out."""
    recs = [r for r in records(space, wl.lines) if r.topic != space.settings.kafka.topics.profiles]
    return recs[int(len(recs) * after) :]


def send(space: Namespace, recs: list[Record]) -> None:
    prod = producer(space.settings)
    send_all(prod, recs)
    prod.close()


def judged_rows(space: Namespace) -> int:
    ((n,),) = space.ch().execute(f"SELECT count() FROM {space.db}.timeline_versions")
    return int(n)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def verify(space: Namespace, wl: Workload) -> None:
    ch = space.ch()
    rows = ch.execute(f"SELECT event_id, friction FROM {space.db}.timeline")
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a touchpoint shows twice"
    got = {event_id: list(friction) for event_id, friction in rows}
    missing = set(wl.flags) - set(got)
    assert not missing, f"{len(missing)} touchpoints lost, e.g. {sorted(missing)[:5]}"
    wrong = [e for e in wl.flags if got[e] != wl.flags[e]]
    assert not wrong, f"{len(wrong)} rows with other flags than event-time order, e.g. {wrong[:5]}"
    assert len(got) == len(wl.flags)
    alerts = ch.execute(f"SELECT alert_id, status FROM {space.db}.friction_alerts")
    assert len(alerts) == len({a for a, _ in alerts}), "an alert shows twice"
    opened = {a for a, status in alerts if status == "open"}
    assert opened == wl.open_alerts, (len(opened - wl.open_alerts), len(wl.open_alerts - opened))
    assert open_on_the_topic(space) == wl.open_alerts


def open_on_the_topic(space: Namespace) -> set[str]:
    """The alerts open on the alerts topic, in their latest revision."""
    latest: dict[str, FrictionAlert] = {}
    for rec in read_topic(space.settings, space.settings.kafka.topics.alerts, timeout_s=120):
        a = FrictionAlert.model_validate_json(rec.value)
        if a.alert_id not in latest or a.revision >= latest[a.alert_id].revision:
            latest[a.alert_id] = a
    return {i for i, a in latest.items() if a.status == "open"}


def stack(action: str) -> None:
    import os

    subprocess.run([str(ROOT / "scripts" / "stack.sh"), action], env={**os.environ, **STACK_ENV}, check=True)


def test_worker_killed_mid_stream(space: Namespace, workload: Workload) -> None:
    first = space.start_worker()
    total = feed(space, workload)
    wait_until(lambda: judged_rows(space) > total // 4, 300, "a quarter of the stream")
    assert space.stop_worker(first, signal.SIGKILL) == -signal.SIGKILL
    started = time.monotonic()
    space.start_worker()
    wait_until_processed(space.settings, timeout_s=600)
    print(f"\nrecovery after SIGKILL: caught up {time.monotonic() - started:.1f}s after the restart")
    verify(space, workload)


def test_graceful_stop_flushes_and_a_restart_reprocesses_nothing_written(space: Namespace, workload: Workload) -> None:
    first = space.start_worker()
    total = feed(space, workload)
    wait_until(lambda: judged_rows(space) > total // 3, 300, "a third of the stream")
    assert space.stop_worker(first, signal.SIGTERM) == 0  # flushes, commits, exits cleanly
    space.start_worker()
    wait_until_processed(space.settings, timeout_s=600)
    verify(space, workload)
    # everything is written: stop once more; the next worker has nothing to redo
    assert space.stop_worker() == 0
    time.sleep(1.1)  # ingested_at has whole seconds: rows after this moment come from the third
    (stopped,) = space.ch().execute("SELECT toUnixTimestamp(now())")[0]
    third = space.start_worker()
    wait_until(lambda: space.stats(third)["ready"], 60, "the worker to be ready")
    time.sleep(3)
    assert space.stats(third)["touchpoints_judged"] == 0
    # Not a count of all rows: the versions tables are ReplacingMergeTrees, and a background
    # merge folds identical versions written twice before the stop (the first restart
    # replayed its uncommitted tail), so their row count can fall by itself.
    for table in ("timeline_versions", "friction_alert_versions"):
        sql = f"SELECT count() FROM {space.db}.{table} WHERE toUnixTimestamp(ingested_at) >= %(t)s"
        ((n,),) = space.ch().execute(sql, {"t": stopped})
        assert n == 0, f"{n} rows written to {table} by a worker that had nothing to redo"


def test_broker_restarted_mid_stream(space: Namespace, workload: Workload) -> None:
    worker = space.start_worker()
    # a write on a connection the broker has just closed must fail, not kill the worker
    # (SIGPIPE's default action did, silently, in about one run in eight)
    ignored = int(re.findall(r"SigIgn:\s*([0-9a-f]+)", Path(f"/proc/{worker.pid}/status").read_text())[0], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)), "the worker does not ignore SIGPIPE"
    total = feed(space, workload)
    wait_until(lambda: judged_rows(space) > total // 4, 300, "a quarter of the stream")
    stack("kafka-stop")
    time.sleep(5)
    stack("kafka-start")
    started = time.monotonic()
    wait_until_processed(space.settings, timeout_s=600)
    print(f"\nrecovery after a broker restart: caught up {time.monotonic() - started:.1f}s after it")
    assert worker.poll() is None, "the worker died with the broker"
    verify(space, workload)


def test_killed_between_its_disk_and_its_commit_and_nothing_more_comes(space: Namespace, workload: Workload) -> None:
    """The worker dies after a batch is in its state on disk and before the batch's offsets
    are committed, and the stream is quiet from then on. Restarted on its disk, it resumes
    ahead of its committed offsets, and commits them without waiting for another batch to
    carry them: else its lag never reaches zero."""
    first = space.start_worker()
    total = feed(space, workload, upto=1 - 0.5 / len(rest(space, workload, after=0)))  # all but the last
    wait_until_processed(space.settings, timeout_s=300)
    assert space.stop_worker(first) == 0  # everything judged is committed
    dying = space.start_worker(env={"CEM_FAILPOINTS": "judge.persisted"})
    last = rest(space, workload, after=1 - 0.5 / total)
    assert len(last) == 1  # one batch: the one the worker dies in is the last
    send(space, last)
    assert dying.wait(timeout=120) == -signal.SIGKILL
    assert consumer_lag(space.settings).by_topic[space.settings.kafka.topics.by_customer] > 0
    space.start_worker()  # on the same disk; nothing more is sent
    wait_until_processed(space.settings, timeout_s=90)
    verify(space, workload)


def test_clickhouse_away_for_a_minute(space: Namespace, workload: Workload) -> None:
    import psutil

    worker = space.start_worker()
    total = feed(space, workload)
    wait_until(lambda: judged_rows(space) > total // 4, 300, "a quarter of the stream")
    stack("clickhouse-stop")
    rss = []
    try:
        for _ in range(60):
            rss.append(psutil.Process(worker.pid).memory_info().rss)
            time.sleep(1)
        stats = space.stats(worker)
        assert stats["clickhouse_errors"] > 0 and stats["consumer_lag"]  # it noticed, and holds back
    finally:
        stack("clickhouse-start")
    started = time.monotonic()
    wait_until_processed(space.settings, timeout_s=600)
    print(f"\nClickHouse away 60s: peak worker RSS {max(rss) / 2**20:.0f} MiB; caught up "
          f"{time.monotonic() - started:.1f}s after it returned")  # fmt: skip
    assert max(rss) < 1.5 * 2**30  # bounded: the stream waits instead of buffering everything
    assert max(rss) - rss[0] < 300 * 2**20
    assert worker.poll() is None
    verify(space, workload)


def test_worker_killed_after_snapshots_restarts_from_the_newest(space: Namespace, workload: Workload) -> None:
    """The worker is killed and its disk lost: the restarted worker loads each partition's
    newest snapshot and reads the log again only from there (silently up to the committed
    offset): the results are still exact, and it reads back fewer touchpoints than the killed
    worker had judged."""
    space.env["CEM_WORKER__SNAPSHOT_MIN_TOUCHPOINTS"] = "2000"
    first = space.start_worker()
    total = feed(space, workload, upto=0.5)
    wait_until_processed(space.settings, timeout_s=300)
    wait_until(lambda: space.stats(first)["snapshots_written"] >= 4, 120, "a snapshot of every partition")
    later = rest(space, workload, after=0.5)
    send(space, later[: len(later) // 4])  # judged after the snapshots: read again after the kill
    wait_until(lambda: space.stats(first)["touchpoints_judged"] >= total // 2 + len(later) // 4, 300,
               "the first quarter of the second half")  # fmt: skip
    judged_before = space.stats(first)["touchpoints_judged"]
    assert space.stop_worker(first, signal.SIGKILL) == -signal.SIGKILL
    shutil.rmtree(space.next_data_dir())  # a new machine: the state comes from Kafka
    send(space, later[len(later) // 4 :])  # a backlog for the restarted worker
    second = space.start_worker()
    wait_until_processed(space.settings, timeout_s=600)
    verify(space, workload)
    assert "loaded from snapshot" in space.worker_log()
    replayed = space.stats(second)["touchpoints_replayed"]
    assert replayed < judged_before, (replayed, judged_before)


@pytest.mark.scaleout
@pytest.mark.partitions(8)
def test_two_workers_one_killed(space: Namespace, workload: Workload) -> None:
    a = space.start_worker()
    b = space.start_worker()
    total = feed(space, workload)
    wait_until(lambda: judged_rows(space) > total // 4, 300, "a quarter of the stream")
    assert space.stats(a)["touchpoints_judged"] > 0 and space.stats(b)["touchpoints_judged"] > 0  # both work
    space.stop_worker(b, signal.SIGKILL)
    started = time.monotonic()
    wait_until_processed(space.settings, timeout_s=600)
    print(f"\ntwo workers, one killed: the other caught up {time.monotonic() - started:.1f}s after the kill")
    verify(space, workload)
