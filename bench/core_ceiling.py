"""(a3) cem's own work per touchpoint, without Faust: the same pre-produced messages read with
aiokafka, then every step the two stages do in Python, in one process:

  decode   bytes -> validated touchpoint (pydantic), as stage A
  resolve  identity resolution with salted fingerprints against the CRM index, and the
           touch's row, as stage A
  rekey    the rows packed per partition and read back, the hop between the stages that
           any co-partitioned design keeps
  judge    the detectors over the customer's state, as stage B
  state    the customer's state read from and written to its partition's RocksDB database
           (decoded-state cache in front), sealed and persisted with each insert's worth of
           rows, as stage B (pipeline/engine/state_store.py, settings as configured)
  rows     the timeline rows for ClickHouse
  snapshot the whole stored state read and joined into chunks once, as a snapshot does
           (its share per touchpoint)
  gc       what the worker holds frozen after each insert (by size or by age, as stage B
           seals), as the worker does (pipeline/engine/memory.py); the collections
           themselves fall in the steps that set them off

No broker writes and no ClickHouse: this is the ceiling for any design that runs cem's core
in Python on this machine, and its breakdown says where the time per event goes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.engine import memory
from pipeline.engine.decode import Rejected, decode_profile, decode_touchpoint
from pipeline.engine.rekey import pack, partition_of, read_items
from pipeline.engine.rows import timeline_row
from pipeline.engine.snapshots import encode_stored
from pipeline.engine.state_store import Customers, Decoded, Disk
from pipeline.kafka import clients
from pipeline.kafka.aligned import Aligner
from pipeline.settings import Settings
from processors.identity import profile_fingerprints, resolve
from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import Touch
from processors.normalize import to_touch
from schemas.profile import ProfileSnapshot
from sinks.clickhouse.writer import now_seconds

STEPS = ("decode", "resolve", "rekey", "judge", "state", "rows", "snapshot", "gc")


async def _read_all(settings: Settings, topics: list[str], expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        **clients.aiokafka(settings.kafka), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(settings.kafka.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        while len(out) < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def _aligned(settings: Settings, records: list[Any]) -> list[Any]:
    """The records in the order stage A hands them out (pipeline/kafka/aligned.py): fetched a
    partition's `align_buffered_per_partition` at a time, in timestamp order across partitions."""
    w = settings.worker
    aligner = Aligner(frozenset(settings.kafka.topics.channels), max_idle_s=w.align_max_idle_ms / 1000,
                      per_partition=w.align_buffered_per_partition)  # fmt: skip
    source: dict[TopicPartition, deque[Any]] = defaultdict(deque)
    for rec in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        source[TopicPartition(rec.topic, rec.partition)].append(rec)
    out: list[Any] = []
    while any(source.values()) or aligner.buffered():
        fetched = {}
        for tp, left in source.items():
            if left and aligner.has_room(tp):
                fetched[tp] = [left.popleft() for _ in range(min(len(left), w.align_buffered_per_partition))]
        aligner.add(fetched)
        out += aligner.take(w.batch_size, list(source), lambda tp: bool(source[tp]))
    return out


