"""The judge's state, held in memory, and its snapshots in Kafka.

A worker holds the state (`processors.judge.CustomerState`) of every customer on the
partitions of `cem.internal.by-customer` it owns. That state is a function of the partition's
messages alone: the judge is deterministic, and a message applied twice changes nothing (a
touchpoint seen before is dropped, an older profile version is ignored, erasing an erased
customer erases nothing). So the partition's own log serves as the state's changelog, and the
judge writes nothing per event (a changelog of whole customer states, written after every
batch, would cost more than the judging).

Snapshots bound how much of the log a restart reads again. Each partition's go to the
compacted topic `cem.internal.snapshots`, on the same partition number:

* A partition is snapshotted when it has taken more touchpoints since its last snapshot than
  its state holds events (so reading the log again never costs more than loading the state),
  but no fewer than `worker.snapshot_min_touchpoints`; or when `worker.snapshot_interval_s`
  has passed with any change, so that the snapshot the log is read from is always far
  younger than the topic's retention (`kafka.internal_retention_days`).
* A snapshot is encoded in chunks of about `CHUNK_BYTES`, a few between two batches, so that
  it never holds up the stream for long, and sent by a task of its own. It starts at the
  partition's committed position, `from_offset`. Each chunk holds its customers' states as
  they are when it is encoded (at or after `from_offset`), so the chunks are not one
  consistent moment, and need not be: a restart loads them and reads the log again from
  `from_offset`, and what a chunk already holds is applied a second time, which changes
  nothing. (An erasure read again drops the customer; the messages after it, read again too,
  bring back what came after it.) But a chunk must hold nothing whose rows and alerts are not
  written yet: read again, it would be dropped as already seen, and never written. So a
  customer whose state holds something unwritten waits for a later round (`Snapshots.step`).
* Keys are `s/<id>/c/<n>` for the chunks and `s/<id>/m` for the manifest, which is written
  once every chunk is acknowledged and makes the snapshot complete. Then the writer deletes
  every other snapshot of the partition (tombstones; compaction reclaims them). The newest
  complete snapshot wins, so a snapshot left half-written by a crash or a lost partition is
  never loaded.

Loading a partition when it is assigned (`load`): the newest complete snapshot, else an empty
state at the start of the log. The
judge then reads the partition from there: messages before the group's committed offset are
applied silently (their rows, alerts and index entries were written before that commit), the
rest as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.engine.failpoints import failpoint
from pipeline.engine.sends import SNAPSHOT_MESSAGE_BYTES, Sends
from pipeline.kafka.reading import read_compacted
from processors.judge import CustomerState

log = logging.getLogger("cem.state")

FORMAT = 1  # of the manifest and chunks below
#: uncompressed size of a chunk (about 5x less on the wire): encoding one takes ~20 ms here
CHUNK_BYTES = 2 * 2**20
MANIFEST = "m"
RETRY_S = 30.0  # after a failed snapshot
STEP_S = 0.025  # of chunks encoded at a time: the judge waits meanwhile
GAP_S = 2.0  # between two snapshots
ROUND_S = 1.0  # between two rounds over the customers with something unwritten
DEFER_ROUNDS = 5  # of those rounds, before the judge writes everything out for them


@dataclass
class Partition:
    """The state of one partition of the internal topic, and where it stands in its log."""

    number: int
    customers: dict[str, CustomerState] = field(default_factory=dict)
    next_offset: int = 0  # the first offset not applied yet
    committed: int = 0  # the group's committed offset: everything before it is written
    replay_until: int = 0  # offsets below this are applied silently (written before a restart)
    touches_since: int = 0  # touchpoints applied since the newest snapshot's from_offset
    events: int = 0  # kept events, as counted by the last snapshot or load
    snapshot_at: float = field(default_factory=time.monotonic)  # of the last snapshot or load
    snapshot_keys: set[bytes] = field(default_factory=set)  # live keys of its snapshot partition
    snapshot_retry_at: float = 0.0  # after a failed snapshot: not before this (monotonic)
    stream_t: int = 0  # the newest event time applied: customers idle long before it are let go

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
    ids: list[str]
    outbox: asyncio.Queue[tuple[bytes, bytes] | None]  # (key, value) of encoded chunks; None: all encoded
    pos: int = 0
    chunks: int = 0
    customers: int = 0
    events: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    per_chunk: int = 500  # customers; adjusted so that chunks come out near CHUNK_BYTES
    deferred: list[str] = field(default_factory=list)  # customers with something unwritten
    rounds: int = 0  # over the deferred customers
    round_at: float = 0.0  # when the last round began (monotonic)
    sender: asyncio.Task[None] | None = None


class Snapshots:
    """Decides when a partition is snapshotted, and makes the snapshot (see the module's
    docstring): one partition at a time, a few chunks per `step`."""

    def __init__(
        self, topic: str, new_sends: Callable[[], Sends], *, min_touchpoints: int, interval_s: float,
        counters: Any,
    ) -> None:  # fmt: skip
        self.topic = topic
        self.new_sends = new_sends
        self.min_touchpoints = min_touchpoints
        self.interval_s = interval_s
        self.counters = counters  # Stats.counters
        self.walk: Walk | None = None  # being encoded
        self.sending: Walk | None = None  # encoded or being encoded, not yet all on the broker
        self.next_walk_at = 0.0

    def due(self, part: Partition, now: float) -> bool:
        if part.replaying or not part.touches_since or now < part.snapshot_retry_at:
            return False
        return part.touches_since >= max(self.min_touchpoints, part.events) or now - part.snapshot_at >= self.interval_s

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
                log.info("snapshot of partition %d abandoned (partition revoked)", walk.part.number)
                if walk.sender is not None:
                    walk.sender.cancel()
                if self.walk is walk:
                    self.walk = None
                if self.sending is walk:
                    self.sending = None

    async def step(
        self, parts: dict[int, Partition], unwritten: Callable[[str], bool], drain: Callable[[], Awaitable[None]]
    ) -> None:
        """Start a snapshot if one is due, or encode the next chunks of the one under way, for
        about `STEP_S`. A chunk holds only customers whose state is all written (a snapshot
        holding a state with something unwritten, loaded after a crash, would make the judge
        drop it as seen): the others are deferred and tried again, `ROUND_S` later, and after
        `DEFER_ROUNDS` rounds the judge writes everything pending (`drain`) for the last ones."""
        now = time.monotonic()
        if self.walk is None:
            if not self.wanted(parts):
                return
            part = max((p for p in parts.values() if self.due(p, now)), key=lambda p: p.touches_since)
            walk = Walk(part, uuid.uuid4().hex, part.committed, part.touches_since, list(part.customers),
                        asyncio.Queue(), round_at=now)  # fmt: skip
            walk.sender = asyncio.create_task(self._send(walk), name=f"snapshot {part.number}")
            self.walk = self.sending = walk
        walk = self.walk
        while time.monotonic() - now < STEP_S:
            if walk.pos < len(walk.ids):
                self._chunk(walk, unwritten)
            elif walk.deferred:
                if time.monotonic() - walk.round_at < ROUND_S:
                    return  # give what is pending time to be written
                walk.rounds += 1
                if walk.rounds > DEFER_ROUNDS:
                    await drain()
                walk.ids, walk.pos, walk.deferred, walk.round_at = walk.deferred, 0, [], time.monotonic()
                return  # a round per step at most
            else:
                walk.outbox.put_nowait(None)
                self.walk = None
                return

    def _chunk(self, walk: Walk, unwritten: Callable[[str], bool]) -> None:
        started = time.perf_counter()
        customers = walk.part.customers
        ids = walk.ids[walk.pos : walk.pos + walk.per_chunk]
        walk.pos += len(ids)
        states = []
        for c in ids:
            state = customers.get(c)  # erased meanwhile: gone
            if state is None:
                continue
            if unwritten(c):
                walk.deferred.append(c)
            else:
                states.append(state)
        if not states:
            return
        raw = 0
        for value, size in encode_chunks(states):
            walk.outbox.put_nowait((chunk_key(walk.snapshot, walk.chunks), value))
            walk.chunks += 1
            walk.wire_bytes += len(value)
            raw += size
        walk.customers += len(states)
        walk.events += sum(len(s.events) for s in states)
        walk.raw_bytes += raw
        walk.per_chunk = max(10, min(100_000, int(len(ids) * CHUNK_BYTES / raw)))
        self.counters["snapshot_us"] += int((time.perf_counter() - started) * 1e6)

    async def _send(self, walk: Walk) -> None:
        """The chunks as they come, then the manifest once every chunk is on the broker, then
        tombstones for the partition's other snapshots. A failure (the broker away) abandons
        the snapshot: the state is still whole in memory, and the log is still there."""
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
                "events": walk.events, "raw_bytes": walk.raw_bytes, "wire_bytes": walk.wire_bytes,
            }  # fmt: skip
            key = manifest_key(walk.snapshot)
            await sends.send(self.topic, orjson.dumps(manifest), key=key, partition=part.number)
            await sends.done()
            failpoint("snapshot.manifest_sent")
            keys.add(key)
            for old in sorted(part.snapshot_keys - keys):
                await sends.send(self.topic, None, key=old, partition=part.number)
            await sends.done()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # not fatal: the state is in memory, the log is still there
            log.warning("snapshot of partition %d failed (%s); it starts again later", part.number, e)
            self.counters["snapshot_failures"] += 1
            part.snapshot_retry_at = time.monotonic() + RETRY_S
            return
        finally:
            if self.walk is walk:
                self.walk = None
            if self.sending is walk:
                self.sending = None
                # Partitions grow alike and come due together: one snapshot at a time, with
                # a gap, so that they do not take the worker's time all at once.
                self.next_walk_at = time.monotonic() + GAP_S
        part.snapshot_keys = keys
        part.touches_since -= walk.touches_at_start
        part.events = walk.events
        part.snapshot_at = time.monotonic()
        self.counters["snapshots_written"] += 1
        self.counters["snapshot_bytes"] += walk.wire_bytes
        log.info(
            "snapshot of partition %d written: %d customers, %d events, %d chunks, %.1f MiB (%.1f MiB raw), "
            "from offset %d", part.number, walk.customers, walk.events, walk.chunks, walk.wire_bytes / 2**20,
            walk.raw_bytes / 2**20, walk.from_offset,
        )  # fmt: skip


# ---------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    part: Partition
    source: str  # snapshot <id> | empty


@dataclass
class Found:
    """What there is to load a partition from, as read (`read_states`), not yet decoded."""

    partition: int
    snapshots: dict[bytes, bytes]  # the live keys of its snapshot partition


async def read_states(consumer: AIOKafkaConsumer, snapshots_topic: str, partitions: list[int]) -> dict[int, Found]:
    """Read what the partitions' states can be loaded from, all partitions together."""
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
            if m.get("format") == FORMAT:
                manifests.append(m)
    for m in reversed(manifests):
        chunks = [live.get(chunk_key(m["snapshot"], n)) for n in range(m["chunks"])]
        if all(c is not None for c in chunks):
            return m, [c for c in chunks if c is not None]
        log.warning("snapshot %s of partition %s is incomplete; trying an older one", m["snapshot"], m["partition"])
    return None


