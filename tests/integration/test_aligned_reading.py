"""Stage A reads a backlog of the channel topics in timestamp order across their partitions
(pipeline/kafka/aligned.py), against the real broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition

from pipeline.engine.batches import BatchSource
from pipeline.kafka import clients
from pipeline.kafka.admin import producer
from pipeline.kafka.aligned import Aligner
from tests.integration.conftest import Namespace

BASE_MS = 1_767_225_600_000  # 2026-01-01
PER_TOPIC = 600


def backlog(ns: Namespace) -> None:
    """Two channels over the same hour, one produced wholly before the other: read in the
    order the fetches bring them, the second runs an hour behind the first."""
    t = ns.settings.kafka.topics
    prod = producer(ns.settings)
    for topic, parity in ((t.web, 0), (t.booking, 1)):
        for i in range(PER_TOPIC):
            prod.send(topic, key=f"k{i % 37}".encode(), value=b"{}", timestamp_ms=BASE_MS + (2 * i + parity) * 3000)
        prod.flush()
    prod.close()


async def read(
    ns: Namespace, group: str, aligner: Aligner | None, expected: int, *, live: bool = False
) -> tuple[list[Any], dict[Any, int], float]:
    """The `expected` records as the source hands them out, the offsets it committed, and
    (`live`) how long one more record took to come once they were read."""
    s = ns.settings
    source = BatchSource(clients.group_consumer(s, f"{s.worker.app_id}-{group}"), [*s.kafka.topics.channels],
                         batch_size=100, aligner=aligner)  # fmt: skip
    stopping = asyncio.Event()
    out: list[Any] = []
    sent_at = 0.0

    async def collect() -> None:
        nonlocal sent_at
        async for batch in source.batches(stopping):
            out.extend(batch)
            await source.commit(batch)
            if len(out) == expected and live:
                prod = producer(s)
                sent_at = time.monotonic()
                prod.send(s.kafka.topics.booking, key=b"k0", value=b"{}", timestamp_ms=BASE_MS)
                prod.flush()
                prod.close()
            elif len(out) >= expected + live:
                stopping.set()

    await asyncio.wait_for(collect(), 90)
    return out, source.committed, time.monotonic() - sent_at


def disorder(records: list[Any]) -> int:
    """Records that come after a later one."""
    latest, count = 0, 0
    for r in records:
        if r.timestamp < latest:
            count += 1
        latest = max(latest, r.timestamp)
    return count


def test_a_backlog_of_two_channels_is_read_in_timestamp_order(space: Namespace) -> None:
    backlog(space)
    channels = frozenset(space.settings.kafka.topics.channels)
    aligned, committed, waited = asyncio.run(
        read(space, "aligned", Aligner(channels, max_idle_s=5.0, per_partition=40), 2 * PER_TOPIC, live=True)
    )
    backlog_read, more = aligned[: 2 * PER_TOPIC], aligned[2 * PER_TOPIC :]
    assert len({(r.topic, r.partition, r.offset) for r in backlog_read}) == 2 * PER_TOPIC
    assert [r.timestamp for r in backlog_read] == sorted(r.timestamp for r in backlog_read)
    # every partition at its end: the next record is not held back for the 5 s a partition
    # behind its end could hold it
    assert len(more) == 1 and waited < 2.5
    ends: dict[Any, int] = {}
    for r in aligned:
        tp = TopicPartition(r.topic, r.partition)
        ends[tp] = max(ends.get(tp, 0), r.offset + 1)
    assert committed == ends
    # the same backlog read as it is fetched: most of one channel comes after the other's later ones
    fetched, _, _ = asyncio.run(read(space, "fetched", None, 2 * PER_TOPIC + 1))
    assert len(fetched) == 2 * PER_TOPIC + 1
    assert disorder(fetched) > PER_TOPIC // 4
