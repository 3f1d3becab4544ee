"""What both stages of a worker share: settings, counters, the producer, the disk, the identity index,
the stop signal, and the two things every stage does the same way (retrying a step until it
succeeds, and parking a bad message in the dead-letter topic)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.engine.decode import Rejected
from pipeline.engine.identity_index import IdentityIndex
from pipeline.engine.metrics import Stats
from pipeline.engine.sends import MESSAGE_BYTES, Sends
from pipeline.engine.state_store import Disk
from pipeline.kafka import clients
from pipeline.kafka.reading import reader
from pipeline.settings import Settings

log = logging.getLogger("cem.pipeline")


class Stopping(Exception):
    """The worker is stopping: a step that was being retried is given up (nothing is committed
    for it, so it is done again after the restart)."""


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        fetch = {  # see clients.group_consumer
            "fetch_max_wait_ms": settings.worker.fetch_max_wait_ms,
            "fetch_min_bytes": settings.worker.fetch_min_bytes,
            "max_partition_fetch_bytes": settings.worker.fetch_partition_bytes,
        }
        self.disk = Disk(settings.state_dir, settings.state, settings.secret)  # every RocksDB database of the worker
        self.member = self.disk.member_id() if settings.worker.static_membership else None  # its groups' member id
        self.index = IdentityIndex(
            clients.aiokafka(settings.kafka) | fetch, settings.kafka.topics.identity, self.disk,
            cache_entries=settings.state.identity_cache_entries, resume_hours=settings.state.identity_resume_hours,
        )  # fmt: skip
        self.producer: AIOKafkaProducer | None = None  # made in the worker's event loop
        self.bulk_producer: AIOKafkaProducer | None = None  # for snapshots (pipeline/engine/sends.py)
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self.reading = asyncio.Lock()  # the reader serves one user at a time
        self.stopping = asyncio.Event()
        self.retries_running = 0

    # The worker's clients live as long as it does: a client made for one job and stopped
    # after it leaves its cluster metadata as cyclic garbage (megabytes where the cluster has
    # many topics), which the judge would freeze for good (pipeline/engine/memory.py).
    async def admin(self) -> AIOKafkaAdminClient:
        """The worker's admin client, started on first use, for the worker's life."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**clients.aiokafka(self.settings.kafka))
            await self._admin.start()
        return self._admin

    async def reader(self) -> AIOKafkaConsumer:
        """The worker's group-less consumer (pipeline/engine/snapshots.py `reader`), started on first use,
        for the worker's life; hold `reading` while using it."""
        if self._reader is None:
            self._reader = reader(clients.aiokafka(self.settings.kafka))
            await self._reader.start()
        return self._reader

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._reader is not None:
            await self._reader.stop()

    def sends(self, *, bulk: bool = False) -> Sends:
        producer = self.bulk_producer if bulk else self.producer
        assert producer is not None, "the producers start before the stages"
        return Sends(producer)

    async def retrying(self, what: str, step: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a step until it succeeds, with exponential backoff: a batch whose output cannot
        be written (ClickHouse or the broker away) waits, and its offsets are not committed,
        so the stream stops pulling and memory stays flat. Gives up when the worker stops."""
        delay, failing = 0.25, False
        try:
            while True:
                try:
                    await step(*args)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.stats.counters["retried_steps"] += 1
                    log.warning("%s failed (%s); retrying in %.1fs", what, e, delay)
                    if not failing:
                        failing, self.retries_running = True, self.retries_running + 1
                    try:
                        await asyncio.wait_for(self.stopping.wait(), delay)
                    except TimeoutError:
                        pass
                    else:
                        raise Stopping(what) from e
                    delay = min(delay * 2, self.settings.worker.clickhouse_retry_max_s)
        finally:
            if failing:
                self.retries_running -= 1

    def dead_letter(
        self, record: Any, why: Rejected, value: bytes | None = None
    ) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """A message (aiokafka ConsumerRecord) parked with the reason in its headers: (key,
        value, headers) for the dead-letter topic. `value`: the part that failed (one item of
        a pack); by default the whole message."""
        self.stats.deadletter[why.reason] += 1
        original = record.value if value is None else value
        headers = why.headers(record.topic, record.partition, record.offset)
        log.info("dead-letter %s: %s", where(record), why.describe())
        # A message the producer cannot send would stop the partition for good: past the limit,
        # the copy is cut, and a header says how long the original was (it is still on its topic).
        room = MESSAGE_BYTES - len(record.key or b"") - sum(len(k) + len(v) for k, v in headers) - 64
        if original is not None and len(original) > room:
            headers.append(("cem.error.truncated", str(len(original)).encode()))
            original = original[:room]
        return record.key, original, headers


def where(record: Any) -> str:
    """topic[partition]@offset of a ConsumerRecord."""
    return f"{record.topic}[{record.partition}]@{record.offset}"
