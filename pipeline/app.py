"""The worker: thin stages around the pure core in `processors/`.

    cem.touchpoints.{web,callcenter,booking} --resolve----+  (packs per partition: pipeline/rekey.py)
                     (aiokafka batches: pipeline/source.py)  +--> cem.internal.by-customer --judge--> ClickHouse
    cem.crm.profiles -----------------ingest_profiles-----+   (by customer partition)   +--> cem.friction.alerts
                          bad input -> cem.deadletter (original bytes + reason headers)

Stage A (`resolve`, `ingest_profiles`) is stateless but for the identity index (identifier
fingerprint -> customer id, a compacted topic every worker follows: pipeline/identity_index.py).
It validates, resolves the customer, and re-keys by customer id, so stage B (`judge`, a Faust
agent with the `customers` table) sees all of a customer's events on one partition,
co-partitioned with its state. Why `resolve` is not a Faust agent: docs/architecture.md."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import orjson
from faust.types import EventT
from pydantic import ValidationError

from pipeline import faults, faust_consumer, kafka_config
from pipeline.decode import Rejected, decode_profile, decode_touchpoint
from pipeline.identity_index import IdentityIndex
from pipeline.rekey import pack_touches
from pipeline.settings import Settings
from pipeline.source import BatchSource
from pipeline.stats import Stats
from processors.identity import fingerprint, profile_fingerprints, resolve
from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import Touch
from processors.normalize import to_micros, to_touch
from schemas.erasure import ErasureReceipt, Removed
from schemas.internal import ENVELOPE, EraseEnvelope, ProfileEnvelope, TouchEnvelope, TouchesEnvelope
from schemas.profile import ProfileSnapshot
from schemas.touchpoints import Channel
from sinks.alerts import to_alert
from sinks.clickhouse.client import connect
from sinks.clickhouse.erasure import delete_customer, find_receipt, insert_receipt
from sinks.clickhouse.writer import ClickHouseSink, alert_row, now_utc, timeline_row

log = logging.getLogger("cem.pipeline")


def tune_gc() -> None:
    """The worker keeps every active customer's state in memory: millions of small objects
    that live for long. With the default thresholds the cyclic collector keeps walking them
    (45 % of the judge's time at 100k customers, bench/): collect the young generation less
    often and the old one rarely."""
    gc.set_threshold(50_000, 50, 1000)


RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


class Pipeline:
    """Builds the Faust app, its topics, tables and agents from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = s = settings
        self.stats = Stats()
        self.rules = s.rules_obj
        self.vocabulary = frozenset(s.rules.field_vocabulary)
        self.max_future = timedelta(hours=s.worker.max_future_skew_hours)
        self._sink: ClickHouseSink | None = None
        self._last_progress, self._stalled_s = -1, 0.0
        self._holes: dict[Any, tuple[tuple[int, int], int]] = {}  # tp -> (hole, ticks it stayed)
        self._retries_running = 0
        t = s.kafka.topics
        self.app = app = faust_consumer.App(
            s.worker.app_id,
            broker=[f"kafka://{h}" for h in kafka_config.servers(s.kafka)],
            broker_credentials=kafka_config.faust_credentials(s.kafka),
            store="memory://",
            topic_partitions=s.kafka.partitions,
            topic_replication_factor=s.kafka.replication_factor,
            broker_session_timeout=s.worker.session_timeout_s,
            broker_heartbeat_interval=max(0.5, s.worker.session_timeout_s / 5),
            broker_commit_interval=s.worker.commit_interval_s,
            # Customer states on the changelog are kilobytes each: with faust's defaults
            # (16 KiB batches, no linger) most produce requests carried one or two of them.
            producer_linger=s.worker.producer_linger_ms / 1000,
            producer_max_batch_size=s.worker.producer_batch_bytes,
            producer_max_request_size=kafka_config.producer_request_bytes(s.worker.producer_batch_bytes),
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            web_host="127.0.0.1",
            web_bind="127.0.0.1",  # the stats, metrics and health endpoints stay on loopback
            web_port=s.worker.web_port,
            datadir=str(s.worker.data_dir),
            key_serializer="raw",
            value_serializer="raw",
            table_standby_replicas=0,
        )
        self.profiles = app.topic(t.profiles, **RAW)
        self.by_customer = app.topic(t.by_customer, partitions=s.kafka.partitions, **RAW)
        self.alerts_topic = app.topic(t.alerts, **RAW)
        self.deadletter = app.topic(t.deadletter, **RAW)
        self.receipts_topic = app.topic(t.erasure_receipts, **RAW)
        self.identity_topic = app.topic(t.identity, **RAW)
        self.index = IdentityIndex(kafka_config.aiokafka(s.kafka), t.identity)
        app.task(self.index.follow)
        # use_partitioner: changelog partitions follow the producer's partitioner on the key,
        # the same one that placed the key on cem.internal.by-customer.
        self.customers = app.Table(
            "customers", partitions=s.kafka.partitions, use_partitioner=True, key_type=bytes, value_type=bytes
        )
        # Live customer states, so a batch does not decode from JSON what the last batch just
        # encoded (the table holds the same states as bytes, for its changelog). Cleared when
        # partitions are revoked: another worker may change a customer before it comes back.
        self._live: OrderedDict[str, tuple[int, CustomerState]] = OrderedDict()  # least recent first
        self._generation = 0
        app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]  # mode types the handler too narrowly
        if os.environ.get(faults.ENV):
            app.on_partitions_assigned.connect(self._on_partitions_assigned)  # type: ignore[arg-type]
        self.source = BatchSource(
            kafka_config.aiokafka(s.kafka),
            s.worker.resolve_group,
            list(t.channels),
            batch_size=s.worker.batch_size,
            within_s=s.worker.batch_within_s,
            session_timeout_s=s.worker.session_timeout_s,
            on_commit_failure=self._count_commit_failure,
        )
        app.task(self._resolve_task)
        app.agent(self.profiles, name="ingest_profiles")(self._profiles_agent)
        app.agent(self.by_customer, name="judge")(self._judge_agent)

        async def stats_page(web: Any, request: Any) -> Any:
            return web.json(self.stats.snapshot())

        async def metrics_page(web: Any, request: Any) -> Any:
            return web.bytes(self.stats.prometheus_text(), content_type="text/plain; version=0.0.4")

        async def live_page(web: Any, request: Any) -> Any:
            return web.json({"live": True})

        async def ready_page(web: Any, request: Any) -> Any:
            return web.json({"ready": self.stats.ready}, status=200 if self.stats.ready else 503)

        async def tasks_page(web: Any, request: Any) -> Any:
            return web.text(self._task_dump())

        app.page("/cem/stats/")(stats_page)
        app.page("/cem/debug/tasks")(tasks_page)
        app.page("/metrics")(metrics_page)
        app.page("/health/live")(live_page)
        app.page("/health/ready")(ready_page)
        app.timer(interval=5.0)(self._refresh_health)

    # ------------------------------------------------------------------ stage A
    async def _resolve_task(self) -> None:
        """Stage A's loop: the channel topics in batches (pipeline/source.py), each batch
        committed once everything it produced is on the broker. An error that escapes it
        crashes the worker (faust does that for a failed task), so a supervisor restarts it
        from the committed offsets instead of leaving a worker that reads nothing."""
        await self.index.loaded.wait()  # resolve nothing before the identity index is loaded
        await self._retrying("adopt the previous release's offsets", self._adopt_offsets)
        async for batch in self.source.batches():
            await self._resolve_batch(batch)
            await self.source.commit(batch)

    def _count_commit_failure(self) -> None:
        self.stats.counters["source_commit_failures"] += 1

    async def _adopt_offsets(self) -> None:
        from pipeline.admin import adopt_offsets  # kafka-python's admin client, blocking

        s = self.settings
        adopted = await asyncio.to_thread(
            adopt_offsets, s, s.worker.app_id, s.worker.resolve_group, s.kafka.topics.channels
        )
        for tp, offset in sorted(adopted.items()):
            log.info("%s[%d]: the resolve group starts at %d, where the previous release left it",
                     tp.topic, tp.partition, offset)  # fmt: skip

    async def _resolve_batch(self, records: list[Any]) -> None:
        """Resolve a batch and re-key it by customer, packed per partition (pipeline/rekey.py).
        Returns once every message is on the broker; a failed send (the broker away) resends
        the whole batch, which is safe because the judge drops what it has already seen."""
        now = datetime.now(UTC)
        touches: list[tuple[str, bytes]] = []
        for record in records:
            try:
                touch = await self._resolve_one(record, now)
                if touch is not None:
                    touches.append(touch)
            except Exception as e:  # a bug must not stop stage A: park the message
                log.exception("resolve failed at %s", _where(record))
                await self.dead_letter(record, Rejected("processing_error", "", repr(e)[:500]))
        out = [(None, value, p) for p, value in pack_touches(touches, self.settings.kafka.partitions)]
        await self._retrying("forward to the by-customer topic", self._send_all, self.by_customer, out)

    async def _send_all(self, target: faust.TopicT, messages: list[tuple[bytes | None, bytes, int | None]]) -> None:
        """Send (key, value, partition or None) through faust's topic, waiting for every
        acknowledgement. (Handing messages straight to the producer was faster, but a broker
        restart left the judge waiting for good in tests/integration/test_faults.py; faust's
        send path survives it.)"""
        sent = [await target.send(key=k, value=v, partition=p, force=True) for k, v, p in messages]
        await asyncio.gather(*sent)

    async def _resolve_one(self, m: Any, now: datetime) -> tuple[str, bytes] | None:
        """A touchpoint (aiokafka ConsumerRecord) -> (customer id, the Touch as JSON), or None
        if it was dead-lettered."""
        self.stats.events_in[m.topic] += 1
        channel: Channel | None = self.settings.kafka.topics.channel_of(m.topic)  # type: ignore[assignment]
        assert channel is not None, m.topic
        result = decode_touchpoint(
            channel,
            m.value,
            vocabulary=self.vocabulary,
            now=now,
            max_future=self.max_future,
            max_bytes=self.settings.worker.max_message_bytes,
        )
        if isinstance(result, Rejected):
            await self.dead_letter(m, result)
            return None
        res = resolve(result.customer_id, result.identifiers, self._lookup, self.settings.secret)
        if res.link_anonymous is not None and self._lookup(res.link_anonymous) != res.customer_id:
            await self._index_put(res.link_anonymous, res.customer_id)
        touch = to_touch(channel, result, res.customer_id, res.resolved_by, m.topic, m.partition, m.offset)
        return res.customer_id, touch.to_json()

    def _lookup(self, fingerprint: str) -> str | None:
        return self.index.get(fingerprint)

    async def _index_put(self, fingerprint: str, customer_id: str | None) -> None:
        """Write through: this worker sees it now, the others when they read the topic."""
        self.index.apply(fingerprint, customer_id)
        await self.identity_topic.send(
            key=fingerprint.encode(), value=None if customer_id is None else customer_id.encode()
        )

    async def _profiles_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            m = event.message
            self.stats.events_in[m.topic] += 1
            try:
                result = decode_profile(
                    m.key, m.value, vocabulary=self.vocabulary, max_bytes=self.settings.worker.max_message_bytes
                )
                if isinstance(result, Rejected):
                    await self.dead_letter(event.message, result)
                    continue
                env: ProfileEnvelope | EraseEnvelope
                if isinstance(result, ProfileSnapshot):
                    ids = result.identifiers
                    env = ProfileEnvelope(
                        customer_id=result.customer_id,
                        version=result.version,
                        loyalty_tier=result.loyalty_tier.lower(),
                        known_fields=result.known_fields,
                        fingerprints=profile_fingerprints(ids.email, ids.phone, ids.loyalty_id, self.settings.secret),
                    )
                else:
                    env = _erase_request(event, result)
                await self.by_customer.send(key=env.customer_id.encode(), value=orjson.dumps(env.model_dump()))
            except Exception as e:
                log.exception("ingest_profiles failed at %s", _where(event.message))
                await self.dead_letter(event.message, Rejected("processing_error", "", repr(e)[:500]))

    # ------------------------------------------------------------------ stage B
    async def _judge_agent(self, stream: faust.StreamT[bytes]) -> None:
        w = self.settings.worker
        # A resolve batch sends at most one TouchesEnvelope per partition (more only when one
        # would pass rekey.MAX_MESSAGE_BYTES), so this many messages hold about one resolve
        # batch; _judge_events writes whenever batch_size rows are pending. (4x as many gave
        # ClickHouse batches of ~1,200 rows instead of ~500 and ~10 % more throughput in
        # `make bench-quick`, but p99 event -> alert 515-883 ms instead of ~350 ms.)
        # take_events (not take): the batch keeps each message's Kafka metadata for provenance.
        batches = stream.take_events(self.settings.kafka.partitions, within=w.batch_within_s)  # type: ignore[attr-defined]  # missing from faust's StreamT
        async for events in batches:
            await self._judge_batch(events)

    async def _on_partitions_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        faults.install_drop_once(self.app.consumer)  # the fault tests only; before fetching starts

    async def _on_partitions_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        self._generation += 1
        self._live.clear()

    async def _judge_batch(self, events: list[EventT[bytes]]) -> None:
        try:
            await self._judge_events(events)
        except BaseException:
            # states in memory may now be ahead of what was written: trust the table again
            self._generation += 1
            self._live.clear()
            raise

    async def _judge_events(self, events: list[EventT[bytes]]) -> None:
        """Judge a batch; write ClickHouse; then alerts and state. Offsets are acked after return.
        An erasure splits the batch: what came before it is written first, so its deletion
        covers it, and what comes after it is not deleted."""
        now = now_utc()
        now_us = to_micros(now)
        out = _Pending(self._generation)
        for event in events:
            m = event.message
            try:
                env = ENVELOPE.validate_json(m.value or b"")
            except ValidationError as e:
                await self.dead_letter(event.message, Rejected("invalid_internal", "", str(e)[:500]))
                continue
            try:
                if isinstance(env, TouchesEnvelope):
                    for item in env.touches:
                        try:
                            self._judge_touch(out, item, now, now_us)
                        except Exception as e:  # park this touchpoint, judge the others
                            log.exception("judge failed at %s", _where(event.message))
                            why = Rejected("processing_error", "", repr(e)[:500])
                            await self.dead_letter(event.message, why, value=orjson.dumps(item))
                    if len(out.timeline) >= self.settings.worker.batch_size:  # bound inserts and memory
                        await self._flush(out)
                        out = _Pending(self._generation)
                    continue
                if isinstance(env, TouchEnvelope):
                    self._judge_touch(out, env.touch, now, now_us)
                    continue
                cid = env.customer_id
                if isinstance(env, EraseEnvelope):
                    had_state, entries = self._forget(out, cid)
                    await self._flush(out)
                    await self._retrying("erasure", self._erase, env, had_state, entries)
                    out = _Pending(self._generation)
                    continue
                state = self._state(out.states, cid)
                old = set(state.profile.fingerprints) if state.profile else set()
                profile = Profile(env.version, env.loyalty_tier, tuple(env.known_fields), tuple(env.fingerprints))
                state, accepted = apply_profile(state, profile)
                out.states[cid] = state
                self.stats.profiles["held" if accepted else "ignored_older"] += 1
                if accepted:
                    out.index.update({fp: None for fp in old - set(env.fingerprints)})
                    out.index.update({fp: cid for fp in env.fingerprints})
            except Exception as e:
                log.exception("judge failed at %s", _where(event.message))
                await self.dead_letter(event.message, Rejected("processing_error", "", repr(e)[:500]))
        await self._flush(out)

    def _judge_touch(self, out: _Pending, touch_dict: dict[str, object], now: datetime, now_us: int) -> None:
        touch = Touch.from_dict(touch_dict)
        cid = touch.customer_id
        state, verdict = judge(self._state(out.states, cid), touch, self.rules, now_us)
        out.states[cid] = state
        self.stats.counters["touchpoints_judged"] += 1
        if verdict.duplicate:
            self.stats.counters["duplicates"] += 1
        if verdict.late:
            self.stats.counters["late_events"] += 1
        out.timeline.extend(timeline_row(r, now) for r in verdict.rows)
        self.stats.counters["row_rewrites"] += sum(1 for r in verdict.rows if r.revision > 1)
        for a in verdict.alerts:
            out.alert_rows.append(alert_row(a, (touch.topic, touch.partition, touch.offset), now))
            out.alert_msgs.append((cid.encode(), to_alert(a).model_dump_json().encode()))
            self.stats.alerts[f"{a.body['kind']}:{a.status}"] += 1

    async def _flush(self, out: _Pending) -> None:
        await self._write_clickhouse(out.timeline, out.alert_rows)
        await self._retrying("publish alerts and state", self._publish, out.alert_msgs, out.states, out.index)
        for cid, st in out.states.items():
            if out.generation != self._generation:
                break  # a rebalance came in between: these may be stale soon
            if st is None:
                self._live.pop(cid, None)
            else:
                self._live[cid] = (out.generation, st)
                self._live.move_to_end(cid)
        # decoded states cost ~10x their JSON: keep the most recently active ones only
        while len(self._live) > self.settings.worker.live_states_max:
            self._live.popitem(last=False)

    # ------------------------------------------------------------------ erasure
    def _forget(self, out: _Pending, cid: str) -> tuple[bool, int]:
        """Drop the customer's state and every identity entry that points to them (those
        from the CRM profile and those learned from logins). Returns what there was."""
        had_state = out.states.get(cid) is not None or (
            cid not in out.states and self.customers.get(cid.encode()) is not None
        )
        out.states[cid] = None
        owned = {fp for fp, owner in self.index.data.items() if owner == cid}
        owned |= {fp for fp, owner in out.index.items() if owner == cid}
        out.index.update(dict.fromkeys(owned))
        self.stats.profiles["erased"] += 1
        return had_state, len(owned)

    async def _erase(self, env: EraseEnvelope, had_state: bool, identity_entries: int) -> None:
        """Delete the customer's rows in ClickHouse, wait until they are gone, then record and
        publish the receipt. Idempotent: a request seen again keeps its first receipt."""
        cfg, secret = self.settings.clickhouse, self.settings.secret

        def run() -> ErasureReceipt:
            client = connect(cfg.as_role("eraser"))
            try:
                before = delete_customer(client, cfg.database, env.customer_id)
                receipt = find_receipt(client, cfg.database, env.request_id)
                if receipt is None:
                    receipt = ErasureReceipt(
                        request_id=env.request_id,
                        subject=fingerprint("customer_id", env.customer_id, secret),
                        requested_by=env.requested_by,
                        requested_at=datetime.fromisoformat(env.requested_at),
                        completed_at=datetime.now(UTC),
                        removed=Removed(
                            customer_state=int(had_state),
                            identity_entries=identity_entries,
                            timeline_rows=before["timeline_versions"],
                            alert_rows=before["friction_alert_versions"],
                        ),
                        verified=True,
                    )
                    insert_receipt(client, cfg.database, receipt)
                return receipt
            finally:
                client.disconnect()

        receipt = await asyncio.to_thread(run)
        sent = await self.receipts_topic.send(
            key=env.request_id.encode(), value=receipt.model_dump_json().encode(), force=True
        )
        await sent
        self.stats.counters["erasures_completed"] += 1
        log.info("erasure %s done: %s", env.request_id, receipt.removed.model_dump())

    async def _publish(
        self,
        alert_msgs: list[tuple[bytes, bytes]],
        states: dict[str, CustomerState | None],
        index: dict[str, str | None],
    ) -> None:
        """Alerts, then state, then the identity index. Idempotent, so it can be retried whole."""
        # Alerts must be on the broker before the state that says they were published: wait
        # for their acks, so a crash cannot leave state claiming an alert the topic never got.
        await self._send_all(self.alerts_topic, [(k, v, None) for k, v in alert_msgs])
        for cid, st in states.items():
            if st is None:
                self.customers.pop(cid.encode(), None)
            else:
                self.customers[cid.encode()] = st.to_json()
        for fp, owner in index.items():
            await self._index_put(fp, owner)

    async def _retrying(self, what: str, step: Any, *args: Any) -> None:
        """Retry a step with backoff instead of letting the agent crash: a crashed faust agent
        leaves its batch unacknowledged, and the partitions behind it stop for good."""
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
                    if not failing:  # the stall watchdog leaves a retrying worker alone
                        failing, self._retries_running = True, self._retries_running + 1
                    await asyncio.sleep(delay)
                    # faust partitions table writes with the producer's cached metadata, which
                    # knows no topic created after it last refreshed: refresh before retrying
                    with contextlib.suppress(Exception):
                        await self.app.producer._ensure_producer().client.force_metadata_update()  # type: ignore[attr-defined]
                    delay = min(delay * 2, self.settings.worker.clickhouse_retry_max_s)
        finally:
            if failing:
                self._retries_running -= 1

    def _state(self, states: dict[str, CustomerState | None], cid: str) -> CustomerState:
        st = states.get(cid)
        if st is None:
            live = None if cid in states else self._live.get(cid)
            if live is not None and live[0] == self._generation:
                st = live[1]
            else:
                raw = None if cid in states else self.customers.get(cid.encode())
                st = CustomerState.from_json(raw) if raw else CustomerState(cid)
            states[cid] = st
        return st

    async def _write_clickhouse(self, timeline: list[tuple[Any, ...]], alerts: list[tuple[Any, ...]]) -> None:
        """Write, retrying with backoff until ClickHouse takes the batch: offsets wait meanwhile."""
        if timeline or alerts:
            await self._retrying("ClickHouse write", self._write_once, timeline, alerts)

    async def _write_once(self, timeline: list[tuple[Any, ...]], alerts: list[tuple[Any, ...]]) -> None:
        sink = self._sink or self._connect_sink()
        started = time.monotonic()
        try:
            await asyncio.to_thread(sink.write, timeline, alerts)
        except Exception:
            self.stats.counters["clickhouse_errors"] += 1
            sink.client.disconnect()  # a fresh connection for the retry
            self._sink = None
            raise
        self.stats.observe_write(len(timeline) + len(alerts), time.monotonic() - started)
        self.stats.counters["timeline_rows_written"] += len(timeline)
        self.stats.counters["alert_rows_written"] += len(alerts)

    def _connect_sink(self) -> ClickHouseSink:
        cfg = self.settings.clickhouse
        self._sink = ClickHouseSink(connect(cfg, cfg.database), cfg.database)
        return self._sink

    # ------------------------------------------------------------------ health
    async def _refresh_health(self) -> None:
        """Ready: partitions assigned, tables recovered, not rebalancing. Lag from the broker."""
        app = self.app
        assigned = bool(app.consumer.assignment()) if app.consumer is not None else False
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]  # TableManager, not its T
        self.stats.ready = assigned and not app.rebalancing and bool(recovered) and self.index.loaded.is_set()
        self.stats.identity_entries = len(self.index.data)
        await self._watch_for_stalls()
        try:
            from pipeline.admin import consumer_lag

            lag = await asyncio.to_thread(consumer_lag, self.settings)
            self.stats.lag = lag.by_topic
        except Exception as e:  # the broker is away: keep the last known lag
            log.debug("lag refresh failed: %s", e)

    async def _watch_for_stalls(self) -> None:
        """Detect and undo a faust stall (faust-streaming issue #629): after a restart or
        rebalance, stream partitions can stay paused with lag on the broker and nothing
        moving. faust's recovery pauses the stream partitions and the flow of messages while it
        restores tables, and resumes them at the end; but when the consumer generation moved on
        meanwhile, it returns without resuming ("Recovery rebalancing again"), counting on a
        next recovery round that does not always come. So when nothing has moved for 20 s
        with lag on the broker, no rebalance under way, no table left to restore and no retry
        in progress, this does what the end of recovery does: resume the stream partitions,
        seek them to their committed offsets, resume the flow and restart the fetcher.
        `cem_stalls_resumed_total` counts it."""
        app: Any = self.app
        self._report_commit_holes()
        progress = self.stats.counters["touchpoints_judged"] + sum(self.stats.events_in.values())
        lagging = sum(self.stats.lag.values()) > 0
        if not lagging or progress != self._last_progress or app.rebalancing or self._retries_running:
            self._last_progress, self._stalled_s = progress, 0.0
            return
        self._stalled_s += 5.0
        recovery = app.tables.recovery
        if self._stalled_s < 20.0 or recovery.need_recovery():
            return
        consumer = app.consumer  # faust's Consumer: its private fetch-set bookkeeping
        streams = [tp for tp in consumer.assignment() if not recovery._is_changelog_tp(tp)]
        parked = [tp for tp in streams if tp in consumer._buffered_partitions]
        paused = [tp for tp in streams if tp in consumer._paused_partitions]
        log.warning(
            "no progress for %.0fs with lag %s: resuming %d stream partitions (%d paused, %d parked) and the flow",
            self._stalled_s, self.stats.lag, len(streams), len(paused), len(parked),
        )  # fmt: skip
        for tp in parked:
            consumer.on_buffer_drop(tp)
        consumer.resume_partitions(streams)
        # as the end of recovery does: what was read meanwhile is read again from the
        # committed offsets, since resuming the flow clears the streams' buffers
        await consumer.perform_seek()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        recovery.completed.set()
        self.stats.counters["stalls_resumed"] += 1
        self._stalled_s = 0.0

    def _task_dump(self) -> str:
        """Where every coroutine waits, in the worker's loop and in the consumer's thread,
        and what the producer holds: the first thing to look at when a worker stops moving."""
        loops: list[tuple[str, Any]] = [("main", asyncio.get_running_loop())]
        thread = getattr(self.app.consumer, "_thread", None)
        if getattr(thread, "thread_loop", None) is not None:
            loops.append(("consumer thread", thread.thread_loop))  # type: ignore[union-attr]
        out = [_producer_state(self.app), _commit_state(self.app)]
        for name, loop in loops:
            tasks = asyncio.all_tasks(loop)
            out.append(f"=== {name} loop: {len(tasks)} tasks")
            out.extend(f"{task.get_name()}:\n{_await_chain(task)}" for task in tasks)
        return "\n".join(out)

    def _report_commit_holes(self) -> None:
        """Report a partition whose commits are blocked by messages that were read but never
        acknowledged. faust commits a partition only up to its first unacknowledged offset, so
        such a hole stops the partition's commits for good while everything after it is
        processed. faust's seek at the end of recovery made such holes on every restart with
        a backlog (fixed in pipeline/faust_consumer.py); this report is there for whatever
        else can make one. A hole that stays 20 s is logged and counted
        (`cem_commit_holes_total`); restarting the worker re-reads from the committed offset.
        The watchdog does not seek by itself: a seek while the fetcher hands over a batch makes
        faust record the skipped offsets as a gap, which counts as acknowledged
        (docs/operations.md, "Stalls")."""
        app: Any = self.app
        if app.rebalancing or self._retries_running:
            self._holes.clear()
            return
        consumer = app.consumer  # faust's private ack bookkeeping: committed and acked offsets
        holes = ack_holes(consumer._committed_offset, consumer._acked, consumer._gap)
        before = self._holes
        self._holes = {tp: (hole, before[tp][1] + 1 if tp in before and before[tp][0] == hole else 1)
                       for tp, hole in holes.items()}  # fmt: skip
        for tp, (hole, n) in self._holes.items():
            if n == 4:  # the health timer ticks every 5 s: reported once per hole
                log.warning(
                    "%s[%d]: offsets %d-%d were read but never acknowledged, so its commits are blocked; "
                    "restart this worker to re-read them", tp.topic, tp.partition, hole[0], hole[1] - 1,
                )  # fmt: skip
                self.stats.counters["commit_holes"] += 1

    # ------------------------------------------------------------------ shared
    async def dead_letter(self, m: Any, why: Rejected, value: bytes | None = None) -> None:
        """Park a message (faust's Message or aiokafka's ConsumerRecord) with the reason in its
        headers. `value`: the part that failed (one touchpoint of a TouchesEnvelope); by
        default the whole message."""
        self.stats.deadletter[why.reason] += 1
        headers = [
            ("cem.error.reason", why.reason.encode()),
            ("cem.error.field", why.field.encode()),
            ("cem.error.detail", why.describe().encode()),
            ("cem.source.topic", m.topic.encode()),
            ("cem.source.partition", str(m.partition).encode()),
            ("cem.source.offset", str(m.offset).encode()),
            ("cem.error.at", datetime.now(UTC).isoformat().encode()),
        ]
        log.info("dead-letter %s: %s", _where(m), why.describe())
        await self.deadletter.send(key=m.key, value=m.value if value is None else value, headers=headers)


