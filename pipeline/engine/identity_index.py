"""The identity index, replicated to every worker: identifier fingerprint -> customer id.

A compacted topic (`cem.internal.identity`) holds the index. Every worker reads all of its
partitions from the beginning and keeps following it with a group-less consumer, the way
Kafka Streams' GlobalKTable works. Writes go through the producer, and the writing worker
sees them at once. We use this instead of faust's GlobalTable: with two workers, that table
lost entries written on the other worker (tests/integration/test_faults.py, two workers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.engine.failpoints import failpoint
from pipeline.kafka.reading import end_offsets_of

log = logging.getLogger("cem.identity")


class IdentityIndex:
    def __init__(self, client_config: dict[str, Any], topic: str) -> None:
        self.client_config = client_config  # pipeline.kafka.clients.aiokafka()
        self.topic = topic
        self.data: dict[str, str] = {}
        self.loaded = asyncio.Event()  # the topic was read up to its end offsets at start-up
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        # Written here and not read back from the topic yet: records of these keys read before
        # ours come back are older than ours, and must not put the old value back meanwhile.
        self._unread: dict[str, str | None] = {}

    def holds(self, ends: dict[int, int]) -> bool:
        """Whether everything up to these end offsets (partition -> offset) has been read."""
        return all(self.positions.get(p, 0) >= end for p, end in ends.items())

    def get(self, fingerprint: str) -> str | None:
        return self.data.get(fingerprint)

    def apply(self, fingerprint: str, customer_id: str | None) -> None:
        """A write of this worker's (sent to the topic by the caller): in force at once."""
        self._unread[fingerprint] = customer_id
        self._set(fingerprint, customer_id)

    def _read(self, fingerprint: str, customer_id: str | None) -> None:
        """A record read from the topic."""
        if fingerprint in self._unread:
            if self._unread[fingerprint] != customer_id:
                return  # older than this worker's own write, which is still to come
            del self._unread[fingerprint]
        self._set(fingerprint, customer_id)

    def _set(self, fingerprint: str, customer_id: str | None) -> None:
        if customer_id is None:
            self.data.pop(fingerprint, None)
        else:
            self.data[fingerprint] = customer_id

    async def follow(self) -> None:
        """Load the whole topic, then follow it for as long as the worker runs."""
        consumer = AIOKafkaConsumer(**self.client_config, enable_auto_commit=False)
        await consumer.start()
        try:
            ends: dict[TopicPartition, int] = {}
            while not ends:  # metadata may take a moment after start
                ends = await end_offsets_of(consumer, self.topic)  # before assigning (see there)
                if not ends:
                    await asyncio.sleep(0.2)
            tps = list(ends)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for records in batch.values():
                    for rec in records:
                        self._read(rec.key.decode(), None if rec.value is None else rec.value.decode())
                for tp in tps:
                    self.positions[tp.partition] = await consumer.position(tp)
                if not self.loaded.is_set():
                    failpoint("index.loading")
                    behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
                    if not behind:
                        log.info("identity index loaded: %d entries", len(self.data))
                        self.loaded.set()
        finally:
            await consumer.stop()
