"""Kafka administration and producing, with kafka-python: topics, lag, feeding files."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.conn import BrokerConnection
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from pipeline.engine.sends import SNAPSHOT_MESSAGE_BYTES
from pipeline.kafka import clients
from pipeline.settings import Settings, Topics

DEFAULT_TOPICS = Topics()


class KafkaUnavailable(Exception):
    pass


def admin_client(settings: Settings) -> KafkaAdminClient:
    with _explained(settings):
        return KafkaAdminClient(**clients.kafka_python(settings.kafka), request_timeout_ms=10_000)


def consumer(settings: Settings, **kwargs: Any) -> KafkaConsumer:
    # kafka-python refuses a fetch response larger than receive_message_max_bytes (1 MB by
    # default), which one fetch across a few partitions of packs or snapshots easily is
    sizes = {"receive_message_max_bytes": 64 * 2**20, "fetch_max_bytes": 32 * 2**20}
    with _explained(settings):
        return KafkaConsumer(**clients.kafka_python(settings.kafka), enable_auto_commit=False, **sizes | kwargs)


@contextlib.contextmanager
def _explained(settings: Settings) -> Iterator[None]:
    """Turn a failure to connect into one sentence that says what to check."""
    try:
        yield
    except (KafkaError, NoBrokersAvailable, ssl.SSLError) as e:
        raise KafkaUnavailable(diagnose(settings) or f"Kafka at {settings.kafka.bootstrap_servers}: {e}") from e


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def diagnose(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """Why the first bootstrap broker refuses us, in words; None if it accepts us.

    Connects the way every client will (TCP, then TLS, then SASL). kafka-python reports the
    reason for a failed handshake only in its log, so the log is where we read it from.
    """
    k = settings.kafka
    host, _, port = clients.servers(k)[0].rpartition(":")
    cfg = clients.kafka_python(k)
    cfg.pop("bootstrap_servers")
    capture = _Capture()
    conn_log = logging.getLogger("kafka.conn")
    conn_log.addHandler(capture)
    try:
        conn = BrokerConnection(host, int(port), socket.AF_UNSPEC, **cfg)
        ok = conn.connect_blocking(timeout=timeout_s)
        conn.close()
    except ssl.SSLError as e:
        return (
            f"Kafka at {k.bootstrap_servers}: TLS handshake failed ({e.reason or e}): "
            "check kafka.security.ssl_cafile (the CA that signed the broker's certificate) and ssl_check_hostname"
        )
    finally:
        conn_log.removeHandler(capture)
    if ok:
        return None
    said = " ".join(capture.messages)
    sec = k.security
    where = f"Kafka at {k.bootstrap_servers}"
    if "SaslAuthenticationFailed" in said or "Authentication failed" in said:
        return (
            f"{where} rejected the credentials of user {sec.username!r} ({sec.sasl_mechanism}): "
            "check kafka.security.username and kafka.security.password"
        )
    if "UnsupportedSaslMechanism" in said:
        return f"{where} does not offer SASL mechanism {sec.sasl_mechanism}: check kafka.security.sasl_mechanism"
    if sec.protocol == "PLAINTEXT":
        return (
            f"no Kafka broker answers at {k.bootstrap_servers} (start one with `make up`, or set "
            "kafka.bootstrap_servers; if the broker requires TLS or SASL, set kafka.security)"
        )
    return (
        f"{where} did not accept a {sec.protocol} connection: check kafka.security.protocol "
        f"against the broker's listener ({said[-300:] or 'no reason given'})"
    )


def topic_specs(settings: Settings) -> list[NewTopic]:
    k = settings.kafka
    t = k.topics
    n, rf = k.partitions, k.replication_factor
    dlq_ms = str(k.deadletter_retention_days * 86_400_000)
    return [
        NewTopic(t.web, n, rf),
        NewTopic(t.callcenter, n, rf),
        NewTopic(t.booking, n, rf),
        # the CRM snapshot topic is compacted: the latest profile (or tombstone) per customer
        NewTopic(t.profiles, n, rf, topic_configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}),
        # the judge's state is rebuilt from this topic after its newest snapshot (pipeline/engine/snapshots.py)
        NewTopic(t.by_customer, n, rf, topic_configs={"retention.ms": str(k.internal_retention_days * 86_400_000)}),
        # A removal's tombstone stays a day: a worker whose index on disk is younger than
        # state.identity_resume_hours reads on from it, and sees every removal since
        NewTopic(
            t.identity,
            n,
            rf,
            topic_configs={
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "delete.retention.ms": "86400000",
            },
        ),  # fmt: skip
        # snapshots of the judge's state: chunks of up to a few MiB; segments roll hourly so
        # that compaction can reclaim the snapshots each new one replaces
        NewTopic(
            t.snapshots,
            n,
            rf,
            topic_configs={
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "3600000",
                "max.message.bytes": str(SNAPSHOT_MESSAGE_BYTES),
            },
        ),  # fmt: skip
        NewTopic(t.alerts, n, rf),
        # one receipt per erasure request, kept for good (compaction keeps the last per request)
        NewTopic(t.erasure_receipts, 1, rf, topic_configs={"cleanup.policy": "compact"}),
        # the eraser's work: kept as long as the internal topic, so that an eraser away that long loses nothing
        NewTopic(t.erasures, 1, rf, topic_configs={"retention.ms": str(k.internal_retention_days * 86_400_000)}),
        NewTopic(t.deadletter, n, rf, topic_configs={"retention.ms": dlq_ms}),
        # raw input of `cem adapt` (phone numbers, emails): kept no longer than the internal topic
        NewTopic(t.connect_ctr, n, rf, topic_configs={"retention.ms": str(k.internal_retention_days * 86_400_000)}),
        NewTopic(t.cloudevents, n, rf, topic_configs={"retention.ms": str(k.internal_retention_days * 86_400_000)}),
    ]


def create_topics(settings: Settings) -> list[tuple[str, str]]:
    """Create every topic cem uses; existing ones are checked for their partition count."""
    # the dead-letter and receipt topics are not co-partitioned with anything: any count will do
    t = settings.kafka.topics
    checked = {spec.name for spec in topic_specs(settings)} - {
        t.deadletter,
        t.erasure_receipts,
        t.connect_ctr,
        t.cloudevents,
    }
    return ensure_topics(settings, topic_specs(settings), checked)


def ensure_topics(
    settings: Settings, specs: list[NewTopic], check_partitions: set[str] | frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Create the topics that do not exist yet; refuse existing ones in `check_partitions`
    whose partition count differs from their spec."""
    admin = admin_client(settings)
    report = []
    try:
        existing = _partition_counts(admin)
        for spec in specs:
            if spec.name in existing:
                have = existing[spec.name]
                if have != spec.num_partitions and spec.name in check_partitions:
                    raise RuntimeError(
                        f"topic {spec.name} has {have} partitions but kafka.partitions is {spec.num_partitions}: "
                        "co-partitioned topics must agree"
                    )
                report.append((spec.name, f"exists ({have} partitions)"))
                continue
            try:
                admin.create_topics([spec])
                report.append((spec.name, f"created ({spec.num_partitions} partitions)"))
            except TopicAlreadyExistsError:
                report.append((spec.name, "exists"))
    finally:
        admin.close()
    return report


