"""Stage A commits the batches it finished together, at most every `worker.commit_interval_s`
(pipeline/engine/batches.py): at once for a batch with a record of a topic others wait for,
and whatever is finished before its partitions go or it stops. Against the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.engine.batches import BatchSource
from pipeline.kafka import clients
from pipeline.kafka.admin import end_offsets, group_offsets, producer
from tests.integration.conftest import Namespace
from tests.integration.test_aligned_reading import PER_TOPIC, backlog


def ends_of(ns: Namespace, topics: list[str]) -> dict[tuple[str, int], int]:
    return {(t, p): end for t in topics for p, end in end_offsets(ns.settings, t).items() if end}


def on_broker(ns: Namespace, group: str) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): meta.offset for tp, meta in group_offsets(ns.settings, group).items()}


def source(ns: Namespace, group: str, **kwargs: Any) -> BatchSource:
    s = ns.settings
    topics = [s.kafka.topics.web, s.kafka.topics.booking]
    return BatchSource(clients.group_consumer(s, group), topics, batch_size=50, **kwargs)


async def read_all(src: BatchSource, expected: int, stopping: asyncio.Event, seen: list[Any]) -> None:
    """Read and commit batches until `expected` records are in, then hold on to the partitions
    (reading nothing more) until `stopping`."""
    async for batch in src.batches(stopping):
        seen.extend(batch)
        await src.commit(batch)
        if len(seen) >= expected:
            await stopping.wait()


def test_finished_batches_are_committed_together_and_all_before_the_consumer_stops(space: Namespace) -> None:
    backlog(space)
    t = space.settings.kafka.topics
    group = f"{space.settings.worker.app_id}-together"
    ends = ends_of(space, [t.web, t.booking])

    async def scenario() -> tuple[dict[Any, int], dict[Any, int], list[Any]]:
        stopping, seen = asyncio.Event(), []
        src = source(space, group, commit_every_s=3600, commit_at_once=frozenset())
        task = asyncio.create_task(read_all(src, 2 * PER_TOPIC, stopping, seen))
        while len(seen) < 2 * PER_TOPIC:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        while_reading = on_broker(space, group)
        stopping.set()
        await asyncio.wait_for(task, 60)
        return while_reading, on_broker(space, group), seen

    while_reading, after_stop, seen = asyncio.run(scenario())
    assert len(seen) == 2 * PER_TOPIC
    # the first batch was committed at once, the others waited for the interval
    assert 0 < sum(while_reading.values()) <= 50
    assert after_stop == ends


def test_a_batch_holding_a_record_others_wait_for_is_committed_at_once(space: Namespace) -> None:
    t = space.settings.kafka.topics
    prod = producer(space.settings)
    for i in range(PER_TOPIC):
        prod.send(t.web, key=f"k{i % 37}".encode(), value=b"{}")
    prod.flush()
    group = f"{space.settings.worker.app_id}-at-once"

    async def scenario() -> list[tuple[list[Any], dict[Any, int]]]:
        """Each batch, and what the source had committed once its commit returned."""
        stopping, seen, after = asyncio.Event(), 0, []
        src = source(space, group, commit_every_s=3600, commit_at_once=frozenset({t.booking}))
        async for batch in src.batches(stopping):
            await src.commit(batch)
            after.append((batch, {(tp.topic, tp.partition): o for tp, o in src.committed.items()}))
            seen += len(batch)
            if seen == PER_TOPIC:  # one record of the topic others wait for
                prod.send(t.booking, key=b"k0", value=b"{}")
                prod.flush()
            elif seen > PER_TOPIC:
                stopping.set()
        return after

    after = asyncio.run(scenario())
    prod.close()
    first, _ = after[0]
    last, committed = after[-1]
    assert [r.topic for r in last] == [t.booking]
    # every web batch after the first waited; the booking one was committed by the time its
    # commit returned, with every batch finished before it (an idle moment may have come between)
    assert all(sum(c.values()) == len(first) for _, c in after[1:] if sum(c.values()) < PER_TOPIC)
    assert sum(1 for _, c in after[1:] if sum(c.values()) == len(first)) >= 2
    assert committed == ends_of(space, [t.web, t.booking])


def test_what_is_finished_is_committed_before_the_partitions_go(space: Namespace) -> None:
    backlog(space)
    t = space.settings.kafka.topics
    group = f"{space.settings.worker.app_id}-handed-over"
    ends = ends_of(space, [t.web, t.booking])

    async def scenario() -> tuple[dict[Any, int], list[Any]]:
        first_stop, first_seen = asyncio.Event(), []
        first = source(space, group, commit_every_s=3600)
        task = asyncio.create_task(read_all(first, 2 * PER_TOPIC, first_stop, first_seen))
        while len(first_seen) < 2 * PER_TOPIC:
            await asyncio.sleep(0.05)
        # a second consumer joins: the rebalance takes partitions from the first
        second_stop, second_seen = asyncio.Event(), []
        second = source(space, group, commit_every_s=3600)
        other = asyncio.create_task(read_all(second, 2 * PER_TOPIC, second_stop, second_seen))
        for _ in range(300):
            if second.consumer is not None and second.consumer.assignment():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # what the second would read again, it has read by now
        handed_over = on_broker(space, group)
        first_stop.set()
        second_stop.set()
        await asyncio.wait_for(asyncio.gather(task, other), 60)
        return handed_over, second_seen

    handed_over, read_again = asyncio.run(scenario())
    assert handed_over == ends  # the first committed before giving its partitions up (it still runs)
    assert read_again == []  # so the second had nothing of it to do again
