"""The judge's per-customer state on local disk: one RocksDB database per partition of
`cem.internal.by-customer` (under `state.dir`), as Kafka Streams, faust and quix-streams keep
theirs, with the customers in use decoded in a bounded cache in front.

What is on disk is always *written* state: a batch's changed states are encoded when its
output is sealed, and put in the database, with the partition's next input offset, in one
atomic write batch only once its rows are in ClickHouse and its alerts acknowledged, just
before the group's offsets are committed (`Customers.persist`). So the database is always one
consistent moment of the partition's log: after a crash, a worker with its disk resumes from
the stored offset (nothing to replay but messages not yet persisted), and a state read from
it never holds an event whose rows were not written (the judge would drop that event as
already seen when it came again).

Values are `max_t` (8 bytes, big-endian; -1: no events), the length of the JSON before the
events (4 bytes), then the state's stored form as JSON (`CustomerState.stored`): [customer_id,
profile, max_t, alerts, what the judge needs to know of the events, events]. The idle sweep
reads `max_t` without decoding; a state is read without decoding its events (they are
decoded only when the judge needs them), and written back with their bytes as they were;
a snapshot chunk is the JSON of the values joined, without decoding them. (Values written
before the events were kept apart hold the snapshot form right after `max_t`: still read.)
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import shutil
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
)

from processors.judge import EVENT_SEP, CustomerState

if TYPE_CHECKING:
    from pipeline.settings import StateSettings

log = logging.getLogger("cem.state")

MiB = 2**20
# {"offset": next input offset, "stream_t": newest event time, "customers": how many}, written
# with the states
OFFSET_KEY = b"\x00offset"
BUILDING_KEY = b"\x00building"  # a load from Kafka under way: an interrupted one is started again
# Customers' keys: c/<keyed hash of the customer id>. Not the id itself: RocksDB's MANIFEST
# records the first and last key of every file, and keeps old records after the files are
# gone, so an erased customer's id would stay there.
PREFIX = b"c/"
END = b"c0"  # the first key after every customer's ("/" + 1)
_MAX_T = struct.Struct(">q")
_HEAD = struct.Struct(">qI")  # max_t, and the length of the JSON before the events
_OLD_FORM = ord("[")  # a value of the form before: the JSON right after max_t
KEYS_HELD = 2_500  # per partition; a key costs ~250 bytes held, ~1 us made again
# encoding between two turns of the event loop: stage A runs meanwhile (the judge holds its
# lock all through the seal). Counted in time, not states: a state with many events decoded
# takes far longer than one read back (500 states a turn held the loop for 60-200 ms); 5 ms
# slices cost memory (docs/benchmarks.md)
ENCODE_SLICE_S = 0.015
MEMBER_ID = re.compile(r"cem-[0-9a-f]{32}")
OPEN_RETRY_S = 10.0  # a database is still locked by a process that is exiting


def encode(state: CustomerState, repack: bool = False) -> bytes:
    """With `repack`, a state read back holds its new events encoded too after this (`CustomerState.stored`)."""
    max_t = state.max_t if state.has_events() and state.max_t is not None else -1
    head, events = state.stored(repack)
    return _value(max_t, orjson.dumps(head), events)


def _value(max_t: int, before: bytes, events: bytes) -> bytes:
    """`max_t`, then the head's JSON (`before`) with the events' JSON array as its last item."""
    return _HEAD.pack(max_t, len(before)) + before[:-1] + b"," + events + b"]"


def decode(value: bytes) -> CustomerState:
    if value[8] == _OLD_FORM:
        return CustomerState.from_snapshot(orjson.loads(memoryview(value)[8:]))
    split = _HEAD.unpack_from(value)[1]
    body = memoryview(value)[_HEAD.size :]
    return CustomerState.from_stored(orjson.loads(bytes(body[: split - 1]) + b"]"), bytes(body[split:-1]))


def json_of(value: bytes) -> memoryview:
    """The JSON of a stored value: a list that `CustomerState.from_snapshot` reads."""
    return memoryview(value)[8 if value[8] == _OLD_FORM else _HEAD.size :]


def max_t_of(value: bytes) -> int:
    """The newest event time of a stored state; -1 if it keeps no events."""
    return int(_MAX_T.unpack_from(value)[0])


class Disk:
    """The worker's RocksDB databases, under one memory budget: a block cache and a write
    buffer budget shared by all of them (a database per partition with RocksDB's defaults
    would take ~200 MiB each)."""

    def __init__(self, root: Path, settings: StateSettings, secret: bytes) -> None:
        self.root = root
        self.settings = settings
        self.secret = hashlib.blake2b(secret, digest_size=32).digest()  # blake2b takes keys of 64 bytes at most
        # stored with each partition's offset: keys made with another secret are not found
        # (a rotated privacy.fingerprint_secret), so such a database is rebuilt, not used
        self.key_id = hashlib.blake2b(b"cem state keys", digest_size=8, key=self.secret).hexdigest()
        self._member_lock: IO[str] | None = None  # held while the worker lives (member_id)
        self._cache = Cache(settings.block_cache_mib * MiB)
        self._buffers = WriteBufferManager(settings.write_buffer_mib * MiB, False)

    def options(self) -> Options:
        s = self.settings
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_bloom_filter(10, False)  # a customer seen for the first time costs no disk read
        table.set_cache_index_and_filter_blocks(True)  # inside the budget, not beside it
        # Partitioned index and filters: a lookup loads the 4 KiB partitions it needs, not the
        # index and filter of a whole file (megabytes once the files are large). Without them,
        # a block cache smaller than all the filters thrashed: the identity index read whole
        # went from 136,000 to 2,000 entries/s after its first million.
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_manager(self._buffers)
        opts.set_write_buffer_size(max(1, s.write_buffer_mib // 4) * MiB)
        opts.set_max_write_buffer_number(2)
        opts.set_max_background_jobs(2)
        opts.set_keep_log_file_num(2)
        opts.set_max_total_wal_size(s.write_buffer_mib * MiB)
        opts.set_max_open_files(256)
        compression = {
            "lz4": DBCompressionType.lz4(), "zstd": DBCompressionType.zstd(), "none": DBCompressionType.none(),
        }[s.compression]  # fmt: skip
        opts.set_compression_type(compression)
        return opts

    async def open(self, name: str) -> Rdict:
        """Open (or create) a database. Its lock may still be held for a moment by a process
        that is exiting, or by this one while an iterator over it is let go: try again. One
        that cannot be opened otherwise (damaged files) is deleted and made anew: what it
        held is rebuilt from Kafka."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + OPEN_RETRY_S
        removed = False
        while True:
            try:
                return Rdict(str(path), self.options(), access_type=AccessType.read_write())
            except Exception as e:
                if "lock" in str(e).lower():
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
                elif removed:
                    raise
                else:
                    log.error("state database %s cannot be opened (%s): deleted, to be rebuilt from Kafka", path, e)
                    shutil.rmtree(path, ignore_errors=True)
                    removed = True

    def member_id(self) -> str:
        """This disk's member id in the worker's consumer groups (worker.static_membership),
        made the first time: a worker restarted on this disk rejoins as the same member. Held
        locked for the life of the process: two workers with one id would take each other's
        place in the groups back and forth, both judging the same partitions."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "member-id"
        if self._member_lock is None:
            lock = (self.root / "member-id.lock").open("a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                raise RuntimeError(
                    f"another worker is using {self.root} (state.dir): each worker needs its own"
                ) from None
            self._member_lock = lock
        member = path.read_text().strip() if path.exists() else ""
        if not MEMBER_ID.fullmatch(member):  # new, or cut short by a crash while it was written
            member = f"cem-{uuid.uuid4().hex}"
            made = path.with_suffix(".new")
            with made.open("w") as f:
                f.write(member)
                f.flush()
                os.fsync(f.fileno())
            made.replace(path)
        return member

    def names(self, parent: str) -> list[str]:
        """The databases under `parent` (e.g. a topic's partitions)."""
        folder = self.root / parent
        return sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.exists() else []

    def remove(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)


class Decoded:
    """Recently used states, decoded, across the worker's partitions: at most `capacity`,
    the least recently used let go first (they are on disk)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[tuple[int, str], CustomerState] = OrderedDict()

    def get(self, key: tuple[int, str]) -> CustomerState | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: tuple[int, str], state: CustomerState) -> None:
        states = self._states
        states[key] = state
        states.move_to_end(key)
        while len(states) > self.capacity:
            states.popitem(last=False)

    def drop(self, key: tuple[int, str]) -> None:
        self._states.pop(key, None)

    def drop_partition(self, partition: int) -> None:
        for key in [k for k in self._states if k[0] == partition]:
            del self._states[key]

    def __len__(self) -> int:
        return len(self._states)


class Customers:
    """One partition's customers: in its database, the ones in use decoded in the shared
    cache, the ones changed since the last seal held here until they are sealed."""

    def __init__(self, number: int, db: Rdict, decoded: Decoded, secret: bytes, key_id: str = "") -> None:
        self.number = number
        self.db = db
        self.secret = secret
        self.key_id = key_id
        self.decoded = decoded
        self.dirty: dict[str, CustomerState | None] = {}  # changed since the last seal; None: erased
        self.sealed: dict[str, bytes | None] = {}  # sealed, not yet in the database
        self.sealed_offset: int | None = None
        self.sealed_stream_t = 0
        self.closed = False
        self._keys: OrderedDict[str, bytes] = OrderedDict()  # of the customers seen lately (hashing costs ~1 us)
        self.erasing: set[str] = set()  # erased customers among the dirty
        self.erased: set[str] = set()  # among the sealed: the files that held them are rewritten after
        self.held = 0  # customers in the database
        self._existed: dict[str, bool] = {}  # whether each of the dirty was held before it changed
        self._sealed_delta = 0  # what the sealed add to `held`
        self._encoded: dict[str, bytes] = {}  # the dirty, encoded ahead of the seal

    def key_of(self, customer_id: str) -> bytes:
        key = self._keys.get(customer_id)
        if key is None:
            key = PREFIX + hashlib.blake2b(customer_id.encode(), digest_size=16, key=self.secret).digest()
            self._keys[customer_id] = key
            if len(self._keys) > KEYS_HELD:
                self._keys.popitem(last=False)
        return key

    # ---------------------------------------------------------------- reading and changing
    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id in self.dirty:
            return self.dirty[customer_id]
        key = (self.number, customer_id)
        state = self.decoded.get(key)
        if state is None:
            value = self.sealed[customer_id] if customer_id in self.sealed else self.db.get(self.key_of(customer_id))
            if value is not None:
                state = decode(value)
                self.decoded.put(key, state)
        self._existed.setdefault(customer_id, state is not None)
        return state

    def put(self, state: CustomerState) -> None:
        """The state changed: it goes to disk with the next seal."""
        if state.customer_id not in self._existed:
            self.get(state.customer_id)  # whether it is new, for the count
        self.dirty[state.customer_id] = state
        self.decoded.put((self.number, state.customer_id), state)

    def pop(self, customer_id: str, *, erasure: bool) -> CustomerState | None:
        """Forget the customer: gone from disk with the next seal (after an erasure, from the
        files too: `purge`)."""
        state = self.get(customer_id)
        self.dirty[customer_id] = None
        if erasure:
            self.erasing.add(customer_id)
        self.decoded.drop((self.number, customer_id))
        return state

    # ---------------------------------------------------------------- to disk
    def encoding(self, slice_s: float = ENCODE_SLICE_S) -> Iterator[None]:
        """Encode the changed states ahead of `seal`, yielding after every `slice_s` of it, so
        that the caller can let the event loop through. Nothing may change them between this
        and the seal."""
        encoded = self._encoded = {}
        clock = time.perf_counter
        until = clock() + slice_s
        for cid, state in self.dirty.items():
            if state is not None:
                encoded[cid] = encode(state, repack=True)
            if clock() >= until:
                yield
                until = clock() + slice_s

    def seal(self, next_offset: int, stream_t: int) -> None:
        """Encode what changed, as it is now (or as `encoding` did), to be persisted with this
        offset once its output is written (`persist`). The previous seal must be persisted: one
        whose output was never written must not reach the disk with a later offset."""
        if self.sealed_offset is not None:
            raise RuntimeError(f"partition {self.number}: sealed again before the previous seal was persisted")
        encoded, self._encoded = self._encoded, {}
        self.sealed = {
            cid: None if s is None else (encoded.get(cid) or encode(s, repack=True)) for cid, s in self.dirty.items()
        }  # fmt: skip
        self.erased |= self.erasing
        self.erasing = set()
        self.sealed_offset, self.sealed_stream_t = next_offset, stream_t
        existed = self._existed
        self._sealed_delta += sum((s is not None) - existed.get(cid, True) for cid, s in self.dirty.items())
        self.dirty, self._existed = {}, {}

    def persist(self) -> int | None:
        """The sealed states and offset, in one atomic write; returns that offset."""
        offset = self.sealed_offset
        if offset is None or self.closed:
            return None  # closed: revoked meanwhile, and its next owner judges this again
        batch = WriteBatch(raw_mode=True)
        for cid, value in self.sealed.items():
            if value is None:
                batch.delete(self.key_of(cid))
            else:
                batch.put(self.key_of(cid), value)
        batch.put(OFFSET_KEY, self._meta(offset, self.sealed_stream_t, self.held + self._sealed_delta))
        self.db.write(batch)
        self.held += self._sealed_delta
        self.sealed, self.sealed_offset, self._sealed_delta = {}, None, 0
        if self.erased:
            self.purge([self.key_of(cid) for cid in self.erased])
            self.erased = set()
        return offset

    def purge(self, keys: list[bytes]) -> None:
        """Erased customers' old values leave the files now, not at some later compaction:
        flush the memtable (and so retire the write-ahead log that held them) and rewrite
        the files that hold their keys (one range: erasures are rare, and come one by one)."""
        self.db.flush()
        self.db.compact_range(min(keys), max(keys))

    def stored(self) -> tuple[int, int] | None:
        """(next input offset, newest event time) of what the database holds; None: nothing
        usable (new, or a load from Kafka that did not finish)."""
        if self.db.get(BUILDING_KEY) is not None:
            return None
        value = self.db.get(OFFSET_KEY)
        if value is None:
            return None
        meta = orjson.loads(value)
        if meta.get("keys") != self.key_id:
            log.warning("partition %d: the state on disk was keyed with another secret: rebuilt", self.number)
            return None
        self.held = int(meta["customers"])
        return int(meta["offset"]), int(meta["stream_t"])

    # ---------------------------------------------------------------- loading from Kafka
    def clear(self) -> None:
        """Empty the database, marked as being built until `built`."""
        self.db.put(BUILDING_KEY, b"1")
        self.db.delete_range(PREFIX, END)
        self.db.delete(OFFSET_KEY)
        self.dirty, self.sealed, self.sealed_offset = {}, {}, None
        self.held, self._existed, self._sealed_delta = 0, {}, 0
        self.decoded.drop_partition(self.number)

    def load(self, states: list[CustomerState], previous: CustomerState | None) -> CustomerState | None:
        """Write loaded states. A customer spread over several snapshot entries (`previous`,
        the last state of the chunk before) comes in adjacent entries: joined. Returns the last
        state written, for the next call."""
        batch = WriteBatch(raw_mode=True)
        for state in states:
            if previous is not None and previous.customer_id == state.customer_id:
                previous.events.extend(state.events)
                previous.alerts.update(state.alerts)
                state = previous
            else:
                self.held += 1
            batch.put(self.key_of(state.customer_id), encode(state))
            previous = state
        self.db.write(batch)
        return previous

    def load_stored(self, entries: list[list[Any]]) -> None:
        """Write loaded states given as the stored form's JSON, parsed (a snapshot chunk of
        stored values: six values each), without decoding them into states: each value is
        made again as `encode` made it. Decoding every event of a lost disk's snapshots, and
        encoding them again, took minutes at 1M customers."""
        batch = WriteBatch(raw_mode=True)
        for customer_id, profile, max_t, alerts, known, events in entries:
            before = orjson.dumps([customer_id, profile, max_t, alerts, known])
            rows = b"[" + EVENT_SEP.join([orjson.dumps(e) for e in events]) + b"]"
            newest = max_t if known[0] and max_t is not None else -1
            batch.put(self.key_of(customer_id), _value(newest, before, rows))
        self.held += len(entries)
        self.db.write(batch)

    def built(self, next_offset: int, stream_t: int) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(OFFSET_KEY, self._meta(next_offset, stream_t, self.held))
        batch.delete(BUILDING_KEY)
        self.db.write(batch)

    # ---------------------------------------------------------------- walking
    def values(self, start: bytes = PREFIX) -> Generator[tuple[bytes, bytes]]:
        """(key, value) of the stored customers from `start`, in key order, as the database
        is now: a RocksDB iterator sees the database as it was when it was made, whatever
        is written while it is read. (rocksdict's `Snapshot.iter` does not: it reads the
        live database, so it is not used.)"""
        opts = ReadOptions()
        opts.set_iterate_upper_bound(END)
        it = self.db.iter(opts)  # made now, not when the generator is first advanced
        it.seek(start)
        return _entries(it)

    def count(self) -> int:
        """Customers in the database."""
        return self.held

    def _meta(self, offset: int, stream_t: int, customers: int) -> bytes:
        return orjson.dumps({"offset": offset, "stream_t": stream_t, "customers": customers, "keys": self.key_id})

    def close(self) -> None:
        self.closed = True
        self.decoded.drop_partition(self.number)
        self.db.close()


def _entries(it: Any) -> Generator[tuple[bytes, bytes]]:
    try:
        while it.valid():
            yield it.key(), it.value()
            it.next()
    finally:
        del it


def after(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (an iterator's upper bound)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
