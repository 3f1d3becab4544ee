"""Stage A's consumer: the channel topics and the CRM topic read in batches by a plain aiokafka
group consumer, committed once the caller has finished a batch.

Stage A (pipeline/engine/resolve.py) is stateless, so it does not need Faust's streams, which cost
more per message than the whole of cem's work on it (bench: (a2) against (a)). This consumer
hands over whole batches and commits a batch's offsets only after the caller has finished it,
so every touchpoint is forwarded at least once; the judge drops what it has already seen.

Its consumer group is `<app_id>-resolve` (settings.worker.resolve_group).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from pipeline.kafka.aligned import Aligner
from pipeline.kafka.reading import commit

log = logging.getLogger("cem.source")

HELD_POLL_MS = 50  # how often records held back for timestamp order look again


class BatchSource:
    def __init__(
        self,
        consumer_config: dict[str, Any],  # pipeline.kafka.clients.group_consumer()
        topics: list[str],
        *,
        batch_size: int,
        on_commit_failure: Callable[[], None] = lambda: None,
        held: frozenset[str] = frozenset(),
        aligner: Aligner | None = None,
        commit_every_s: float = 0.0,
        commit_at_once: frozenset[str] = frozenset(),
    ) -> None:
        self.topics, self.batch_size = topics, batch_size
        self.config = consumer_config
        self.consumer: Any = None  # AIOKafkaConsumer, made in the worker's event loop
        self.on_commit_failure = on_commit_failure  # e.g. a metric
        self._uncommitted: dict[TopicPartition, int] = {}  # a failed commit, retried with the next
        self.committed: dict[TopicPartition, int] = {}  # what this consumer last committed
        # A commit is a round trip the next batch would wait for: finished batches are committed
        # together at most every `commit_every_s` (a crash forwards them again, which the judge
        # drops as seen), except those holding a record of `commit_at_once` (other workers wait
        # for that commit), and before the partitions go or the consumer stops.
        self.commit_every_s = commit_every_s
        self.commit_at_once = commit_at_once
        self._commit_due = 0.0
        self.joined = False  # has been given its partitions (possibly none) at least once
        self.held = set(held)  # topics whose partitions stay paused until `release()`
        # its topics' records handed out in timestamp order (pipeline/kafka/aligned.py)
        self.aligner = aligner

    def release(self) -> None:
        """Start reading the held topics."""
        self.held.clear()
        if self.consumer is not None:
            paused = self.consumer.paused()
            if paused:
                self.consumer.resume(*paused)

    async def batches(self, stopping: asyncio.Event) -> AsyncIterator[list[Any]]:
        """Batches of ConsumerRecords: what the fetcher holds, up to batch_size. It does not
        wait for a batch to fill: under load the fetcher holds plenty, and when the stream is
        quiet waiting only delays alerts (a 100 ms wait gave a p99 event -> alert latency of
        255 ms at 4,000 touchpoints/s, no wait 110-120 ms). Runs until `stopping` is set (the
        caller finishes the batch in hand first); the consumer leaves the group on the way out."""
        self.consumer = AIOKafkaConsumer(**self.config)
        await self.consumer.start()
        try:
            self.consumer.subscribe(self.topics, listener=_Joined(self))
            while not stopping.is_set():
                batch = await self._next()
                if batch:
                    yield batch
                else:
                    await self.commit_finished()
            await self.commit_finished()
        finally:
            await self.consumer.stop()

    def assigned(self, topic: str) -> list[TopicPartition]:
        """This consumer's partitions of `topic`."""
        return [tp for tp in self.consumer.assignment() if tp.topic == topic] if self.consumer is not None else []

    async def catch_up(self, topic: str, timeout_s: float, limit: int) -> tuple[list[Any], bool, set[int]]:
        """The records of `topic` (on this consumer's partitions) that were on the broker when
        the last fetch returned (at least) and are not read yet: read them now, before the
        batch in hand is processed. They belong to that batch, and are committed with it. At
        most about `limit` of them: the second value says whether there are more; the third is
        the partitions of `topic` covered (the caller waits for the others elsewhere)."""
        tps = self.assigned(topic)
        if not tps:
            return [], False, set()
        # The broker's end offsets, asked now (one request), not the high watermarks of the
        # last fetches: a partition whose fetched records are not all handed out is left out
        # of the next fetches, so its high watermark can be older than the records in hand.
        try:
            target: dict[TopicPartition, int] = await self.consumer.end_offsets(tps)
        except KafkaError as e:  # the broker away for a moment: what the fetches said
            log.warning("end offsets of %s not read (%s): catching up to the last fetches' high watermarks", topic, e)
            target = {tp: self.consumer.highwater(tp) or 0 for tp in tps}
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while True:
            # a rebalance during an await may have taken some of them: those are not ours to read
            tps = [tp for tp in tps if tp in self.consumer.assignment()]
            try:
                behind = [tp for tp in tps if target[tp] > await self.consumer.position(tp)]
            except IllegalStateError:  # taken meanwhile: looked at again without it
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.01)
                continue
            if not behind or time.monotonic() >= deadline:
                break
            if len(out) >= limit:
                return out, True, {tp.partition for tp in tps}
            got = await self.consumer.getmany(*behind, timeout_ms=100, max_records=self.batch_size)
            out.extend(r for records in got.values() for r in records)
        return out, False, {tp.partition for tp in tps}

    async def _next(self) -> list[Any]:
        aligner = self.aligner
        if aligner is None:
            got = await self.consumer.getmany(timeout_ms=500, max_records=self.batch_size)
            return [r for records in got.values() for r in records]
        # Wait for records only when none can go now. Held back by a partition whose next records
        # are not fetched yet, look again soon: a fetch may find it at its end, which brings no
        # record to wake the wait.
        if aligner.held_until is not None:
            timeout_ms = max(1, min(HELD_POLL_MS, int((aligner.held_until - time.monotonic()) * 1000)))
        else:
            timeout_ms = 0 if aligner.buffered() else 500
        assigned = self.consumer.assignment()
        wanted = [tp for tp in assigned if aligner.has_room(tp)]
        if len(wanted) == len(assigned):  # all of them, and any this consumer gets meanwhile
            got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.batch_size)
        elif wanted:
            got = await self.consumer.getmany(*wanted, timeout_ms=timeout_ms, max_records=self.batch_size)
        else:
            got = {}
        out = aligner.add(got)
        aligned = [tp for tp in self.consumer.assignment() if tp.topic in aligner.topics and tp.topic not in self.held]
        return out + aligner.take(self.batch_size - len(out), aligned, self._behind)

    def _behind(self, tp: TopicPartition) -> bool:
        """Whether the broker has records of `tp` that this consumer has not fetched: its
        position before the high watermark of the last fetch (unknown before the first)."""
        subscription = self.consumer._subscription  # aiokafka's own `highwater()` reads it so
        if not subscription.is_assigned(tp):
            return False
        state = subscription.subscription.assignment.state_value(tp)
        if state.highwater is None or not state.has_valid_position:
            return True
        return bool(state.position < state.highwater)

    async def lag(self) -> dict[str, int]:
        """Messages not yet committed on this consumer's partitions, per topic (from the
        high watermarks its fetches bring back: no request of its own)."""
        out: dict[str, int] = {}
        if self.consumer is None:
            return out
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            done = self.committed.get(tp)
            if done is None:
                done = await self.consumer.position(tp)
                if self.aligner is not None:
                    done -= self.aligner.buffered(tp)  # fetched, not handed out yet
            out[tp.topic] = out.get(tp.topic, 0) + max(0, (high or 0) - done)
        return out

    async def commit(self, batch: list[Any], *, now: bool = False) -> None:
        """Commit past every record of a finished batch: at once if `now`, if it holds a record
        of `commit_at_once`, or if the last commit is `commit_every_s` old; otherwise with a
        later one. If the partitions moved to another worker meanwhile, the commit fails and
        the new owner forwards them again; if the broker is away, the offsets are committed
        with the next batch (or when the topics go quiet). Either way it is logged and
        counted, and harmless, since the judge drops duplicates."""
        offsets = dict(self._uncommitted)
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
            now = now or r.topic in self.commit_at_once
        if not now and time.monotonic() < self._commit_due:
            self._uncommitted = offsets
            return
        self._uncommitted = {}
        done = await commit(self.consumer, offsets, self.on_commit_failure)
        if done == "yes":
            self.committed.update(offsets)
            self._commit_due = time.monotonic() + self.commit_every_s
        elif done == "later":
            self._uncommitted = offsets | self._uncommitted  # and any finished meanwhile (newer)

    async def commit_finished(self) -> None:
        """Commit every finished batch not committed yet, whatever the interval."""
        if self._uncommitted:
            await self.commit([], now=True)


class _Joined(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, source: BatchSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.source.aligner is not None:
            self.source.aligner.drop(revoked)
        await self.source.commit_finished()  # not done again by the next owner

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source.joined = True
        held = [tp for tp in assigned if tp.topic in self.source.held]
        if held:
            self.source.consumer.pause(*held)
