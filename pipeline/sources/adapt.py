"""`cem adapt`: a stream job from raw topics to the channel topics.

* Amazon Connect contact trace records (`kafka.topics.connect_ctr`) -> call-centre
  touchpoints. Connect delivers records at least once and again after each update, so a
  contact is held `adapt.contact_settle_s` after its first record and forwarded once, as its
  newest record (`processors.sources.connect.ContactDedupe`). Offsets are committed only
  below the oldest record a held contact still needs, so a restart loses nothing; what it
  forwards again has the same event_id (the ContactId), which the pipeline counts once.
* CloudEvents (`kafka.topics.cloudevents`, Kafka binding, structured or binary mode, parsed
  with the `cloudevents` SDK) -> booking touchpoints.

Every touchpoint is checked with the worker's own decoder before it is sent; a record that
cannot become one goes to the dead-letter topic with the reason, as in the worker.

Why a job on a raw topic rather than a collector route: Connect exports records to Kinesis
(or Firehose), which a Kinesis source connector copies to Kafka as they are, and the
deduplication by ContactId needs state that one owner keeps per partition; a consumer group
gives both, and Kafka's offsets make it restartable. Stateless HTTP collectors behind a load
balancer could not deduplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from cloudevents.v1.kafka import KafkaMessage, from_binary, from_structured
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import ValidationError

from pipeline.engine.decode import Rejected, decode_touchpoint
from pipeline.kafka.clients import aiokafka, group_consumer
from pipeline.kafka.reading import commit
from pipeline.settings import Settings
from pipeline.sources.settings import SourcesConfig
from processors.sources.cloudevents import map_event
from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from processors.sources.connect import ContactDedupe, map_record
from schemas.connect import ContactTraceRecord
from schemas.touchpoints import Channel

log = logging.getLogger("cem.adapt")
MESSAGE_BYTES = 1_000_000
REPORT_EVERY_S = 60.0


def _first_error(e: ValidationError) -> Rejected:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "json_invalid":
        return Rejected("invalid_json", "", str(err["msg"]))
    return Rejected("missing_field" if err["type"] == "missing" else "invalid_field", loc, str(err["msg"]))


def cloudevent_of(headers: dict[str, bytes], key: bytes | None, value: bytes | None) -> tuple[dict[str, Any], Any]:
    """(attributes, data) of a CloudEvent in a Kafka record: binary mode when it has a
    `ce_specversion` header, structured mode otherwise. Raises ValueError."""
    if value is None:
        raise ValueError("a CloudEvent record needs a value")
    message = KafkaMessage(headers=headers, key=key, value=value)
    try:
        binary = any(h.lower() == "ce_specversion" for h in headers)
        event = from_binary(message) if binary else from_structured(message)
    except Exception as e:  # the SDK raises its own errors, and KeyError/TypeError on odd input
        raise ValueError(f"not a CloudEvent ({type(e).__name__})") from None
    attributes = dict(event.get_attributes())
    attributes.pop("partitionkey", None)
    return attributes, event.data


class Adapter:
    def __init__(self, settings: Settings, sources: SourcesConfig) -> None:
        self.s = settings
        self.sources = sources
        a = settings.adapt
        self.topics = settings.kafka.topics
        self.dedupe = ContactDedupe(
            timedelta(seconds=a.contact_settle_s), a.max_held_contacts, a.max_remembered_contacts
        )
        self.vocabulary = frozenset(settings.rules.field_vocabulary)
        self.counts: Counter[str] = Counter()
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self.stopping = asyncio.Event()

    # -- pure-ish steps ----------------------------------------------------------------
    def check(self, channel: Channel, outcome: Outcome, now: datetime) -> tuple[bytes | None, bytes] | Rejected | None:
        """A mapped touchpoint as (key, value) if the worker would accept it; None if ignored."""
        if isinstance(outcome, Ignored):
            self.counts["ignored"] += 1
            return None
        if isinstance(outcome, Invalid):
            return Rejected("invalid_field", outcome.field, outcome.detail)
        assert isinstance(outcome, Mapped)
        value = orjson.dumps(outcome.value)
        decoded = decode_touchpoint(
            channel,
            value,
            vocabulary=self.vocabulary,
            now=now,
            max_future=timedelta(hours=self.s.worker.max_future_skew_hours),
            max_past=timedelta(days=self.s.worker.max_past_days),
            max_bytes=self.s.worker.max_message_bytes,
        )
        if isinstance(decoded, Rejected):
            return Rejected(decoded.reason, outcome.source_of(decoded.field), decoded.detail)
        return (outcome.key.encode() if outcome.key else None), value

    def take(
        self, record: Any, now: datetime
    ) -> tuple[list[tuple[str, bytes | None, bytes, list[Any]]], Rejected | None]:
        """Sends a raw record leads to (topic, key, value, headers), or why it is a dead letter."""
        if record.topic == self.topics.connect_ctr:
            try:
                ctr = ContactTraceRecord.model_validate_json(record.value or b"")
            except ValidationError as e:
                return [], _first_error(e)
            checked = self.check("call_center", map_record(ctr, self.sources.connect), now)
            if checked is None or isinstance(checked, Rejected):
                return [], checked
            out = self.dedupe.offer(
                ctr.ContactId, ctr.LastUpdateTimestamp, checked, now, (record.partition, record.offset)
            )
            return [(self.topics.callcenter, k, v, []) for k, v in out], None
        try:
            headers = {k: v for k, v in record.headers or ()}
            attributes, data = cloudevent_of(headers, record.key, record.value)
        except ValueError as e:
            return [], Rejected("invalid_cloudevent", "", str(e))
        checked = self.check("booking", map_event(attributes, data, self.sources.cloudevents), now)
        if checked is None or isinstance(checked, Rejected):
            return [], checked
        return [(self.topics.booking, checked[0], checked[1], [])], None

    def dead_letter(self, record: Any, why: Rejected) -> tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]:
        self.counts[f"deadletter:{why.reason}"] += 1
        # the reason names a field, never a value: contact records carry phone numbers
        log.info("dead-letter %s[%d]@%d: %s", record.topic, record.partition, record.offset, why.describe())
        headers = why.headers(record.topic, record.partition, record.offset)
        original = record.value or b""
        room = MESSAGE_BYTES - len(record.key or b"") - sum(len(k) + len(v) for k, v in headers) - 64
        if len(original) > room:
            headers.append(("cem.error.truncated", str(len(original)).encode()))
            original = original[:room]
        return self.topics.deadletter, record.key, original, headers

    def offsets_to_commit(self) -> dict[TopicPartition, int]:
        """Per partition read, the next offset, or the oldest one a held contact still needs."""
        out = {}
        for tp, next_offset in self.positions.items():
            needed = self.dedupe.needed_from(tp.partition) if tp.topic == self.topics.connect_ctr else None
            out[tp] = next_offset if needed is None else min(needed, next_offset)
        return out

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(**group_consumer(s, f"{s.worker.app_id}-adapt"))
        producer = AIOKafkaProducer(**aiokafka(s.kafka), acks="all", enable_idempotence=True, linger_ms=5)
        adapter = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                # Their new owner reads them again from the committed offset, which is below
                # every record a held contact of theirs needs: let those contacts go.
                gone = {tp.partition for tp in revoked if tp.topic == adapter.topics.connect_ctr}
                for contact, held in list(adapter.dedupe.held.items()):
                    if held.position[0] in gone:
                        del adapter.dedupe.held[contact]
                for tp in revoked:
                    adapter.positions.pop(tp, None)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                return None

        if s.adapt.metrics_port:
            registry = CollectorRegistry()
            registry.register(_Metrics(self))
            start_http_server(s.adapt.metrics_port, addr="127.0.0.1", registry=registry)
        await producer.start()
        await consumer.start()
        consumer.subscribe([self.topics.connect_ctr, self.topics.cloudevents], listener=Listener())
        log.info("adapting %s and %s", self.topics.connect_ctr, self.topics.cloudevents)
        next_report = time.monotonic() + REPORT_EVERY_S
        try:
            while not self.stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=s.adapt.batch_size)
                now = datetime.now(UTC)
                sends: list[tuple[str, bytes | None, bytes, list[Any]]] = []
                for tp, records in batches.items():
                    for record in records:
                        out, why = self.take(record, now)
                        sends += out
                        if why is not None:
                            sends.append(self.dead_letter(record, why))
                        self.positions[tp] = record.offset + 1
                sends += [(self.topics.callcenter, k, v, []) for k, v in self.dedupe.due(now)]
                if sends:
                    await self._send(producer, sends)
                await commit(consumer, self.offsets_to_commit(), lambda: None)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + REPORT_EVERY_S
                    log.info("%s", self.report())
        finally:
            log.info("stopping: %s", self.report())
            await consumer.stop()
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, sends: list[tuple[str, bytes | None, bytes, list[Any]]]) -> None:
        """Send and wait for every acknowledgement, retrying while Kafka is away: offsets are
        committed only after. A message sent twice by a retry is counted once downstream."""
        pause = 0.5
        while True:
            try:
                futures = [await producer.send(t, v, key=k, headers=h) for t, k, v, h in sends]
                await asyncio.gather(*futures)
                break
            except KafkaError as e:
                log.warning("sending failed (%s); retrying in %.1fs", type(e).__name__, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.s.worker.clickhouse_retry_max_s)
        self.counts["forwarded"] += sum(1 for t, *_ in sends if t != self.topics.deadletter)

    def report(self) -> str:
        """What the adapter did so far, for its log: counts only."""
        d = self.dedupe
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (
            f"{counts or 'nothing yet'}; contacts held {len(d.held)}, remembered {len(d.done)}, "
            f"records delivered again {d.duplicates}, updates after forwarding {d.late_updates}"
        )

    def metrics(self) -> Iterator[Metric]:
        """Prometheus metrics, read from the counts at scrape time."""
        out = CounterMetricFamily("cem_adapt_records", "raw records by outcome", labels=["outcome"])
        for outcome, n in sorted(self.counts.items()):
            out.add_metric([outcome], n)
        yield out
        d = self.dedupe
        yield CounterMetricFamily(
            "cem_adapt_records_delivered_again", "contact records of a contact already held or forwarded", d.duplicates
        )
        yield CounterMetricFamily(
            "cem_adapt_updates_after_forwarding",
            "newer contact records that came after their contact was forwarded (dropped)",
            d.late_updates,
        )
        yield GaugeMetricFamily("cem_adapt_contacts_held", "contacts waiting for newer records", len(d.held))
        yield GaugeMetricFamily("cem_adapt_contacts_remembered", "contacts forwarded and remembered", len(d.done))

    def stop(self) -> None:
        self.stopping.set()


class _Metrics:
    """prometheus_client's custom-collector protocol, over the adapter's counts."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def collect(self) -> Iterator[Metric]:
        return self.adapter.metrics()
