"""Snapshots of the judge's state in Kafka: what rebuilds a partition's state when its
local database (pipeline/engine/state_store.py) is not there or is behind the log's start (a
new machine, a lost disk, a partition moved to another worker).

The state is a function of the partition's messages alone: the judge is deterministic, and a
message applied twice changes nothing (a touchpoint seen before is dropped, an older profile
version is ignored, erasing an erased customer erases nothing). So the partition's own log
serves as the state's changelog, and a snapshot only bounds how much of it is read again.
Each partition's go to the compacted topic `cem.internal.snapshots`, on the same partition
number:

* A partition is snapshotted when it has taken more touchpoints since its last snapshot than
  it holds customers (so reading the log again costs about what loading the state does),
  but no fewer than `worker.snapshot_min_touchpoints`; or when `worker.snapshot_interval_s`
  has passed with any change, so that the snapshot the log is read from is always far
  younger than the topic's retention (`kafka.internal_retention_days`).
* A snapshot is read through a RocksDB iterator over the partition's database: one consistent
  moment, at the offset stored with it (`from_offset`), holding only written state (see
  state_store.py). Its chunks, of about `CHUNK_BYTES`, are the stored values joined (no
  decoding), a few between two batches, and sent by a task of their own.
* Keys are `s/<id>/c/<n>` for the chunks and `s/<id>/m` for the manifest, which is written
  once every chunk is acknowledged and makes the snapshot complete. Then the writer deletes
  every other snapshot of the partition (tombstones; compaction reclaims them). The newest
  complete snapshot wins, so a snapshot left half-written by a crash or a lost partition is
  never loaded.

Rebuilding a partition (`load`): the newest complete snapshot, written into its database
chunk by chunk, else an empty state at the start of the log. The judge then reads the
partition from there: messages before the group's committed offset are applied silently
(their rows, alerts and index entries were written before that commit), the rest as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.engine.failpoints import failpoint
from pipeline.engine.sends import SNAPSHOT_MESSAGE_BYTES, Sends
from pipeline.engine.state_store import Customers, decode, json_of
from pipeline.kafka.reading import read_compacted
from processors.judge import CustomerState

log = logging.getLogger("cem.state")

FORMAT = 2  # of the manifest and chunks below (2: chunks may hold states in the stored form)
READABLE = (1, 2)  # a worker of before reads only 1: it passes the snapshots of 2 by, whole
#: uncompressed size of a chunk (about 5x less on the wire). Encoding one holds the event loop
#: (~3 ms here; 80-200 ms under load at 2 MiB, the latency's tail)
CHUNK_BYTES = 256 * 2**10
MANIFEST = "m"
STORED_FIELDS = 6  # of an entry in the stored form (`CustomerState.stored`); `to_snapshot`'s has 5
RETRY_S = 30.0  # after a failed snapshot
STEP_S = 0.025  # of chunks encoded at a time: the judge waits meanwhile, stage A gets the loop between two
# A step may take this share of the event loop's CPU since the step before, up to STEP_MAX_S:
# a worker on a backlog judges for a second or so between two steps, and at STEP_S a step its
# partitions' first snapshots took minutes each (a lost disk then replayed their whole logs).
# CPU, not time: a judge waiting on a slow ClickHouse must not hold its lock longer for it.
SHARE = 0.1
STEP_MAX_S = 0.25
GAP_S = 2.0  # between two snapshots


@dataclass
class Partition:
    """The state of one partition of the internal topic, and where it stands in its log."""

    number: int
    customers: Customers
    next_offset: int = 0  # the first offset not applied yet
    committed: int = 0  # the group's committed offset: everything before it is written
    replay_until: int = 0  # offsets below this are applied silently (written before a restart)
    touches_since: int = 0  # touchpoints applied since the newest snapshot's from_offset
    held: int = 0  # customers, as counted by the last snapshot or load
    snapshot_at: float = field(default_factory=time.monotonic)  # of the last snapshot or load
    # live keys of its snapshot partition; None: not read (the state came from the disk)
    snapshot_keys: set[bytes] | None = None
    snapshot_retry_at: float = 0.0  # after a failed snapshot: not before this (monotonic)
    stream_t: int = 0  # the newest event time applied: customers idle long before it are let go
    persisted_offset: int = 0  # the offset stored in its database

    @property
    def replaying(self) -> bool:
        return self.next_offset < self.replay_until


def chunk_key(snapshot: str, n: int) -> bytes:
    return f"s/{snapshot}/c/{n}".encode()


def manifest_key(snapshot: str) -> bytes:
    return f"s/{snapshot}/{MANIFEST}".encode()


def encode_chunk(states: Iterable[CustomerState]) -> tuple[bytes, int]:
    """A chunk's value, and its size before compression."""
    raw = orjson.dumps([s.to_snapshot() for s in states])
    return zlib.compress(raw, 1), len(raw)


