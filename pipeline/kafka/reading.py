"""Reading Kafka the way every stage and command of cem does: a topic's partitions and end
offsets, a compacted topic's live values, and committing a batch's offsets. One place each.
(kafka-python's blocking reads for the CLI are `pipeline.kafka.admin.read_to_end`.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError

log = logging.getLogger("cem.kafka")

METADATA_TIMEOUT_S = 30.0  # longest a metadata update is waited for


def reader(client_config: dict[str, Any]) -> AIOKafkaConsumer:
    """A group-less consumer to read with (`read_compacted`): the worker keeps one for its life
    (pipeline/engine/context.py)."""
    # A fetch that finds nothing is held at the broker for fetch_max_wait_ms, and the requests
    # sent after it on the same connection (the next read's end offsets) wait behind it.
    return AIOKafkaConsumer(
        **client_config, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 2**20, fetch_max_wait_ms=20,
    )  # fmt: skip


def assign_at(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
    """Assign these partitions to a group-less consumer, each at its offset, in one step. A
    partition assigned without a position is reset by the consumer itself, in the background,
    to its `auto_offset_reset`; a `seek` made while that reset is under way can be undone
    when it lands, and the read then starts elsewhere (an identity index read from the
    beginning started one partition at its end, and lost 848 of its 897 entries). With no
    await between the assignment and the seeks, no partition is ever without a position."""
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of `topic`, asking the broker again where the consumer's metadata does
    not know the topic yet (one made a moment ago); empty if it does not exist."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        # A client asks only for the topics it tracks: this one is tracked from now on. The
        # update has no timeout of its own, and one was seen never to finish (a worker held
        # the reader, and every partition load waiting for it, for half an hour): bounded.
        client = consumer._client
        update = client.force_metadata_update() if topic in client._topics else client.add_topic(topic)
        await asyncio.wait_for(update, METADATA_TIMEOUT_S)
        parts = consumer.partitions_for_topic(topic)
    return set(parts or ())


async def end_offsets_of(
    consumer: AIOKafkaConsumer, topic: str, partitions: Iterable[int] | None = None
) -> dict[TopicPartition, int]:
    """The end offset of each partition of `topic` now (of `partitions` only, if given).
    Ask before assigning partitions to `consumer`: once they are assigned, a fetch is in
    flight, and the request would wait behind it (fetch_max_wait_ms)."""
    wanted = None if partitions is None else set(partitions)
    parts = sorted(p for p in await partitions_of(consumer, topic) if wanted is None or p in wanted)
    tps = [TopicPartition(topic, p) for p in parts]
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps) if tps else {}
    return ends


async def read_compacted(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int]
) -> dict[int, dict[bytes, bytes]]:
    """Per partition, the live value of every key of a compacted topic, as far as it goes now
    (tombstones applied); empty where the topic does not exist. The partitions are read
    together. `consumer` is a started `reader()`, used by one read at a time."""
    out: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    ends = await end_offsets_of(consumer, topic, partitions)
    tps = [tp for tp, end in ends.items() if end > 0]
    if not tps:
        return out
    assign_at(consumer, await consumer.beginning_offsets(tps))
    try:
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            got = await consumer.getmany(*tps, timeout_ms=1000)
            for tp, records in got.items():
                live = out[tp.partition]
                for rec in records:
                    if rec.key is None:
                        continue
                    if rec.value is None:
                        live.pop(rec.key, None)
                    else:
                        live[rec.key] = rec.value
        return out
    finally:
        consumer.assign([])


Committed = Literal["yes", "moved", "later"]


async def commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], on_failure: Callable[[], None]
) -> Committed:
    """Commit these offsets of a finished batch. "moved": a rebalance came first, the
    partitions may be another worker's now, and their new owner does the batch again;
    "later": the broker is away, so commit them with the next batch. Either is harmless: what
    a batch wrote is written again identically. `on_failure` counts it (a metric)."""
    if not offsets:
        return "yes"
    try:
        await consumer.commit(offsets)
        return "yes"
    except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as e:
        on_failure()
        log.info("commit failed after a rebalance (%s); the batch may be done again", e)
        return "moved"
    except KafkaError as e:
        on_failure()
        log.warning("commit failed (%s); retrying with the next batch", e)
        return "later"
