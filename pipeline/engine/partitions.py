"""The partitions of the internal topic a judge owns: opened when assigned (each paused until
its state is in), closed when revoked, and rid of customers idle for longer than the kept
history.

Opening: the partition's database on this worker's disk, if it is there and its stored
offset is still in the log; the judge reads the log from that offset, silently up to the
group's committed offset (another worker may have gone further meanwhile). Else the database
is rebuilt from the newest snapshot in Kafka, and the log read again from the snapshot's
offset (pipeline/engine/snapshots.py). It runs beside the batches, never in the rebalance
callback, which holds back heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from pipeline.engine import memory
from pipeline.engine.context import Context
from pipeline.engine.failpoints import failpoint
from pipeline.engine.snapshots import Partition, load, read_states
from pipeline.engine.state_store import PREFIX, Customers, Decoded, decode, max_t_of
from processors.judge import links

log = logging.getLogger("cem.judge")

SWEEP_BATCH = 2_000  # stored customers looked at per sweep call at most (their values are not decoded)
# and for about this long: the call holds the event loop, stage A's too (2,000 stored states,
# 6 ms to read from a quiet database, showed up inside 40-80 ms stalls of a loaded worker's loop)
SWEEP_SLICE_S = 0.005


class Partitions:
    def __init__(self, ctx: Context, topic: str, lock: asyncio.Lock, horizon_us: int) -> None:
        self.ctx = ctx
        self.topic = topic
        self.lock = lock  # the judge's: a batch, a rebalance and a loaded partition, one at a time
        self.horizon_us = horizon_us
        self.consumer: Any = None  # the judge's AIOKafkaConsumer, set when it starts
        self.parts: dict[int, Partition] = {}  # owned and loaded
        self.loading: dict[int, asyncio.Task[None]] = {}
        self.decoded = Decoded(ctx.settings.state.cache_customers)
        self.joined = False
        self.generation = 0  # of assignments: counts rebalances, so that a stale load is dropped
        self.sweep_s = ctx.settings.worker.idle_sweep_s
        self.cleanup_s = ctx.settings.state.cleanup_delay_s
        self._orphans: dict[int, float] = {}  # databases of partitions not ours -> when they go (monotonic)
        self._sweep_queue: deque[int] = deque()  # partitions still to look at this round
        self._sweep_from = PREFIX  # the key the partition in hand is looked at from
        self._sweep_at = time.monotonic() + self.sweep_s

    @property
    def ready(self) -> bool:
        """Joined the group, every partition loaded and caught up with what was committed."""
        return self.joined and not self.loading and not any(p.replaying for p in self.parts.values())

    def lag(self) -> int:
        """Messages not yet committed on these partitions (from the consumer's high watermarks)."""
        if self.consumer is None:
            return 0
        return sum(
            max(0, (self.consumer.highwater(TopicPartition(self.topic, p)) or 0) - part.committed)
            for p, part in self.parts.items()
        )

    def revoked(self, gone: set[int]) -> None:
        """No longer ours: closed (their databases hold what was written; what was judged and
        not written is judged again by their next owner); a load under way is dropped."""
        for p in gone:
            task = self.loading.pop(p, None)
            if task is not None:
                task.cancel()
            part = self.parts.pop(p, None)
            if part is not None:
                part.customers.close()

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Fast on purpose: the consumer sends no heartbeats until the rebalance callback
        returns. The new partitions stay paused while their states load beside the batches."""
        self.joined = True
        self.generation += 1
        mine = {tp.partition for tp in assigned}
        for p in set(self.parts) - mine:  # not expected: a revocation closes them
            log.warning("partition %d was held without being assigned: dropped", p)
            self.parts.pop(p).customers.close()
        # Copies of partitions another worker has now go after a while, unless they come back:
        # they would keep what their new owner erases, and their disk.
        at = time.monotonic() + self.cleanup_s
        on_disk = {int(n) for n in self.ctx.disk.names(self.topic) if n.isdigit()}
        self._orphans = {p: self._orphans.get(p, at) for p in on_disk - mine}
        new = [tp for tp in assigned if tp.partition not in self.parts and tp.partition not in self.loading]
        if new:
            self.consumer.pause(*new)
            task = asyncio.create_task(self._load(new, self.generation), name="load partitions")
            self.loading.update(dict.fromkeys((tp.partition for tp in new), task))

    def stop(self) -> None:
        for task in self.loading.values():
            task.cancel()

    def close(self) -> None:
        for part in self.parts.values():
            part.customers.close()
        self.parts.clear()

    async def _load(self, tps: list[TopicPartition], generation: int) -> None:
        """Open the partitions' databases and let each go once it is in. One whose stored
        offset is still in the log resumes from it; the others are rebuilt from Kafka, one
        at a time (a snapshot is read whole), through the worker's one reader
        (pipeline/engine/context.py)."""
        delay = 1.0
        while tps:
            try:
                started = time.monotonic()
                committed = {tp: await self.consumer.committed(tp) for tp in tps}
                starts = await self.consumer.beginning_offsets(tps)
                ends = await self.consumer.end_offsets(tps)
                while tps:
                    tp = tps[0]
                    if generation != self.generation:
                        return  # revoked meanwhile: a new assignment has its own load
                    part = await self._open(tp.partition)
                    handed = False
                    try:
                        source = await self._state(part, tp, committed[tp], starts[tp], ends[tp])
                        handed = await self._loaded(tp, generation, part, committed[tp], source, started)
                    finally:
                        if not handed:
                            part.customers.close()
                    tps.pop(0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the broker away: try again, the partitions stay paused
                log.warning("loading %s failed (%s); retrying in %.0fs", [tp.partition for tp in tps], e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _state(self, part: Partition, tp: TopicPartition, committed: int | None, start: int, end: int) -> str:
        """Where the partition's state comes from: its database, if the offset it holds is in
        the log; else rebuilt from Kafka."""
        stored = part.customers.stored()
        if stored is not None and start <= stored[0] <= end:
            part.next_offset = part.persisted_offset = stored[0]
            part.stream_t = stored[1]
            part.held = part.customers.count()
            part.replay_until = committed or 0
            return "disk"
        if stored is not None:
            log.warning("%s[%d]: the state on disk is at offset %d, outside the log (%d..%d): rebuilt from Kafka",
                        tp.topic, tp.partition, stored[0], start, end)  # fmt: skip
        async with self.ctx.reading:
            found = await read_states(await self.ctx.reader(), self.ctx.settings.kafka.topics.snapshots, [part.number])
        source = await load(part, found[part.number], committed, start)
        del found
        self.ctx.stats.observe_gc(memory.settle())
        return source

    async def _open(self, number: int) -> Partition:
        """The partition's database, opened (created if it is not there)."""
        disk = self.ctx.disk
        self._orphans.pop(number, None)
        db = await disk.open(f"{self.topic}/{number}")
        return Partition(number, Customers(number, db, self.decoded, disk.secret, disk.key_id))

    async def _loaded(
        self, tp: TopicPartition, generation: int, part: Partition, committed: int | None, source: str, started: float
    ) -> bool:
        """Hand the loaded partition to the judge; False if it was revoked meanwhile."""
        async with self.lock:
            if generation != self.generation:
                return False  # revoked while loading (its task may have missed the cancellation)
            self.parts[tp.partition] = part
            part.committed = committed or 0
            self.consumer.seek(tp, part.next_offset)
            self.consumer.resume(tp)
            self.loading.pop(tp.partition, None)
        failpoint("judge.loaded")
        self.ctx.stats.counters["partitions_loaded"] += 1
        self.ctx.stats.counters[f"partitions_loaded_from_{source.split()[0]}"] += 1
        log.info(
            "%s[%d] loaded from %s in %.1fs: %d customers; reading from offset %d (silently up to %d)",
            tp.topic, tp.partition, source, time.monotonic() - started, part.customers.count(),
            part.next_offset, part.replay_until,
        )  # fmt: skip
        return True

    def remove_orphans(self) -> None:
        """Delete the copies of partitions other workers have had for `state.cleanup_delay_s`."""
        now = time.monotonic()
        for p, at in list(self._orphans.items()):
            if at <= now and p not in self.parts and p not in self.loading:
                del self._orphans[p]
                self.ctx.disk.remove(f"{self.topic}/{p}")
                log.info("%s[%d]: the copy on disk of a partition another worker has was deleted", self.topic, p)

    def sweep(self, unlink: Callable[[str, tuple[str, ...]], None]) -> int:
        """Let go of customers idle for longer than the kept history (window + allowed
        lateness) behind their partition's newest event: an anonymous visitor or an unknown
        customer whole, a CRM customer's events and alerts (the profile stays). Per call, at
        most `SWEEP_BATCH` stored customers and about `SWEEP_SLICE_S`, read from the disk
        without decoding; a round over every partition every `worker.idle_sweep_s`."""
        now = time.monotonic()
        if now < self._sweep_at:
            return 0
        queue = self._sweep_queue
        if not queue:
            self.remove_orphans()
            queue.extend(sorted(self.parts))
            self._sweep_from = PREFIX
            if not queue:
                self._sweep_at = now + self.sweep_s
                return 0
        part = self.parts.get(queue[0])
        idle: list[str] = []
        finished = True
        if part is not None and not part.replaying:
            before = part.stream_t - self.horizon_us
            until = time.perf_counter() + SWEEP_SLICE_S
            looked = 0
            entries = part.customers.values(self._sweep_from)
            try:
                for key, value in entries:
                    if looked >= SWEEP_BATCH or (looked % 64 == 63 and time.perf_counter() >= until):
                        self._sweep_from, finished = key, False  # the next call goes on from here
                        break
                    looked += 1
                    if 0 <= max_t_of(value) < before:
                        idle.append(decode(value).customer_id)
            finally:
                entries.close()
        if finished:
            queue.popleft()  # this partition is done
            self._sweep_from = PREFIX
            if not queue:
                self._sweep_at = now + self.sweep_s
        if part is None or not idle:
            return 0
        dropped = 0
        for cid in idle:
            state = part.customers.get(cid)  # as it is now, which may be newer than on disk
            if state is None or state.max_t is None or state.max_t >= before or not state.has_events():
                continue
            gone = links(state.events)
            if gone:
                unlink(cid, tuple(sorted(gone)))
            if state.profile is None:
                part.customers.pop(cid, erasure=False)
            else:
                state.events.clear()
                state.alerts.clear()
                state.seen = None
                part.customers.put(state)
            dropped += 1
        if dropped:
            self.ctx.stats.counters["idle_customers_dropped"] += dropped
            log.info("%d customers idle for longer than the kept history let go", dropped)
        return dropped