def decode_chunk(value: bytes) -> list[CustomerState]:
    return [CustomerState.from_snapshot(c) for c in orjson.loads(zlib.decompress(value))]


def encode_chunks(states: list[CustomerState], limit: int = SNAPSHOT_MESSAGE_BYTES) -> list[tuple[bytes, int]]:
    """Chunk values of at most `limit` bytes, in order: a chunk over it is halved, and a single
    customer over it has their kept events spread over several entries, which `load` joins
    again (a snapshot that cannot be sent would leave the partition without one for good)."""
    value, raw = encode_chunk(states)
    if len(value) <= limit:
        return [(value, raw)]
    if len(states) > 1:
        half = len(states) // 2
        return encode_chunks(states[:half], limit) + encode_chunks(states[half:], limit)
    (state,) = states
    if len(state.events) < 2:
        raise ValueError(f"one kept event of customer {state.customer_id} is over {limit} bytes compressed")
    half = len(state.events) // 2
    first = CustomerState(state.customer_id, state.profile, state.events[:half], state.max_t, state.alerts)
    rest = CustomerState(state.customer_id, state.profile, state.events[half:], state.max_t)
    return encode_chunks([first], limit) + encode_chunks([rest], limit)


def encode_stored(values: list[bytes], limit: int = SNAPSHOT_MESSAGE_BYTES) -> list[tuple[bytes, int]]:
    """Chunk values made of stored states (state_store.encode) as they are: the same chunks
    as `encode_chunks`, without decoding a state unless it alone is over the limit."""
    raw = b"[" + b",".join(json_of(v) for v in values) + b"]"
    value = zlib.compress(raw, 1)
    if len(value) <= limit:
        return [(value, len(raw))]
    if len(values) > 1:
        half = len(values) // 2
        return encode_stored(values[:half], limit) + encode_stored(values[half:], limit)
    return encode_chunks([decode(values[0])], limit)


def add_loaded(customers: dict[str, CustomerState], state: CustomerState) -> None:
    """A state read from a snapshot; a customer spread over several entries is joined."""
    held = customers.get(state.customer_id)
    if held is None:
        customers[state.customer_id] = state
    else:
        held.events.extend(state.events)
        held.alerts.update(state.alerts)


