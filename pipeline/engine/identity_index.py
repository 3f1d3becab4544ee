"""The identity index, replicated to every worker: identifier fingerprint -> customer id.

A compacted topic (`cem.internal.identity`) holds the index. Every worker reads all of its
partitions and keeps following it with a group-less consumer, the way Kafka Streams'
GlobalKTable works, into a RocksDB database on its disk (`<state.dir>/identity`), so that
its memory does not grow with the number of CRM profiles; the entries in use are kept in a
bounded cache. The positions read are stored with the entries (one atomic write per batch),
so a restarted worker reads only what came since. Writes go through the producer, and the
writing worker sees them at once. We use this instead of faust's GlobalTable: with two
workers, that table lost entries written on the other worker (tests/integration/test_faults.py,
two workers).

Keys: `f/<fingerprint>` -> customer id; `r/<keyed hash of the customer id><fingerprint>`
(a customer's entries, for an erasure: deleted with the entry; hashed, so that an erased
customer's id does not stay in RocksDB's file boundaries); `\\0positions` -> {partition:
next offset, "at": unix time}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Rdict, ReadOptions, WriteBatch

from pipeline.engine.failpoints import failpoint
from pipeline.engine.state_store import Disk, after
from pipeline.kafka.reading import assign_at, end_offsets_of

log = logging.getLogger("cem.identity")

FORWARD = b"f/"
REVERSE = b"r/"
POSITIONS = b"\x00positions"
PURGE_S = 30.0  # longest a removed entry stays in the files (a rewrite per removal would cost too much)
UNREAD_S = 600.0  # longest a write of this worker's is in force here without coming back
POSITIONS_EVERY_S = 300.0  # stored this often even when nothing comes, so that their age tells


class IdentityIndex:
    def __init__(
        self, client_config: dict[str, Any], topic: str, disk: Disk, *, cache_entries: int, resume_hours: float
    ) -> None:
        self.client_config = client_config  # pipeline.kafka.clients.aiokafka()
        self.topic = topic
        self.disk = disk
        self.cache_entries = cache_entries
        self.resume_s = resume_hours * 3600
        self.db: Rdict | None = None  # opened by `follow`
        self._cache: OrderedDict[str, str | None] = OrderedDict()  # None: known to be absent
        self.loaded = asyncio.Event()  # the topic was read up to its end offsets at start-up
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        # Written here and not read back from the topic yet: in force here over what the
        # database holds (records of these keys read before ours come back are older). An
        # entry whose record never comes back (its send failed, and was not made again) goes
        # after UNREAD_S.
        self._unread: dict[str, tuple[str | None, float]] = {}
        self._unread_swept = time.monotonic()
        # the lowest and highest key of the entries removed since the last purge (what it rewrites)
        self._removed: tuple[bytes, bytes] | None = None
        self._purged_at = 0.0
        self._purging: asyncio.Task[None] | None = None

    def holds(self, ends: dict[int, int]) -> bool:
        """Whether everything up to these end offsets (partition -> offset) has been read."""
        return all(self.positions.get(p, 0) >= end for p, end in ends.items())

    def get(self, fingerprint: str) -> str | None:
        if fingerprint in self._unread:
            return self._unread[fingerprint][0]
        cache = self._cache
        if fingerprint in cache:
            cache.move_to_end(fingerprint)
            return cache[fingerprint]
        if self.db is None:
            return None
        value = self.db.get(FORWARD + fingerprint.encode())
        owner = None if value is None else value.decode()
        if self.cache_entries:
            cache[fingerprint] = owner
            if len(cache) > self.cache_entries:
                cache.popitem(last=False)
        return owner

    def apply(self, fingerprint: str, customer_id: str | None) -> None:
        """A write of this worker's (sent to the topic by the caller): in force at once."""
        self._unread[fingerprint] = (customer_id, time.monotonic())

    def owned_by(self, customer_id: str) -> set[str]:
        """The fingerprints that resolve to this customer now."""
        found = {fp for fp, (owner, _) in self._unread.items() if owner == customer_id}
        if self.db is not None:
            prefix = self._reverse(customer_id)
            opts = ReadOptions()
            opts.set_iterate_upper_bound(after(prefix))
            it = self.db.iter(opts)
            it.seek(prefix)
            candidates = []
            while it.valid():
                candidates.append(it.key()[len(prefix) :].decode())
                it.next()
            del it
            found |= {fp for fp in candidates if self.get(fp) == customer_id}
        return found

    def count(self) -> int:
        """Entries held (RocksDB's estimate: forward and reverse keys, so about twice)."""
        if self.db is None:
            return 0
        return int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0) // 2

    def _reverse(self, customer_id: str) -> bytes:
        return REVERSE + hashlib.blake2b(customer_id.encode(), digest_size=16, key=self.disk.secret).digest()

    def _read(
        self, batch: WriteBatch, fingerprint: str, customer_id: str | None, owners: dict[str, str | None]
    ) -> None:
        """A record read from the topic, into the database (`owners`: what this batch has set
        so far). A write of this worker's still to come back stays in force over it."""
        unread = self._unread.get(fingerprint)
        if unread is not None and unread[0] == customer_id:
            del self._unread[fingerprint]
        key = FORWARD + fingerprint.encode()
        if fingerprint in owners:
            old = owners[fingerprint]
        else:
            assert self.db is not None
            value = self.db.get(key)
            old = None if value is None else value.decode()
        if old is not None and old != customer_id:
            batch.delete(self._reverse(old) + fingerprint.encode())
        if customer_id is None:
            batch.delete(key)
            if old is not None:
                low, high = self._removed or (key, key)
                self._removed = (min(low, key), max(high, key))
        else:
            batch.put(key, customer_id.encode())
            batch.put(self._reverse(customer_id) + fingerprint.encode(), b"")
        owners[fingerprint] = customer_id
        if fingerprint in self._cache:
            self._cache[fingerprint] = customer_id

    def _purge(self) -> None:
        """Removed entries (an erasure's among them) leave the files, not only the index: at
        most every PURGE_S, the memtable is flushed (retiring the write-ahead log that held
        them) and the files that held their keys are rewritten. In a thread of its own
        (RocksDB lets go of the GIL meanwhile, and takes writes beside it): on a large index
        that is seconds of work, which on the event loop stopped the heartbeats. Not while the
        index is first read: its removals span the whole index then, and one purge follows."""
        if self._removed is None or not self.loaded.is_set() or time.monotonic() - self._purged_at < PURGE_S:
            return
        if self._purging is not None and not self._purging.done():
            return
        db, (low, high) = self.db, self._removed
        assert db is not None
        self._removed, self._purged_at = None, time.monotonic()

        def purge() -> None:
            db.flush()
            db.compact_range(low, high)

        self._purging = asyncio.create_task(asyncio.to_thread(purge), name="identity purge")

    async def _purged(self) -> None:
        """The purge under way, finished (before the database is closed)."""
        if self._purging is not None:
            with contextlib.suppress(Exception):
                await self._purging
            self._purging = None

    def _sweep_unread(self) -> None:
        now = time.monotonic()
        if now - self._unread_swept < UNREAD_S / 10:
            return
        self._unread_swept = now
        for fp in [fp for fp, (_, at) in self._unread.items() if now - at > UNREAD_S]:
            del self._unread[fp]

    async def _open(self) -> dict[int, int]:
        """The database, and the positions it holds; none (and emptied) if it is too old to
        be followed on from: compaction may have removed removals it never saw."""
        db = self.db = await self.disk.open("identity")
        raw = db.get(POSITIONS)
        stored = orjson.loads(raw) if raw is not None else None
        if stored is not None and time.time() - stored.pop("at", 0) <= self.resume_s:
            return {int(p): int(o) for p, o in stored.items()}
        if stored is not None:
            log.info("identity index on disk older than state.identity_resume_hours: read again from Kafka")
        db.delete_range(b"\0", b"\xff")
        return {}

    async def follow(self) -> None:
        """Load the topic (from the positions on disk, else whole), then follow it for as long
        as the worker runs."""
        # earliest: a position the consumer ever resets itself (one behind the topic's start)
        # is read again from the start, never skipped to the end
        consumer = AIOKafkaConsumer(**self.client_config, enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            stored = await self._open()
            ends: dict[TopicPartition, int] = {}
            while not ends:  # metadata may take a moment after start
                ends = await end_offsets_of(consumer, self.topic)  # before assigning (see there)
                if not ends:
                    await asyncio.sleep(0.2)
            tps = list(ends)
            starts = await consumer.beginning_offsets(tps)  # before assigning, as the ends
            if any(not starts[tp] <= stored.get(tp.partition, -1) <= ends[tp] for tp in tps):
                stored = {}  # not this topic's positions (recreated, or behind its retention)
                assert self.db is not None
                self.db.delete_range(b"\0", b"\xff")
            assign_at(consumer, {tp: stored.get(tp.partition, starts[tp]) for tp in tps})
            written_at = time.monotonic()
            log.info("identity index: reading %s", "what came since the last run" if stored else "the whole topic")
            while True:
                got = await consumer.getmany(timeout_ms=200, max_records=10_000)
                # From here to the write, no await: a write of this worker's that came back is
                # no longer in `_unread`, and must be in the database when stage A next looks.
                batch = WriteBatch(raw_mode=True)
                owners: dict[str, str | None] = {}
                for tp, records in got.items():
                    for rec in records:
                        self._read(batch, rec.key.decode(), None if rec.value is None else rec.value.decode(), owners)
                    if records:
                        self.positions[tp.partition] = max(self.positions.get(tp.partition, 0), records[-1].offset + 1)
                self._sweep_unread()
                if got or time.monotonic() - written_at > POSITIONS_EVERY_S:
                    written_at = time.monotonic()
                    positions: dict[str, int | float] = {str(p): o for p, o in self.positions.items()}
                    positions["at"] = time.time()
                    batch.put(POSITIONS, orjson.dumps(positions))
                assert self.db is not None
                self.db.write(batch)
                self._purge()
                for tp in tps:  # past the end of a compacted tail too: `holds` compares with end offsets
                    self.positions[tp.partition] = await consumer.position(tp)
                if not self.loaded.is_set():
                    failpoint("index.loading")
                    behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
                    if not behind:
                        log.info("identity index loaded: about %d entries", self.count())
                        self.loaded.set()
        finally:
            await consumer.stop()
            await self._purged()
            if self.db is not None:
                self.db.close()
                self.db = None
