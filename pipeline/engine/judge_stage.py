"""Stage B: where a touchpoint is judged, and where its results leave for ClickHouse and Kafka.

Reads `cem.internal.by-customer` with a plain aiokafka group consumer (`<app_id>-judge`), so
one customer's touchpoints, profile updates and erasures always come to one worker, in the
order stage A wrote them. The customers' states are kept on local disk per partition, the
ones in use decoded in memory (pipeline/engine/state_store.py); the detectors are the pure
core in processors/.

A batch is: apply every message (`judge` for a touchpoint, `apply_profile` for a profile),
and send the alerts, identity index entries and dead letters it made at once. Its timeline
rows and alert revisions wait until `worker.insert_rows` are pending or the oldest has waited
`worker.batch_within_s`; then they are written to ClickHouse (one INSERT per table, retried
with backoff while ClickHouse is away) while the next batches are judged. Once the insert is
in and the broker has acknowledged what was sent, the states the batch changed go to disk
with the partition's offset (one atomic write), and the offsets are committed. A crash
resumes from the offsets on disk; what was judged after them is judged again, and writes
identical rows, which the ReplacingMergeTree tables and their FINAL views collapse. Between
batches, the next chunk of a snapshot is written when one is due.

When a partition is assigned it is paused until its state is in (its database on disk, or
rebuilt from a snapshot in Kafka: pipeline/engine/partitions.py). That runs beside the
batches, not in the rebalance callback, which holds back heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from pipeline.engine.alerts import alert_message
from pipeline.engine.clickhouse_output import ClickHouseOutput
from pipeline.engine.context import Context, Stopping, where
from pipeline.engine.decode import Rejected
from pipeline.engine.failpoints import failpoint
from pipeline.engine.partitions import Partitions
from pipeline.engine.rekey import BadItem, read_items
from pipeline.engine.rows import alert_row, timeline_row
from pipeline.engine.sends import Sends
from pipeline.engine.snapshots import Partition, Snapshots
from pipeline.kafka import clients
from pipeline.kafka.reading import commit, read_compacted
from processors.judge import CustomerState, Profile, apply_profile, judge, links
from processors.model import Touch
from schemas.erasure import ErasureJob
from schemas.internal import EraseEnvelope, ProfileEnvelope
from sinks.clickhouse.writer import TIMELINE_COLUMNS, Columns, now_seconds

log = logging.getLogger("cem.judge")


class WriteFailed(Exception):
    """A sealed batch could not be written (not a server away: that is retried). What was
    applied after it cannot be written either; the worker stops and restarts from its disk."""


#: messages (packs: a resolve batch's share of one partition) taken per batch
MAX_MESSAGES = 64

Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]  # topic, key, value, headers


@dataclass
class Pending:
    """What the messages applied since the last seal will write. Alerts, index entries and
    dead letters leave at the end of every batch (`JudgeStage._send`): an alert need not wait
    for ClickHouse. Rows wait until the pending writes are sealed (by size or age) and written
    (`JudgeStage._write`) while the next messages are judged; then the acknowledgements of
    what was sent are awaited, and only then are the offsets committed."""

    timeline: Columns = field(default_factory=lambda: Columns(len(TIMELINE_COLUMNS)))
    alert_rows: list[tuple[Any, ...]] = field(default_factory=list)
    # Kafka messages: not yet sent, and sent but not yet acknowledged (kept to send again)
    messages: list[Message] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    sends: Sends | None = None
    send_failed: bool = False  # some of `sent` may never have left: they are all sent again
    first_at: float | None = None  # monotonic time of the first thing applied since the seal
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> offset to commit, set when sealed
    persist: list[Partition] = field(default_factory=list)  # whose sealed states go to disk once written

    def touched(self) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()

    def due(self, rows: int, within_s: float) -> bool:
        return len(self.timeline) >= rows or (
            self.first_at is not None and time.monotonic() - self.first_at >= within_s
        )


class JudgeStage(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        s = ctx.settings
        self.topics = s.kafka.topics
        self.topic = s.kafka.topics.by_customer
        self.rules = s.rules_obj
        self.insert_rows = s.worker.insert_rows
        self.within_s = s.worker.batch_within_s
        self.max_dirty = s.state.cache_customers
        self.out = Pending()
        self.writing: asyncio.Task[None] | None = None  # the sealed batch being written
        self.writing_out: Pending | None = None  # and what it writes
        self.lock = asyncio.Lock()  # a batch, a snapshot step, a rebalance, a loaded partition: one at a time
        self.partitions = Partitions(ctx, self.topic, self.lock, self.rules.horizon_us)
        self.clickhouse = ClickHouseOutput(ctx)
        self.snapshots = Snapshots(
            s.kafka.topics.snapshots, lambda: ctx.sends(bulk=True), min_touchpoints=s.worker.snapshot_min_touchpoints,
            interval_s=s.worker.snapshot_interval_s, counters=ctx.stats.counters, live_keys=self._snapshot_keys,
        )  # fmt: skip
        self.consumer: Any = None  # AIOKafkaConsumer, made in the worker's event loop
        self.broken: BaseException | None = None  # a write failed during a rebalance: stop
        self._capped: set[str] = set()  # customers whose cap was logged lately
        self.commit_every_s = s.worker.commit_interval_s
        self._owed_at = 0.0  # when owed offsets are looked for next

    @property
    def parts(self) -> dict[int, Partition]:
        return self.partitions.parts

    @property
    def ready(self) -> bool:
        return self.partitions.ready

    def lag(self) -> dict[str, int]:
        """Messages not yet committed on this worker's partitions (see BatchSource.lag)."""
        return {self.topic: self.partitions.lag()} if self.consumer is not None else {}

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        s = self.ctx.settings
        self.consumer = self.partitions.consumer = AIOKafkaConsumer(
            **clients.group_consumer(s, s.worker.judge_group, self.ctx.member)
        )
        await self.consumer.start()
        try:
            self.consumer.subscribe([self.topic], listener=self)
            while not self.ctx.stopping.is_set():
                first = self.out.first_at
                wait_s = 0.1 if first is None else max(0.0, first + self.within_s - time.monotonic())
                got = await self.consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=MAX_MESSAGES)
                if self.broken is not None:
                    raise WriteFailed(repr(self.broken)) from self.broken
                worked = time.thread_time()  # the loop's CPU, not its waits (an insert, a retry)
                async with self.lock:
                    if got:
                        await self._batch(got)
                    if self.out.due(self.insert_rows, self.within_s) or self._owed():
                        await self._seal()
                    if self.snapshots.wanted(self.parts):
                        await self.snapshots.step(self.parts, time.thread_time() - worked)
                    if self.partitions.sweep(self._unlink_idle):
                        self.out.touched()  # what it changed is sealed soon
            async with self.lock:
                await self._drain()
        except Stopping:
            log.warning("stopped before a batch could be written: it is judged again after the restart")
        finally:
            self.partitions.stop()
            await self._stop_writing()
            self.snapshots.abandon(list(self.parts))
            self.partitions.close()
            await self.consumer.stop()

    def _owed(self) -> bool:
        """Offsets judged and never committed, with nothing new to judge: a commit refused
        while the broker was away (or after the group moved on meanwhile, the partition then
        reloaded from its disk, ahead of its committed offset). No batch would come to carry
        them, and the lag would never reach zero. Looked for every `worker.commit_interval_s`."""
        now = time.monotonic()
        if (
            self.out.first_at is not None
            or (self.writing is not None and not self.writing.done())
            or now < self._owed_at
        ):
            return False  # a batch under way commits them
        self._owed_at = now + self.commit_every_s
        return any(not p.replaying and p.next_offset > p.committed for p in self.parts.values())

    # ------------------------------------------------------------------ rebalances
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.partitions.generation += 1  # a load still under way belongs to an assignment that is over
        gone = {tp.partition for tp in revoked}
        async with self.lock:  # the batch in hand is written and committed first
            try:
                await self._drain()
            except Stopping:
                raise
            except Exception as e:
                # The partitions kept hold states whose output was not written: judging on
                # from them would lose it. The worker stops, and restarts from its disk.
                self.broken = e
                raise
            finally:
                # aiokafka swallows an error raised here: whatever happened, the partitions are
                # no longer ours; their databases hold what was written, and nothing else
                await self._stop_writing()
                self.snapshots.abandon(gone)
                self.partitions.revoked(gone)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.partitions.assigned(assigned)

    # ------------------------------------------------------------------ a batch
    async def _batch(self, got: dict[TopicPartition, list[Any]]) -> None:
        now = now_seconds()
        now_us = now * 1_000_000
        for tp, records in got.items():
            part = self.parts.get(tp.partition)
            if part is None:
                continue  # revoked since it was fetched
            for record in records:
                if record.offset < part.next_offset:
                    continue  # applied already (fetched before a seek)
                if record.offset >= part.replay_until:
                    self.out.touched()
                await self._apply(part, record, now, now_us)
                part.next_offset = record.offset + 1
                if part.replaying:
                    failpoint("judge.replaying")
                # bound inserts and memory: changed states wait in memory until they are sealed,
                # and a replay after a rebuild seals nothing else
                if len(self.out.timeline) >= self.insert_rows or len(part.customers.dirty) >= self.max_dirty:
                    await self._seal()
                # A pack's alerts leave as soon as it is judged, and stage A and the heartbeats
                # get the loop between packs: a batch of 64 packs after a hiccup is 300 ms of work.
                await self._send(self.out)
                await asyncio.sleep(0)

    async def _apply(self, part: Partition, record: Any, now: int, now_us: int) -> None:
        """Apply one message of the internal topic. Its results go to `self.out`, read again
        for every item: an erasure writes out everything before it (`_drain`), and what follows
        it belongs to the next seal, not to the one already written."""
        silent = record.offset < part.replay_until  # written before the restart: state only
        try:
            items = read_items(record.value)
        except (ValueError, ValidationError) as e:
            if not silent:
                self._park(self.out, self.ctx.dead_letter(record, Rejected("invalid_internal", "", str(e)[:500])))
            return
        for item in items:
            out = self.out
            if isinstance(item, BadItem):
                if not silent:
                    why = Rejected("invalid_internal", "", item.error)
                    self._park(out, self.ctx.dead_letter(record, why, value=item.raw))
                continue
            try:
                if isinstance(item, Touch):
                    self._judge(out, part, item, now, now_us, silent)
                elif isinstance(item, ProfileEnvelope):
                    self._profile(out, part, item, silent)
                else:
                    await self._erasure(out, part, item, silent)
            except (Stopping, WriteFailed):
                raise  # not this item's fault: what was applied is written by nobody, so stop
            except Exception as e:  # a bug: park this item, judge the others
                log.exception("judge failed at %s", where(record))
                if not silent:
                    raw = orjson.dumps(item.to_row()) if isinstance(item, Touch) else item.model_dump_json().encode()
                    why = Rejected("processing_error", "", repr(e)[:500])
                    self._park(self.out, self.ctx.dead_letter(record, why, value=raw))

    def _judge(self, out: Pending, part: Partition, touch: Touch, now: int, now_us: int, silent: bool) -> None:
        cid = touch.customer_id
        state = part.customers.get(cid) or CustomerState(cid)
        state, verdict = judge(state, touch, self.rules, now_us)
        part.customers.put(state)
        part.touches_since += 1
        part.stream_t = max(part.stream_t, touch.t)
        if verdict.unlinked and not silent:
            self._unlink(out, cid, verdict.unlinked)
        counters = self.ctx.stats.counters
        if silent:
            counters["touchpoints_replayed"] += 1
            return
        counters["touchpoints_judged"] += 1
        if verdict.capped:
            counters["customer_caps_hit"] += 1
            if cid not in self._capped:  # a line per customer now and then, not per event
                if len(self._capped) >= 1000:
                    self._capped.clear()
                self._capped.add(cid)
                log.warning("customer %s reached a per-customer cap (rules.max_events_per_customer or max_evidence): "
                            "their oldest events or evidence are let go", cid)  # fmt: skip
        if verdict.duplicate:
            counters["duplicates"] += 1
        if verdict.late:
            counters["late_events"] += 1
        for r in verdict.rows:
            out.timeline.add(timeline_row(r, now))
            if r.revision > 1:
                counters["row_rewrites"] += 1
        for a in verdict.alerts:
            out.alert_rows.append(alert_row(a, (touch.topic, touch.partition, touch.offset), now))
            out.messages.append((self.topics.alerts, cid.encode(), alert_message(a), None))
            self.ctx.stats.alerts[f"{a.body['kind']}:{a.status}"] += 1

    def _profile(self, out: Pending, part: Partition, env: ProfileEnvelope, silent: bool) -> None:
        cid = env.customer_id
        state = part.customers.get(cid) or CustomerState(cid)
        old = set(state.profile.fingerprints) if state.profile else set()
        profile = Profile(env.version, env.loyalty_tier, tuple(env.known_fields), tuple(env.fingerprints))
        state, accepted = apply_profile(state, profile)
        part.customers.put(state)
        if silent:
            return
        self.ctx.stats.profiles["held" if accepted else "ignored_older"] += 1
        # Stage A wrote this version's entries when it forwarded it (so that touchpoints read
        # after it resolve at once). The judge, which knows which version holds, puts right
        # what that could not know: identifiers a newer version dropped, or an older version
        # that came late still had.
        held = set(state.profile.fingerprints) if state.profile else set()
        stale = (old if accepted else set(env.fingerprints)) - held
        index = self.ctx.index
        entries: dict[str, str | None] = {fp: None for fp in stale if index.get(fp) == cid}
        entries |= {fp: cid for fp in held if index.get(fp) != cid}
        if entries:
            self._index(out, entries)

    async def _erasure(self, out: Pending, part: Partition, env: EraseEnvelope, silent: bool) -> None:
        """Forget the customer: state and identity entries, then hand the rest to the eraser
        (`cem eraser`: ClickHouse rows, the delivery ledger, the receipt), which has the
        credentials for it. What came before it is written first, so that the deletion covers
        it; what comes after is not deleted."""
        cid = env.customer_id
        state = part.customers.pop(cid, erasure=True)
        if silent:
            return
        # A snapshot being made of this partition holds a RocksDB iterator, which keeps the old
        # value in the files, and would publish it: it is abandoned; the next one comes at once.
        self.snapshots.abandon({part.number})
        # the partition's next snapshot replaces those that still hold the customer: soon
        part.touches_since += 1
        part.snapshot_at = 0.0
        owned = self.ctx.index.owned_by(cid)
        fingerprints = set(owned)
        if state is not None:
            fingerprints |= links(state.events) | set(state.profile.fingerprints if state.profile else ())
        self._index(out, dict.fromkeys(owned))
        self.ctx.stats.profiles["erased"] += 1
        job = ErasureJob(
            request_id=env.request_id, customer_id=cid, requested_by=env.requested_by,
            requested_at=datetime.fromisoformat(env.requested_at), fingerprints=sorted(fingerprints),
            customer_state=int(state is not None), identity_entries=len(owned),
        )  # fmt: skip
        await self._drain()

        # Only now: the rows before the erasure are in ClickHouse, so its deletion covers them.
        # A crash before the next commit applies the erasure again: the eraser takes a job twice.
        async def hand_over() -> None:
            sends = self.ctx.sends()
            await sends.send(self.topics.erasures, job.model_dump_json().encode(), key=env.request_id.encode())
            await sends.done()

        await self.ctx.retrying("hand the erasure to the eraser", hand_over)

    def _unlink_idle(self, cid: str, fingerprints: tuple[str, ...]) -> None:
        """An idle customer let go (`Partitions.sweep`): their links go with the next seal."""
        self._unlink(self.out, cid, fingerprints)
        self.out.touched()

    def _unlink(self, out: Pending, cid: str, fingerprints: tuple[str, ...]) -> None:
        """Anonymous ids the customer's kept events no longer carry: their links to the
        customer go (a link another login moved elsewhere stays)."""
        index = self.ctx.index
        self._index(out, {fp: None for fp in fingerprints if index.get(fp) == cid})

    def _index(self, out: Pending, entries: dict[str, str | None]) -> None:
        """Identity index entries (fingerprint -> customer, or None: removed). Written through:
        this worker resolves with them at once, the others once they read them."""
        for fp, owner in entries.items():
            self.ctx.index.apply(fp, owner)
            out.messages.append((self.topics.identity, fp.encode(), None if owner is None else owner.encode(), None))

    def _park(self, out: Pending, parked: tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]) -> None:
        key, value, headers = parked
        out.messages.append((self.topics.deadletter, key, value, headers))

    # ------------------------------------------------------------------ writing
    async def _send(self, out: Pending) -> None:
        """Send the alerts, index entries and dead letters of what was applied; their
        acknowledgements are awaited by the flush."""
        if not out.messages:
            return
        if out.sends is None:
            out.sends = self.ctx.sends()
        try:
            await self._send_messages(out.sends, out.messages)
            failpoint("judge.sent")
        except Exception as e:  # the broker away: the flush sends them again
            log.warning("sending alerts and index entries failed (%s); the flush retries", e)
            out.send_failed = True
        out.sent.extend(out.messages)
        out.messages = []

    async def _send_messages(self, sends: Sends, messages: list[Message]) -> None:
        keyed: dict[str, list[tuple[bytes, bytes | None]]] = {}
        for topic, key, value, headers in messages:
            if headers is None and key is not None:
                keyed.setdefault(topic, []).append((key, value))
            else:
                await sends.send(topic, value, key=key, headers=headers)
        for topic, pairs in keyed.items():
            await sends.send_keyed(topic, pairs)

    async def _seal(self) -> None:
        """Start writing what is pending, once the batch written before it is done: one batch
        is judged while the one before it is written (a ClickHouse insert is mostly waiting
        for the server)."""
        out = self.out
        out.offsets = {
            p: part.next_offset
            for p, part in self.parts.items()
            if not part.replaying and part.next_offset > part.committed
        }
        out.persist = [
            part for part in self.parts.values() if part.customers.dirty or part.next_offset > part.persisted_offset
        ]
        if not (len(out.timeline) or out.alert_rows or out.messages or out.sent or out.offsets or out.persist):
            out.first_at = None
            return
        await self._send(out)
        await self._wait_written()
        for part in out.persist:  # as they are now: the next batches change them while this is written
            for _ in part.customers.encoding():
                await asyncio.sleep(0)  # stage A and the heartbeats meanwhile; the judge holds its lock
            part.customers.seal(part.next_offset, part.stream_t)
        self.out = Pending()
        self.writing_out = out
        self.writing = asyncio.create_task(self._write(out), name="judge write")

    async def _drain(self) -> None:
        """Everything applied so far written and committed."""
        await self._seal()
        await self._wait_written()

    async def _wait_written(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            try:
                await writing
            except Stopping:
                raise
            except Exception as e:
                raise WriteFailed(repr(e)) from e
            self.writing_out = None

    async def _write(self, out: Pending) -> None:
        """ClickHouse, then the acknowledgements of what was sent, then the offsets."""
        if len(out.timeline) or out.alert_rows:
            await self.clickhouse.write(out.timeline, out.alert_rows)
        if out.sends is not None:
            try:
                await out.sends.done()
            except Exception as e:
                log.warning("alerts and index entries not acknowledged (%s); sending them again", e)
                out.send_failed = True
        if out.send_failed:
            await self.ctx.retrying("publish alerts and index entries", self._resend, out.sent)
        if out.offsets:
            failpoint("judge.written")
        for part in out.persist:
            stored = part.customers.persist()
            if stored is not None:
                part.persisted_offset = stored
        if out.persist and out.offsets:  # the moment between the disk and the commit, not a sweep's write
            failpoint("judge.persisted")
        await self._commit(out.offsets)
        if self.writing_out is out:
            self.writing_out = None

    async def _stop_writing(self) -> None:
        """The write under way, if any, is not waited for (it failed, or the worker stops):
        what it would have written is judged again by whoever reads these partitions next."""
        if self.writing is not None and not self.writing.done():
            self.writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its own failure is logged where it happened
                await self.writing
        self.writing = self.writing_out = None

    async def _snapshot_keys(self, partition: int) -> set[bytes]:
        """The live keys of a partition of the snapshot topic (their values are let go)."""
        async with self.ctx.reading:
            found = await read_compacted(await self.ctx.reader(), self.topics.snapshots, [partition])
        return set(found[partition])

    async def _resend(self, messages: list[Message]) -> None:
        """Idempotent, so it can be retried whole: readers keep the latest revision of an
        alert, and an index entry written twice is one entry."""
        sends = self.ctx.sends()
        await self._send_messages(sends, messages)
        await sends.done()

    def _count_commit_failure(self) -> None:
        self.ctx.stats.counters["source_commit_failures"] += 1

    async def _commit(self, sealed: dict[int, int]) -> None:
        offsets = {TopicPartition(self.topic, p): offset for p, offset in sealed.items()}
        if not offsets or await commit(self.consumer, offsets, self._count_commit_failure) != "yes":
            return
        failpoint("judge.committed")
        for tp, offset in offsets.items():
            if tp.partition in self.parts:
                self.parts[tp.partition].committed = offset