# ---------------------------------------------------------------------------- writing
@dataclass
class Walk:
    """A snapshot being made: chunks encoded by the judge between batches (`Snapshots.step`),
    sent by a task of their own (`Snapshots._send`), so that the judge never waits for the
    broker on a snapshot's account."""

    part: Partition
    snapshot: str
    from_offset: int
    touches_at_start: int
    entries: Iterator[tuple[bytes, bytes]]  # the stored customers, as they were when it started
    outbox: asyncio.Queue[tuple[bytes, bytes] | None]  # (key, value) of encoded chunks; None: all encoded
    chunks: int = 0
    customers: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    per_chunk: int = CHUNK_BYTES // 4096  # customers; adjusted so that chunks come out near CHUNK_BYTES
    done: bool = False
    sender: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Let go of the RocksDB iterator (a database is not closed while one is held)."""
        close = getattr(self.entries, "close", None)
        if close is not None:
            close()
        self.entries = iter(())


LiveKeys = Callable[[int], Awaitable[set[bytes]]]


class Snapshots:
    """Decides when a partition is snapshotted, and makes the snapshot (see the module's
    docstring): one partition at a time, a few chunks per `step`."""

    def __init__(
        self, topic: str, new_sends: Callable[[], Sends], *, min_touchpoints: int, interval_s: float,
        counters: Any, live_keys: LiveKeys,
    ) -> None:  # fmt: skip
        self.topic = topic
        self.new_sends = new_sends
        self.min_touchpoints = min_touchpoints
        self.interval_s = interval_s
        self.counters = counters  # Stats.counters
        self.live_keys = live_keys  # a partition's snapshot keys on the topic, when not known
        self.walk: Walk | None = None  # being encoded
        self.sending: Walk | None = None  # encoded or being encoded, not yet all on the broker
        self.next_walk_at = 0.0

    def due(self, part: Partition, now: float) -> bool:
        if part.replaying or not part.touches_since or now < part.snapshot_retry_at:
            return False
        return part.touches_since >= max(self.min_touchpoints, part.held) or now - part.snapshot_at >= self.interval_s

    def wanted(self, parts: dict[int, Partition]) -> bool:
        """A snapshot is being encoded, or one is due and may start."""
        if self.walk is not None:
            return True
        now = time.monotonic()
        return self.sending is None and now >= self.next_walk_at and any(self.due(p, now) for p in parts.values())

    def abandon(self, partitions: Iterable[int]) -> None:
        """The partition is no longer ours: its snapshot stays incomplete, and is never loaded."""
        gone = set(partitions)
        for walk in {id(w): w for w in (self.walk, self.sending) if w is not None}.values():
            if walk.part.number in gone:
                log.info("snapshot of partition %d abandoned", walk.part.number)
                walk.close()
                # its manifest may be on the broker already, and not in `snapshot_keys`: the
                # next snapshot reads what is there before it deletes the others
                walk.part.snapshot_keys = None
                walk.part.snapshot_at = 0.0
                if walk.sender is not None:
                    walk.sender.cancel()
                if self.walk is walk:
                    self.walk = None
                if self.sending is walk:
                    self.sending = None

    async def step(self, parts: dict[int, Partition], worked_s: float = 0.0) -> None:
        """Start a snapshot if one is due, or encode the next chunks of the one under way, for
        about `STEP_S` of encoding or `SHARE` of `worked_s` (the event loop's CPU since the step
        before), whichever is more, and at most four times that in all, letting the event loop
        through between two chunks. The caller holds the judge's lock, so only the walk's own
        sender can let it go meanwhile (a failed send)."""
        now = time.monotonic()
        budget = max(STEP_S, min(STEP_MAX_S, SHARE * worked_s))
        if self.walk is None:
            if not self.wanted(parts):
                return
            part = max((p for p in parts.values() if self.due(p, now)), key=lambda p: p.touches_since)
            # the database's own offset and an iterator over it, with no await between: one moment
            from_offset = part.persisted_offset
            entries = part.customers.values()
            walk = Walk(part, uuid.uuid4().hex, from_offset, part.touches_since, entries, asyncio.Queue())
            walk.sender = asyncio.create_task(self._send(walk), name=f"snapshot {part.number}")
            self.walk = self.sending = walk
        walk = self.walk
        encoding = 0.0  # stage A's turns between two chunks are not the snapshot's budget
        while encoding < budget and time.monotonic() - now < 4 * budget:
            started = time.monotonic()
            if not self._chunk(walk):
                walk.close()
                walk.outbox.put_nowait(None)
                self.walk = None
                return
            encoding += time.monotonic() - started
            await asyncio.sleep(0)  # a chunk holds the loop a few ms; stage A may have waited as long
            if self.walk is not walk:
                return  # its sender failed meanwhile, and let it go

    def _chunk(self, walk: Walk) -> bool:
        """Encode the next chunk; False when there are no more customers."""
        started = time.perf_counter()
        values = []
        for _, value in walk.entries:
            values.append(value)
            if len(values) >= walk.per_chunk:
                break
        if not values:
            return False
        raw = 0
        for value, size in encode_stored(values):
            walk.outbox.put_nowait((chunk_key(walk.snapshot, walk.chunks), value))
            walk.chunks += 1
            walk.wire_bytes += len(value)
            raw += size
        walk.customers += len(values)
        walk.raw_bytes += raw
        walk.per_chunk = max(10, min(100_000, int(len(values) * CHUNK_BYTES / max(1, raw))))
        self.counters["snapshot_us"] += int((time.perf_counter() - started) * 1e6)
        return True

    async def _send(self, walk: Walk) -> None:
        """The chunks as they come, then the manifest once every chunk is on the broker, then
        tombstones for the partition's other snapshots. A failure (the broker away) abandons
        the snapshot: the state is still whole on disk, and the log is still there."""
        part = walk.part
        sends = self.new_sends()
        keys: set[bytes] = set()
        try:
            while (chunk := await walk.outbox.get()) is not None:
                key, value = chunk
                await sends.send(self.topic, value, key=key, partition=part.number)
                keys.add(key)
            await sends.done()  # every chunk on the broker before the manifest says so
            failpoint("snapshot.chunk_sent")
            manifest = {
                "format": FORMAT, "snapshot": walk.snapshot, "partition": part.number,
                "from_offset": walk.from_offset, "chunks": walk.chunks, "customers": walk.customers,
                "raw_bytes": walk.raw_bytes, "wire_bytes": walk.wire_bytes,
            }  # fmt: skip
            key = manifest_key(walk.snapshot)
            await sends.send(self.topic, orjson.dumps(manifest), key=key, partition=part.number)
            await sends.done()
            failpoint("snapshot.manifest_sent")
            keys.add(key)
            old = part.snapshot_keys
            if old is None:  # resumed from disk: what other snapshots are there is read now
                old = await self.live_keys(part.number)
            for stale in sorted(old - keys):
                await sends.send(self.topic, None, key=stale, partition=part.number)
            await sends.done()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # not fatal: the state is on disk, the log is still there
            log.warning("snapshot of partition %d failed (%s); it starts again later", part.number, e)
            self.counters["snapshot_failures"] += 1
            part.snapshot_retry_at = time.monotonic() + RETRY_S
            return
        finally:
            walk.close()
            if self.walk is walk:
                self.walk = None
            if self.sending is walk:
                self.sending = None
                # Partitions grow alike and come due together: one snapshot at a time, with
                # a gap, so that they do not take the worker's time all at once.
                self.next_walk_at = time.monotonic() + GAP_S
        part.snapshot_keys = keys
        part.touches_since -= walk.touches_at_start
        part.held = walk.customers
        part.snapshot_at = time.monotonic()
        self.counters["snapshots_written"] += 1
        self.counters["snapshot_bytes"] += walk.wire_bytes
        log.info(
            "snapshot of partition %d written: %d customers, %d chunks, %.1f MiB (%.1f MiB raw), from offset %d",
            part.number, walk.customers, walk.chunks, walk.wire_bytes / 2**20, walk.raw_bytes / 2**20,
            walk.from_offset,
        )  # fmt: skip


# ---------------------------------------------------------------------------- loading
@dataclass
class Found:
    """What there is to load a partition from, as read (`read_states`), not yet decoded."""

    partition: int
    snapshots: dict[bytes, bytes]  # the live keys of its snapshot partition


async def read_states(consumer: AIOKafkaConsumer, snapshots_topic: str, partitions: list[int]) -> dict[int, Found]:
    """Read what the partitions' states can be loaded from."""
    snapshots = await read_compacted(consumer, snapshots_topic, partitions)
    return {p: Found(p, snapshots[p]) for p in partitions}


