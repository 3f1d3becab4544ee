"""Connection settings for every Kafka client cem runs, from one place (`kafka.security`).

Three client libraries spell the same settings three ways: kafka-python (admin, CLI
producers and readers), aiokafka (identity index, alert delivery) and faust (the worker,
which hands them on to aiokafka). Each gets its spelling here, so a TLS or SASL setting
cannot reach one client and miss another.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from pipeline.settings import KafkaSettings, Settings


class Hidden(str):
    """A password that every client library uses as the string it is, but whose repr is
    masked. kafka-python logs a client's whole configuration at DEBUG ("Starting
    KafkaAdminClient with configuration: {...}"), and a dict shows its values' repr; so does
    any other log line or error that quotes a configuration dict."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'**********'"


def servers(k: KafkaSettings) -> list[str]:
    return [h.strip() for h in k.bootstrap_servers.split(",")]


def ssl_context(k: KafkaSettings) -> ssl.SSLContext | None:
    sec = k.security
    if not sec.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None)
    ctx.check_hostname = sec.ssl_check_hostname
    if sec.ssl_certfile and sec.ssl_keyfile:
        ctx.load_cert_chain(str(sec.ssl_certfile), str(sec.ssl_keyfile))
    return ctx


def kafka_python(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaAdminClient, KafkaConsumer and KafkaProducer."""
    sec = k.security
    out: dict[str, Any] = {"bootstrap_servers": servers(k), "security_protocol": sec.protocol}
    if sec.tls:
        out["ssl_context"] = ssl_context(k)
    if sec.sasl:
        out |= {
            "sasl_mechanism": sec.sasl_mechanism,
            "sasl_plain_username": sec.username,
            "sasl_plain_password": Hidden(sec.password.get_secret_value()),
        }
    return out


def aiokafka(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's AIOKafkaConsumer and AIOKafkaProducer."""
    return kafka_python(k) | {"bootstrap_servers": k.bootstrap_servers}


def group_consumer(settings: Settings, group_id: str, member: str | None = None) -> dict[str, Any]:
    """An aiokafka consumer of the worker's: a member of `group_id` that commits by hand;
    `member`: its static member id (group.instance.id), if it has one."""
    w = settings.worker
    return aiokafka(settings.kafka) | {
        "group_instance_id": member,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": int(w.session_timeout_s * 1000),
        "heartbeat_interval_ms": int(max(0.5, w.session_timeout_s / 10) * 1000),  # a rebalance is seen sooner
        # A fetch waits at the broker for new data on the partitions it asks for, while data
        # that arrives meanwhile for the consumer's other partitions waits for the next fetch:
        # with Kafka's default of 500 ms, touchpoints waited up to 600 ms before stage A saw them.
        "fetch_max_wait_ms": w.fetch_max_wait_ms,
        "fetch_min_bytes": w.fetch_min_bytes,
        # a consumer holds up to one fetch per partition until it is handed out (memory)
        "max_partition_fetch_bytes": w.fetch_partition_bytes,
    }


def producer_request_bytes(batch_bytes: int) -> int:
    """The producer's largest request for a given batch size: room for two full batches,
    and never below Kafka's usual 1 MB."""
    return max(1_000_000, 2 * batch_bytes)


def faust_credentials(k: KafkaSettings) -> CredentialsT | None:
    """faust's `broker_credentials`: faust passes them to every consumer and producer it makes."""
    sec = k.security
    if sec.sasl:
        return SASLCredentials(
            username=sec.username,
            password=Hidden(sec.password.get_secret_value()),
            ssl_context=ssl_context(k),
            mechanism=sec.sasl_mechanism,
        )
    if sec.tls:
        return SSLCredentials(ssl_context(k))
    return None
