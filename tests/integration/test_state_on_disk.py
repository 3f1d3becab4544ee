"""The judge's state on local disk (RocksDB): a worker killed and restarted on its disk resumes
from it; a worker whose disk is lost rebuilds from Kafka; a partition that moves to another
worker is rebuilt there, and one that comes back to a worker whose copy is behind catches up
from the copy's offset. Each with the exact results of event-time order (the labelled workload
of tests/journeys.py, as in test_kill_anywhere.py), on 8 partitions.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.kafka.admin import wait_until_processed
from tests.integration.conftest import Namespace
from tests.integration.test_faults import records, wait_until
from tests.integration.test_kill_anywhere import ENV, Expected, Feeder, _ready, verify
from tests.integration.test_kill_anywhere import expected as expected  # the same labelled workload (a fixture)

pytestmark = [pytest.mark.faults, pytest.mark.partitions(8)]

LOADED = re.compile(
    r"\[(\d+)\] loaded from (disk|snapshot \w+|empty)[^:]*: \d+ customers; "
    r"reading from offset (\d+) \(silently up to (\d+)\)"
)


def loads_since(space: Namespace, mark: int) -> list[tuple[int, str, int, int]]:
    """(partition, source, from offset, silently up to) of the loads logged after `mark`."""
    return [(int(p), src.split()[0], int(a), int(b)) for p, src, a, b in LOADED.findall(space.worker_log()[mark:])]


def start_ready(space: Namespace, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], float]:
    started = time.monotonic()
    proc = space.start_worker(env={**ENV, **(env or {})})
    wait_until(lambda: _ready(space, proc), 120, "the worker to be ready")
    return proc, time.monotonic() - started


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_disk_kept_disk_lost_and_a_partition_moved_and_back(space: Namespace, expected: Expected) -> None:
    recs = records(space, expected.journeys.lines)
    profiles = [r for r in recs if r.topic == space.settings.kafka.topics.profiles]
    touches = [r for r in recs if r.topic != space.settings.kafka.topics.profiles]
    tombstones = records(space, expected.journeys.erasures)
    n = 6
    slices = [profiles + touches[: len(touches) // 5]]
    rest = touches[len(touches) // 5 :]
    slices += [rest[k * len(rest) // n : (k + 1) * len(rest) // n] for k in range(n)]
    for k, tombstone in enumerate(tombstones):
        slices[1 + k % n].insert(len(slices[1 + k % n]) // 2, tombstone)
    feeder = Feeder(space, slices)
    feeder.start()
    space.start_eraser()
    a_dir = Path(space.env["CEM_WORKER__DATA_DIR"])

    # 1. SIGKILL, the disk kept: every partition resumes from its database. The kills of this
    # test come once what was sent is judged: kills in the middle of the stream are
    # test_kill_anywhere's.
    a, _ = start_ready(space)
    feeder.release()
    feeder.release()
    time.sleep(2 * feeder.slice_s + 1)
    wait_until_processed(space.settings, timeout_s=300)
    kill(a)
    mark = len(space.worker_log())
    a, catch_up_s = start_ready(space)
    loads = loads_since(space, mark)
    print(f"\n  SIGKILL, disk kept: ready again in {catch_up_s:.1f}s; {len(loads)} partitions loaded")
    assert sorted(p for p, *_ in loads) == list(range(8)) and {src for _, src, *_ in loads} == {"disk"}, loads

    # 2. a second worker takes half the partitions (rebuilt there from Kafka: its disk is
    # empty), works on them, and dies: they come back to A, whose copies are behind. B dies
    # once what it was given is judged: crash windows are test_kill_anywhere's.
    feeder.release()
    b = space.start_worker(env=ENV)
    wait_until(lambda: _ready(space, b) and _ready(space, a) and len(space.stats(b)["partitions"]) > 0, 120,
               "the partitions to be shared")  # fmt: skip
    moved = set(space.stats(b)["partitions"])
    feeder.release()
    time.sleep(feeder.slice_s + 1)  # the slice is sent
    wait_until_processed(space.settings, timeout_s=300)
    mark = len(space.worker_log())
    kill(b)
    wait_until(lambda: len(space.stats(a)["partitions"]) == 8 and _ready(space, a), 120, "A to take them all back")
    back = {p: (src, start, upto) for p, src, start, upto in loads_since(space, mark)}
    print(f"  partitions {sorted(moved)} moved to a second worker and back: {back}")
    # (a rebalance reassigns every partition: the ones A kept reopen from disk as they were)
    assert moved <= set(back) and all(src == "disk" for src, _, _ in back.values()), back
    assert any(back[p][1] < back[p][2] for p in moved), "no copy was behind the log: nothing caught up"

    # 3. SIGKILL and the data directory lost: rebuilt from the snapshots and the log
    feeder.release()
    time.sleep(feeder.slice_s + 1)
    wait_until_processed(space.settings, timeout_s=300)
    kill(a)
    shutil.rmtree(a_dir)
    mark = len(space.worker_log())
    a, rebuild_s = start_ready(space)
    loads = loads_since(space, mark)
    sources = sorted({src for _, src, *_ in loads})
    print(f"  SIGKILL, data directory deleted: ready again in {rebuild_s:.1f}s; sources {sources}")
    assert len(loads) == 8 and "disk" not in {src for _, src, *_ in loads}, loads

    feeder.join()
    wait_until_processed(space.settings, timeout_s=600)
    verify(space, expected)
    assert a.poll() is None
    receipts = space.ch().execute(f"SELECT count(DISTINCT request_id) FROM {space.db}.erasure_receipts")[0][0]
    assert receipts == len(tombstones), (receipts, len(tombstones))
