"""Records of several partitions handed out in the order of their timestamps, as Kafka
Streams does for the partitions of a task (KIP-353, KIP-695: `max.task.idle.ms`,
`buffered.records.per.partition`), not in the order the fetches bring them.

Why: on a backlog (a worker down for an hour, a first start on a month of history) the
fetcher reads every partition at about the same rate in records, so the topic of a quiet
channel runs days ahead of a busy one's. The judge is right in any order (it recomputes),
but an event that comes after a later one of its customer is inserted among events already
judged: their state is decoded whole, the detectors replay, and rows and alerts are
published again. Read in timestamp order, a backlog is judged almost wholly in order
(`make bench`, docs/architecture.md "Reading in timestamp order").

The rule: the record with the smallest timestamp among the partitions' buffered heads goes
first, but only while every partition still behind its end (`behind`) has a record buffered:
the next record of one that has none may be older than every head. Such a partition holds
the others back for at most `max_idle_s`; past that it is passed over until records of it
come, so a partition that cannot be fetched (its leader away) delays the others once, not for
good. A partition at its end holds nothing back: a live stream is not delayed.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

Part = Any  # an aiokafka TopicPartition; its records are aiokafka ConsumerRecords


class Aligner:
    def __init__(
        self,
        topics: frozenset[str],
        *,
        max_idle_s: float,
        per_partition: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = topics  # the aligned ones; other topics' records pass straight through
        self.max_idle_s = max_idle_s
        self.per_partition = per_partition  # fetch no more of a partition holding this many
        self.clock = clock
        self._buffers: dict[Part, deque[Any]] = {}
        self._since: dict[Part, float] = {}  # when a partition behind its end had nothing buffered
        self.held_until: float | None = None  # the last `take` was held back until then

    def add(self, fetched: dict[Part, list[Any]]) -> list[Any]:
        """Buffer fetched records (per partition, in offset order); returns those of the
        topics not aligned, to go on as they are."""
        out: list[Any] = []
        for tp, records in fetched.items():
            if not records:
                continue
            if tp.topic not in self.topics:
                out.extend(records)
                continue
            self._buffers.setdefault(tp, deque()).extend(records)
            self._since.pop(tp, None)
        return out

    def has_room(self, tp: Part) -> bool:
        buffer = self._buffers.get(tp)
        return tp.topic not in self.topics or buffer is None or len(buffer) < self.per_partition

    def buffered(self, tp: Part | None = None) -> int:
        if tp is not None:
            buffer = self._buffers.get(tp)
            return len(buffer) if buffer else 0
        return sum(len(b) for b in self._buffers.values())

    def drop(self, tps: Iterable[Part]) -> None:
        """Forget partitions taken away (a rebalance): their records are read again from the
        committed offsets by whoever has them now."""
        for tp in tps:
            self._buffers.pop(tp, None)
            self._since.pop(tp, None)

    def _holding(self, tp: Part, behind: Callable[[Part], bool], now: float) -> bool:
        """Whether `tp`, with nothing buffered, holds the others back now."""
        if not behind(tp):
            self._since.pop(tp, None)
            return False
        since = self._since.setdefault(tp, now)
        if now - since < self.max_idle_s:
            until = since + self.max_idle_s
            self.held_until = until if self.held_until is None else min(self.held_until, until)
            return True
        return False

    def take(self, n: int, assigned: Iterable[Part], behind: Callable[[Part], bool]) -> list[Any]:
        """Up to `n` buffered records in timestamp order (each partition's in offset order).
        `assigned`: the aligned partitions being read; `behind(tp)`: whether the broker has
        records of `tp` that are not fetched yet."""
        now = self.clock()
        self.held_until = None
        buffers = self._buffers
        # every partition that holds the others back is asked, so that their waits run side by
        # side: k partitions away delay the others max_idle_s once, not k times
        empty = [tp for tp in assigned if tp.topic in self.topics and not buffers.get(tp)]
        if any([self._holding(tp, behind, now) for tp in empty]):  # (a list: each one asked)
            return []
        heads = [(b[0].timestamp, i, tp) for i, (tp, b) in enumerate(buffers.items()) if b]
        heapq.heapify(heads)
        out: list[Any] = []
        while heads and len(out) < n:
            _, i, tp = heads[0]
            buffer = buffers[tp]
            out.append(buffer.popleft())
            if buffer:
                heapq.heapreplace(heads, (buffer[0].timestamp, i, tp))
                continue
            heapq.heappop(heads)
            del buffers[tp]
            if self._holding(tp, behind, now):
                break
        return out