def _partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    out = {}
    for meta in admin.describe_topics():
        if not meta.get("error_code"):
            out[meta["topic"]] = len(meta["partitions"])
    return out


@dataclass
class Lag:
    by_topic: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_topic.values())


def group_offsets(settings: Settings, group: str) -> dict[TopicPartition, Any]:
    """A consumer group's committed offsets (OffsetAndMetadata) per partition."""
    admin = admin_client(settings)
    try:
        return dict(admin.list_consumer_group_offsets(group))
    finally:
        admin.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> the offset the next message written to it will have."""
    cons = consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in cons.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in (cons.end_offsets(tps) if tps else {}).items()}
    finally:
        cons.close()


def consumer_lag(settings: Settings, topics: Iterable[str] | None = None) -> Lag:
    """Messages not yet committed by the worker's consumer groups, per topic: the channel
    topics and the CRM topic are read by the resolve group, the internal topic by the judge group."""
    t = settings.kafka.topics
    w = settings.worker
    sources = (*t.channels, t.profiles)
    names = list(topics or (*sources, t.by_customer))
    admin = admin_client(settings)
    cons = consumer(settings)
    try:
        # Sources first, then the internal topic: a source committed means what it sent is on
        # the internal topic, so reading its end offsets afterwards cannot miss it.
        committed = {tp: c for tp, c in admin.list_consumer_group_offsets(w.resolve_group).items()
                     if tp.topic in sources}  # fmt: skip
        committed |= {tp: c for tp, c in admin.list_consumer_group_offsets(w.judge_group).items()
                      if tp.topic == t.by_customer}  # fmt: skip
        lag: dict[str, int] = {}
        for name in names:
            parts = cons.partitions_for_topic(name) or set()
            tps = [TopicPartition(name, p) for p in parts]
            ends = cons.end_offsets(tps) if tps else {}
            lag[name] = sum(max(0, end - (committed[tp].offset if tp in committed else 0)) for tp, end in ends.items())
        return Lag(lag)
    finally:
        cons.close()
        admin.close()


def wait_until_processed(
    settings: Settings,
    timeout_s: float = 600.0,
    on_progress: Callable[[Lag], None] | None = None,
    settle_checks: int = 2,
) -> Lag:
    """Block until the worker has committed everything on its topics (stable for a few checks)."""
    deadline = time.monotonic() + timeout_s
    zero_streak = 0
    while True:
        try:
            lag = consumer_lag(settings)
        except KafkaError as e:  # e.g. the group coordinator is still loading: transient
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read consumer lag: {e}") from e
            time.sleep(1.0)
            continue
        if on_progress:
            on_progress(lag)
        zero_streak = zero_streak + 1 if lag.total == 0 else 0
        if zero_streak >= settle_checks:
            return lag
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {lag.total} messages unprocessed after {timeout_s:.0f}s: {lag.by_topic}")
        time.sleep(max(0.5, settings.worker.commit_interval_s))


def read_to_end(settings: Settings, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of a topic (all partitions) up to its end offsets at call time."""
    reader = consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(reader.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f}s")
            for records in reader.poll(timeout_ms=500).values():
                out.extend(records)
        return out
    finally:
        reader.close()


