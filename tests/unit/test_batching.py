"""The collector's dispatcher packs concurrent requests into one batch per partition, keeps
each key's order, and fails a round's requests together (without a broker: a fake producer
with aiokafka's interface)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.sources.batching import Dispatcher, Outgoing


class FakeBuilder:
    def __init__(self, room: int) -> None:
        self.items: list[tuple[bytes | None, bytes]] = []
        self.room = room

    def append(self, *, key: bytes | None, value: bytes, timestamp: None) -> object | None:
        if len(self.items) >= self.room and self.items:
            return None
        self.items.append((key, value))
        return object()

    def close(self) -> None:
        pass


class FakeProducer:
    """One batch per partition at a time, as aiokafka's accumulator: a send_batch waits while
    the partition's previous batch is not taken yet."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[int, list[tuple[bytes | None, bytes]]]] = []
        self.busy: set[int] = set()
        self.fail = fail

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(room=50)

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if self.fail:
            raise ConnectionError("broker away")
        while partition in self.busy:
            await asyncio.sleep(0)
        self.busy.add(partition)
        self.sent.append((partition, builder.items))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        loop.call_later(0.001, lambda: (self.busy.discard(partition), done.set_result(None)))
        return done


def test_concurrent_requests_share_batches_and_keep_each_keys_order() -> None:
    async def main() -> FakeProducer:
        producer = FakeProducer()
        d = Dispatcher(producer)  # type: ignore[arg-type]
        d.start()
        requests = [[Outgoing(f"k{i % 7}".encode(), f"{r}:{i}".encode()) for i in range(100)] for r in range(60)]
        await asyncio.wait_for(asyncio.gather(*(d.send("t", msgs) for msgs in requests)), 10)
        await d.stop()
        return producer

    producer = asyncio.run(main())
    values = [v for _, items in producer.sent for _, v in items]
    assert sorted(values) == sorted(f"{r}:{i}".encode() for r in range(60) for i in range(100))
    assert len(producer.sent) < 6000 / 10  # batched, not one send per message
    by_key: dict[bytes | None, list[tuple[int, int]]] = {}
    partition_of: dict[bytes | None, set[int]] = {}
    for p, items in producer.sent:
        for k, v in items:
            r, i = v.decode().split(":")
            by_key.setdefault(k, []).append((int(r), int(i)))
            partition_of.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in partition_of.values())  # a key always on one partition
    for seq in by_key.values():  # a request's messages of a key, in order
        for r in {r for r, _ in seq}:
            mine = [i for rr, i in seq if rr == r]
            assert mine == sorted(mine)


def test_a_failed_round_fails_its_requests_and_the_next_round_runs() -> None:
    async def main() -> None:
        producer = FakeProducer(fail=True)
        d = Dispatcher(producer)  # type: ignore[arg-type]
        d.start()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(d.send("t", [Outgoing(b"k", b"v")]), 5)
        producer.fail = False
        await asyncio.wait_for(d.send("t", [Outgoing(b"k", b"w")]), 5)
        assert [items for _, items in producer.sent] == [[(b"k", b"w")]]
        await d.stop()

    asyncio.run(main())
