"""The partitions of the internal topic a judge owns: loaded when assigned (each paused until
its state is in), dropped when revoked (kept aside in case they come back untouched), and
rid of customers idle for longer than the kept history.

Loading: the newest complete snapshot, then the log read again from its offset, silently up
to the group's committed offset (pipeline/engine/snapshots.py). It runs beside the batches,
never in the rebalance callback, which holds back heartbeats.
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
from processors.judge import links

log = logging.getLogger("cem.judge")

SWEEP_BATCH = 5_000  # customers looked at per sweep call (a few ms)


class Partitions:
    def __init__(self, ctx: Context, topic: str, lock: asyncio.Lock, horizon_us: int) -> None:
        self.ctx = ctx
        self.topic = topic
        self.lock = lock  # the judge's: a batch, a rebalance and a loaded partition, one at a time
        self.horizon_us = horizon_us
        self.consumer: Any = None  # the judge's AIOKafkaConsumer, set when it starts
        self.parts: dict[int, Partition] = {}  # owned and loaded
        self.cached: dict[int, Partition] = {}  # revoked by the last rebalance: kept in case they come back
        self.loading: dict[int, asyncio.Task[None]] = {}
        self.joined = False
        self.generation = 0  # of assignments: counts rebalances, so that a stale load is dropped
        self.sweep_s = ctx.settings.worker.idle_sweep_s
        self._sweep_queue: deque[tuple[int, str]] = deque()  # (partition, customer) still to look at this round
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

    def revoked(self, gone: set[int], drained: bool) -> None:
        """No longer ours. Kept aside, if what the worker holds was all written (`drained`), in
        case they come back untouched; a load under way is dropped."""
        for p in gone:
            task = self.loading.pop(p, None)
            if task is not None:
                task.cancel()
            part = self.parts.pop(p, None)
            if drained and part is not None and not part.replaying:
                self.cached[p] = part

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Fast on purpose: the consumer sends no heartbeats until the rebalance callback
        returns. The new partitions stay paused while their states load beside the batches."""
        self.joined = True
        self.generation += 1
        mine = {tp.partition for tp in assigned}
        for p in set(self.cached) - mine:
            del self.cached[p]  # another worker has it now: what we held goes stale
        for p in set(self.parts) - mine:  # not expected: a revocation moves them to `cached`
            log.warning("partition %d was held without being assigned: dropped", p)
            del self.parts[p]
        new = [tp for tp in assigned if tp.partition not in self.parts and tp.partition not in self.loading]
        if new:
            self.consumer.pause(*new)
            task = asyncio.create_task(self._load(new, self.generation), name="load partitions")
            self.loading.update(dict.fromkeys((tp.partition for tp in new), task))

    def stop(self) -> None:
        for task in self.loading.values():
            task.cancel()

    async def _load(self, tps: list[TopicPartition], generation: int) -> None:
        """Load the partitions' states, and let each go once it is loaded. A partition that
        comes back to this worker untouched by anyone else (its committed offset is not past
        what the worker holds) is not loaded again. The others' snapshots are read together,
        through the worker's one reader (pipeline/engine/context.py), then decoded one by one."""
        s = self.ctx.settings
        delay = 1.0
        while tps:
            try:
                started = time.monotonic()
                committed = {tp: await self.consumer.committed(tp) for tp in tps}
                to_read = []
                for tp in tps:
                    cached = self.cached.pop(tp.partition, None)
                    done = committed[tp]
                    if cached is not None and done is not None and done <= cached.next_offset:
                        await self._loaded(tp, generation, cached, done, "memory", started)
                    else:
                        to_read.append(tp)
                tps = to_read
                if not tps:
                    return
                starts = await self.consumer.beginning_offsets(tps)
                async with self.ctx.reading:
                    found = await read_states(
                        await self.ctx.reader(), s.kafka.topics.snapshots, [tp.partition for tp in tps]
                    )
                while tps:
                    tp = tps[0]
                    loaded = await load(found[tp.partition], committed[tp], starts[tp])
                    self.ctx.stats.observe_gc(memory.settle())  # millions of objects that stay
                    await self._loaded(tp, generation, loaded.part, committed[tp], loaded.source, started)
                    tps.pop(0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the broker away: try again, the partitions stay paused
                log.warning("loading %s failed (%s); retrying in %.0fs", [tp.partition for tp in tps], e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _loaded(
        self, tp: TopicPartition, generation: int, part: Partition, committed: int | None, source: str, started: float
    ) -> None:
        async with self.lock:
            if generation != self.generation:
                return  # revoked while loading (its task may have missed the cancellation)
            self.parts[tp.partition] = part
            part.committed = committed or 0
            self.consumer.seek(tp, part.next_offset)
            self.consumer.resume(tp)
            self.loading.pop(tp.partition, None)
        failpoint("judge.loaded")
        self.ctx.stats.counters["partitions_loaded"] += 1
        log.info(
            "%s[%d] loaded from %s in %.1fs: %d customers; reading from offset %d (silently up to %d)",
            tp.topic, tp.partition, source, time.monotonic() - started, len(part.customers),
            part.next_offset, part.replay_until,
        )  # fmt: skip

    def sweep(self, unlink: Callable[[str, tuple[str, ...]], None]) -> None:
        """Let go of customers idle for longer than the kept history (window + allowed
        lateness) behind their partition's newest event: an anonymous visitor or an unknown
        customer whole, a CRM customer's events and alerts (the profile stays). A few
        thousand customers per call, a round every `worker.idle_sweep_s`."""
        now = time.monotonic()
        if now < self._sweep_at:
            return
        queue = self._sweep_queue
        if not queue:
            queue.extend((p, cid) for p, part in self.parts.items() for cid in part.customers)
            if not queue:
                self._sweep_at = now + self.sweep_s
                return
        batch = [queue.popleft() for _ in range(min(SWEEP_BATCH, len(queue)))]
        if not queue:
            self._sweep_at = now + self.sweep_s
        horizon = self.horizon_us
        dropped = 0
        for p, cid in batch:
            part = self.parts.get(p)
            state = part.customers.get(cid) if part is not None and not part.replaying else None
            if part is None or state is None or state.max_t is None or not state.events:
                continue
            if state.max_t >= part.stream_t - horizon:
                continue
            gone = links(state.events)
            if gone:
                unlink(cid, tuple(sorted(gone)))
            if state.profile is None:
                del part.customers[cid]
            else:
                state.events.clear()
                state.alerts.clear()
                state.seen = None
            dropped += 1
        if dropped:
            self.ctx.stats.counters["idle_customers_dropped"] += dropped
            log.info("%d customers idle for longer than the kept history let go", dropped)