async def core_ceiling(settings: Settings, expected_profiles: int, expected_touchpoints: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cem-a3-") as tmp:
        disk = Disk(Path(tmp), settings.state, settings.secret)
        decoded = Decoded(settings.state.cache_customers)
        parts = [
            Customers(p, await disk.open(str(p)), decoded, disk.secret, disk.key_id)
            for p in range(settings.kafka.partitions)
        ]
        try:
            return await _measure(settings, parts, expected_profiles, expected_touchpoints)
        finally:
            for customers in parts:
                customers.close()


def _persist(parts: list[Customers], offset: int) -> None:
    """What the judge does once an insert's rows are written: the changed states to disk."""
    for customers in parts:
        if customers.dirty:
            customers.seal(offset, 0)
            customers.persist()


async def _measure(
    settings: Settings, parts: list[Customers], expected_profiles: int, expected_touchpoints: int
) -> dict[str, Any]:
    t = settings.kafka.topics
    vocabulary = frozenset(settings.rules.field_vocabulary)
    matters = frozenset(settings.rules.matter_vocabulary)
    rules, secret = settings.rules_obj, settings.secret
    index: dict[str, str] = {}
    n_parts = len(parts)
    for rec in await _read_all(settings, [t.profiles], expected_profiles):
        p = decode_profile(rec.key, rec.value, vocabulary=vocabulary, max_bytes=settings.worker.max_message_bytes)
        if isinstance(p, ProfileSnapshot):
            ids = p.identifiers
            fps = profile_fingerprints(ids.email, ids.phone, ids.loyalty_id, secret)
            index.update(dict.fromkeys(fps, p.customer_id))
            profile = Profile(p.version, p.loyalty_tier.lower(), tuple(p.known_fields), tuple(fps))
            customers = parts[partition_of(p.customer_id, n_parts)]
            customers.put(apply_profile(customers.get(p.customer_id) or CustomerState(p.customer_id), profile)[0])
    _persist(parts, 1)
    records = _aligned(settings, await _read_all(settings, list(t.channels), expected_touchpoints))
    await asyncio.sleep(0)

    memory.tune()  # as the worker does: at 30k customers the default thresholds cost a third
    spent: dict[str, float] = defaultdict(float)
    clock = time.perf_counter
    now = datetime.now(UTC)
    max_future = timedelta(hours=settings.worker.max_future_skew_hours)
    started = sealed_at = clock()
    pending = 0
    for i in range(0, len(records), settings.worker.batch_size):
        wall = now_seconds()
        now_us = wall * 1_000_000
        rows: list[tuple[Any, ...]] = []
        resolved: list[tuple[str, bytes]] = []
        for rec in records[i : i + settings.worker.batch_size]:
            t0 = clock()
            channel = t.channel_of(rec.topic)
            result = decode_touchpoint(
                channel,  # type: ignore[arg-type]
                rec.value,
                vocabulary=vocabulary,
                now=now,
                max_future=max_future,
                max_bytes=settings.worker.max_message_bytes,
            )
            t1 = clock()
            spent["decode"] += t1 - t0
            if isinstance(result, Rejected):
                continue
            res = resolve(result.customer_id, result.identifiers, index.get, secret)
            touch = to_touch(channel, result, res.customer_id, res.resolved_by, rec.topic, rec.partition,  # type: ignore[arg-type]
                             rec.offset, res.anonymous, matters)  # fmt: skip
            resolved.append((res.customer_id, orjson.dumps(touch.to_row())))
            spent["resolve"] += clock() - t1
        t3 = clock()
        packs = pack(resolved, n_parts)
        items = [(partition, item) for partition, value in packs for item in read_items(value)]
        spent["rekey"] += clock() - t3
        for partition, item in items:
            assert isinstance(item, Touch)
            t4 = clock()
            customers = parts[partition]
            cid = item.customer_id
            state = customers.get(cid) or CustomerState(cid)
            t5 = clock()
            state, verdict = judge(state, item, rules, now_us)
            t6 = clock()
            customers.put(state)
            t7 = clock()
            spent["state"] += (t5 - t4) + (t7 - t6)
            spent["judge"] += t6 - t5
            rows.extend(timeline_row(r, wall) for r in verdict.rows)
            spent["rows"] += clock() - t7
        pending += len(rows)
        # sealed as stage B seals: by size, or by the age of what is pending
        if pending >= settings.worker.insert_rows or clock() - sealed_at >= settings.worker.batch_within_s:
            t8 = clock()
            _persist(parts, i + 2)
            t8b = clock()
            spent["state"] += t8b - t8
            memory.settle()  # as stage B does once an insert is written
            spent["gc"] += clock() - t8b
            pending, sealed_at = 0, clock()
    t9 = clock()
    _persist(parts, len(records) + 2)
    spent["state"] += clock() - t9
    t10 = clock()
    for customers in parts:
        values = [value for _, value in customers.values()]
        for k in range(0, len(values), 500):
            encode_stored(values[k : k + 500])
    spent["snapshot"] = clock() - t10
    seconds = clock() - started
    n = len(records)
    return {
        "seconds": round(seconds, 2),
        "touchpoints_per_s": round(n / seconds),
        "us_per_touchpoint": {step: round(spent[step] / n * 1e6, 1) for step in STEPS},
    }