async def load(found: Found, committed: int | None, log_start: int) -> Loaded:
    """The state of one partition, and the offset the judge reads its log from (see above)."""
    partition = found.partition
    snapshot = newest_complete(found.snapshots)
    if snapshot is not None:
        manifest, chunks = snapshot
        part = Partition(partition, next_offset=manifest["from_offset"], snapshot_keys=set(found.snapshots))
        for value in chunks:
            for state in decode_chunk(value):
                add_loaded(part.customers, state)
            await asyncio.sleep(0)  # a chunk takes ~20 ms to decode: let heartbeats and batches through
        part.events = manifest["events"]
        part.stream_t = max((s.max_t or 0 for s in part.customers.values()), default=0)
        source = f"snapshot {manifest['snapshot']}"
    else:
        part = Partition(partition, next_offset=log_start, snapshot_keys=set(found.snapshots))
        source = "empty"
        if log_start > 0 and committed:
            log.warning(
                "partition %d: no snapshot, and the log starts at %d: customers whose messages are older "
                "than the topic's retention start empty", partition, log_start,
            )  # fmt: skip
    if snapshot is not None and part.next_offset < log_start:
        # never silent: the customers' states miss whatever those messages held
        log.error(
            "partition %d: the log starts at %d, after the newest snapshot's offset %d: the messages between "
            "were deleted by retention before a snapshot covered them (kafka.internal_retention_days)",
            partition, log_start, part.next_offset,
        )  # fmt: skip
        source += f", with a gap of {log_start - part.next_offset} messages"
    part.next_offset = max(part.next_offset, log_start)
    part.replay_until = committed or 0
    return Loaded(part, source)