def producer(settings: Settings) -> KafkaProducer:
    with _explained(settings):
        return KafkaProducer(**clients.kafka_python(settings.kafka), acks="all", linger_ms=20, batch_size=256 * 1024)


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None


def encode_value(value: Any) -> bytes | None:
    """JSON objects are serialized; a string is sent as its raw bytes (handy for bad input)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def configured_topic(settings: Settings, name: str) -> str:
    """The configured name of a topic given by its default (contract) name; others unchanged."""
    for field in Topics.model_fields:
        if getattr(DEFAULT_TOPICS, field) == name:
            return str(getattr(settings.kafka.topics, field))
    return name


def read_jsonl(path: Path, settings: Settings) -> Iterator[Record]:
    """Lines of {"topic", "key", "value"}; default topic names map to the configured ones."""
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                topic = configured_topic(settings, obj["topic"])
                key = obj.get("key")
                yield Record(topic, None if key is None else str(key).encode(), encode_value(obj.get("value")))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{'topic', 'key', 'value'}}: {e}") from e


def send_all(prod: KafkaProducer, records: Iterable[Record]) -> int:
    count = 0
    for r in records:
        prod.send(r.topic, key=r.key, value=r.value)
        count += 1
    prod.flush()
    return count


def send_in_order(prod: KafkaProducer, records: Iterable[Record], profiles_topic: str) -> int:
    """Send records so that each run of CRM profiles is on the broker before what follows it
    (a producer sends its partitions in any order): a touchpoint is resolved with the profiles
    appended before it (docs/architecture.md)."""
    return sum(send_all(prod, run) for _, run in itertools.groupby(records, key=lambda r: r.topic == profiles_topic))


def preflight(settings: Settings) -> None:
    """Fail fast, with the reason, when the broker will not accept us (`cem worker` start)."""
    problem = diagnose(settings)
    if problem:
        raise KafkaUnavailable(problem)