@dataclass
class _Pending:
    """What a (part of a) batch will write: rows, alerts, changed states, identity changes."""

    generation: int  # of the live-state cache when the batch began
    states: dict[str, CustomerState | None] = field(default_factory=dict)  # None: erased
    index: dict[str, str | None] = field(default_factory=dict)  # fingerprint -> customer | removed
    timeline: list[tuple[Any, ...]] = field(default_factory=list)
    alert_rows: list[tuple[Any, ...]] = field(default_factory=list)
    alert_msgs: list[tuple[bytes, bytes]] = field(default_factory=list)


def _erase_request(event: EventT[bytes], customer_id: str) -> EraseEnvelope:
    """A tombstone on the CRM topic: who asked comes from its headers (`cem erase` sets them);
    a CRM's own tombstone is attributed to "crm" and identified by its position."""
    m = event.message
    pairs: Any = m.headers.items() if isinstance(m.headers, dict) else m.headers or []
    headers: dict[str, bytes] = dict(pairs)

    def header(name: str) -> str | None:
        v = headers.get(name)
        return v.decode("utf-8", "replace") if v else None

    at = datetime.fromtimestamp(m.timestamp, UTC) if m.timestamp else datetime.now(UTC)
    return EraseEnvelope(
        customer_id=customer_id,
        request_id=header("cem.erasure.request_id") or f"{m.topic}:{m.partition}:{m.offset}",
        requested_by=header("cem.erasure.requested_by") or "crm",
        requested_at=at.isoformat(),
    )


