"""Stage A reads a backlog of the channel topics in timestamp order across their partitions
(pipeline/kafka/aligned.py), against the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

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


async def read(ns: Namespace, group: str, aligner: Aligner | None) -> list[Any]:
    s = ns.settings
    source = BatchSource(clients.group_consumer(s, f"{s.worker.app_id}-{group}"), [*s.kafka.topics.channels],
                         batch_size=100, aligner=aligner)  # fmt: skip
    stopping = asyncio.Event()
    out: list[Any] = []

    async def collect() -> None:
        async for batch in source.batches(stopping):
            out.extend(batch)
            await source.commit(batch)
            if len(out) >= 2 * PER_TOPIC:
                stopping.set()

    await asyncio.wait_for(collect(), 90)
    return out


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
    aligned = asyncio.run(read(space, "aligned", Aligner(channels, max_idle_s=5.0, per_partition=40)))
    assert len(aligned) == 2 * PER_TOPIC
    assert len({(r.topic, r.partition, r.offset) for r in aligned}) == 2 * PER_TOPIC
    assert [r.timestamp for r in aligned] == sorted(r.timestamp for r in aligned)
    # the same backlog read as it is fetched: most of one channel comes after the other's later ones
    fetched = asyncio.run(read(space, "fetched", None))
    assert len(fetched) == 2 * PER_TOPIC
    assert disorder(fetched) > PER_TOPIC // 4