def newest_complete(live: dict[bytes, bytes]) -> tuple[dict[str, Any], list[bytes]] | None:
    """The newest snapshot whose manifest and chunks are all there: (manifest, chunk values).
    Newest in the order the manifests were written: each manifest key is written once, and
    `live` keeps the order its keys were first read in."""
    manifests = []
    for key, value in live.items():
        if key.startswith(b"s/") and key.endswith(b"/" + MANIFEST.encode()):
            m = orjson.loads(value)
            if m.get("format") in READABLE:
                manifests.append(m)
    for m in reversed(manifests):
        chunks = [live.get(chunk_key(m["snapshot"], n)) for n in range(m["chunks"])]
        if all(c is not None for c in chunks):
            return m, [c for c in chunks if c is not None]
        log.warning("snapshot %s of partition %s is incomplete; trying an older one", m["snapshot"], m["partition"])
    return None


async def load(part: Partition, found: Found, committed: int | None, log_start: int) -> str:
    """Rebuild a partition's database from its newest complete snapshot (or empty), and set
    the offset the judge reads its log from (see above). Returns where the state came from."""
    customers = part.customers
    customers.clear()
    snapshot = newest_complete(found.snapshots)
    part.snapshot_keys = set(found.snapshots)
    if snapshot is not None:
        manifest, chunks = snapshot
        part.next_offset = manifest["from_offset"]
        previous = None
        for value in chunks:
            entries = orjson.loads(zlib.decompress(value))
            part.stream_t = max([part.stream_t, *(e[2] or 0 for e in entries)])  # max_t, in both forms
            if all(len(e) == STORED_FIELDS for e in entries):
                # stored values joined (`encode_stored`): whole customers, written as they are
                customers.load_stored(entries)
                previous = None  # a customer spread over entries has them all in the other form
            else:
                previous = customers.load([CustomerState.from_snapshot(e) for e in entries], previous)
            await asyncio.sleep(0)  # a chunk takes a few ms: let heartbeats and batches through
        part.held = manifest["customers"]
        source = f"snapshot {manifest['snapshot']}"
    else:
        part.next_offset = log_start
        source = "empty"
        if log_start > 0 and committed:
            log.warning(
                "partition %d: no snapshot, and the log starts at %d: customers whose messages are older "
                "than the topic's retention start empty", part.number, log_start,
            )  # fmt: skip
    if snapshot is not None and part.next_offset < log_start:
        # never silent: the customers' states miss whatever those messages held
        log.error(
            "partition %d: the log starts at %d, after the newest snapshot's offset %d: the messages between "
            "were deleted by retention before a snapshot covered them (kafka.internal_retention_days)",
            part.number, log_start, part.next_offset,
        )  # fmt: skip
        source += f", with a gap of {log_start - part.next_offset} messages"
    part.next_offset = max(part.next_offset, log_start)
    customers.built(part.next_offset, part.stream_t)
    part.persisted_offset = part.next_offset
    part.replay_until = committed or 0
    return source