def _where(m: Any) -> str:
    """topic[partition]@offset of a faust Message or an aiokafka ConsumerRecord."""
    return f"{m.topic}[{m.partition}]@{m.offset}"


def _await_chain(task: asyncio.Task[Any]) -> str:
    """The frames a task is suspended in, outermost first, following each `await`."""
    lines: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            lines.append(f"    <{type(coro).__name__}> {coro!r}"[:300])
            break
        lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines)


def _producer_state(app: Any) -> str:
    """What faust's producer still owes the broker: a send that never completes stops the
    agents and the commits behind them."""
    try:
        producer = app.producer._ensure_producer()  # aiokafka's AIOKafkaProducer
        sender = producer._sender
        acc = producer._message_accumulator
        pending = {str(tp): len(q) for tp, q in acc._batches.items() if q}
        return (
            f"=== producer: in flight to nodes {sorted(sender._in_flight)}, muted {len(sender._muted_partitions)} "
            f"partitions, pending batches {pending}, faust buffer {app.producer.buffer.size}"
        )
    except Exception as e:  # private internals: report instead of failing the page
        return f"=== producer: state unavailable ({e!r})"


def _commit_state(app: Any) -> str:
    """faust's commit bookkeeping per partition: offsets it read, acknowledged (first and last
    of the pending list), committed, and the gaps it waits for. Commits stop at a hole."""
    try:
        c = app.consumer
        lines = ["=== commits: tp read committed acked(first..last, n) gaps"]
        for tp in sorted(c.assignment()):
            acked = c._acked.get(tp) or []
            span = f"{min(acked)}..{max(acked)} n={len(acked)}" if acked else "-"
            gaps = list(c._gap.get(tp) or [])[:3]
            read, committed = c._read_offset.get(tp), c._committed_offset.get(tp)
            lines.append(f"  {tp.topic}[{tp.partition}] {read} {committed} {span} {gaps}")
        return "\n".join(lines)
    except Exception as e:  # private internals: report instead of failing the page
        return f"=== commits: state unavailable ({e!r})"


def ack_holes(
    committed: Mapping[Any, int | None], acked: Mapping[Any, list[int]], gaps: Mapping[Any, Any]
) -> dict[Any, tuple[int, int]]:
    """Partitions whose next commit is blocked: offsets after the committed position are
    acknowledged, but not those at it. `gaps` are offset ranges absent from the log (faust
    counts them as acknowledged); faust lets one missing offset at the head pass, and commits
    past it, so only two or more block. Returns tp -> (first missing offset, first one done)."""
    out: dict[Any, tuple[int, int]] = {}
    for tp, offsets in acked.items():
        position = committed.get(tp)
        if position is None or not offsets:
            continue
        first = min([*offsets, *(interval.begin for interval in gaps.get(tp) or ())])
        if first > position + 1:
            out[tp] = (position, first)
    return out
