"""`cem eraser`: the part of an erasure that needs the power to delete, in a process of its own.

The judge forgets a customer in the stream (state, identity entries) and hands the rest over
on `cem.internal.erasures` (`schemas.erasure.ErasureJob`). The eraser, logged in to ClickHouse
as the eraser role, which the worker never holds:
* deletes the rows of the customer and of the anon:/unresolved: keys of their identifiers (the
  events from before they were known), and waits until ClickHouse has really deleted them;
* removes the customer's records from the alert delivery ledger (tombstones);
* counts the dead letters that hold the customer's id or identifiers: raw input, which the
  dead-letter topic keeps until its retention (Kafka deletes no single message of a topic
  that is not compacted);
* writes the receipt (ClickHouse `erasure_receipts` and the topic `cem.erasure.receipts`).

Each job is done before its offset is committed, and done again harmlessly after a crash: a
request keeps its first receipt. ClickHouse or the broker away: the job waits and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.kafka import clients
from pipeline.kafka.admin import producer, read_to_end
from pipeline.ops.signals import run_until_signalled
from pipeline.settings import Settings
from processors.identity import LOOKUP_ORDER, fingerprint
from schemas.erasure import ErasureJob, ErasureReceipt, Removed
from sinks.clickhouse.client import connect
from sinks.clickhouse.erasure import cluster_servers, delete_customer, find_receipt, insert_receipt

log = logging.getLogger("cem.eraser")

#: the alert delivery service's ledger topic (its `delivery.ledger_topic`, by default)
LEDGER_TOPIC = "cem.alerts.deliveries"
RETRY_MAX_S = 30.0


def related_ids(job: ErasureJob) -> list[str]:
    """The keys events of the customer's identifiers were filed under before the customer
    was known (processors.identity.resolve)."""
    return sorted({f"{kind}:{fp[:16]}" for fp in job.fingerprints for kind in ("anon", "unresolved")})


def erase(settings: Settings, job: ErasureJob, ledger_topic: str = LEDGER_TOPIC) -> ErasureReceipt:
    """Do one job (blocking); returns its receipt, the first one if the request ran before."""
    cfg = settings.clickhouse
    client = connect(cfg.as_role("eraser"))
    try:
        related = related_ids(job)
        ids = [job.customer_id, *related]
        keys_with_rows = (
            {
                r[0]
                for r in client.execute(
                    f"SELECT DISTINCT customer_id FROM {cfg.database}.timeline_versions WHERE customer_id IN %(c)s",
                    {"c": tuple(related)},
                )
            }
            if related  # `IN ()` is a syntax error; a job done again may know no identifier any more
            else set()
        )
        servers = [
            connect(cfg.as_role("eraser").model_copy(update={"host": host, "port": port}))
            for host, port in (cluster_servers(client, cfg.cluster) if cfg.cluster else [])
        ]
        try:
            before = delete_customer(client, cfg.database, ids, cluster=cfg.cluster, servers=servers)
        finally:
            for server in servers:
                server.disconnect()
        ledger = _forget_in_ledger(settings, ledger_topic, set(ids))
        dead = _dead_letters_of(settings, job)
        receipt = find_receipt(client, cfg.database, job.request_id)
        if receipt is None:
            receipt = ErasureReceipt(
                request_id=job.request_id,
                subject=fingerprint("customer_id", job.customer_id, settings.secret),
                requested_by=job.requested_by,
                requested_at=job.requested_at,
                completed_at=datetime.now(UTC),
                removed=Removed(
                    customer_state=job.customer_state,
                    identity_entries=job.identity_entries,
                    timeline_rows=before["timeline_versions"],
                    alert_rows=before["friction_alert_versions"],
                    related_keys=len(keys_with_rows),
                    ledger_entries=ledger,
                    dead_letters=dead,
                ),
                verified=True,
            )
            insert_receipt(client, cfg.database, receipt)
        return receipt
    finally:
        client.disconnect()


def _forget_in_ledger(settings: Settings, topic: str, ids: set[str]) -> int:
    """Tombstones for the ledger records of these customer ids; how many."""
    latest: dict[bytes, Any] = {}
    for rec in read_to_end(settings, topic, timeout_s=120):
        latest[rec.key] = rec.value
    doomed = [
        key for key, value in latest.items() if value is not None and orjson.loads(value).get("customer_id") in ids
    ]
    if doomed:
        prod = producer(settings)
        try:
            for key in doomed:
                prod.send(topic, key=key, value=None)
            prod.flush()
        finally:
            prod.close()
    return len(doomed)


def _dead_letters_of(settings: Settings, job: ErasureJob) -> int:
    """Dead letters whose key or value names the customer or one of their identifiers."""
    fps = set(job.fingerprints)
    cid = job.customer_id.encode()
    n = 0
    for rec in read_to_end(settings, settings.kafka.topics.deadletter, timeout_s=300):
        if rec.key == cid or (rec.value is not None and _names(rec.value, job.customer_id, fps, settings.secret)):
            n += 1
    return n


def _names(value: bytes, customer_id: str, fps: set[str], secret: bytes) -> bool:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return customer_id.encode() in value
    if not isinstance(data, dict):
        return False
    if data.get("customer_id") == customer_id:
        return True
    ids = data.get("identifiers")
    if isinstance(ids, dict):
        for kind in (*LOOKUP_ORDER, "anonymous_id"):
            v = ids.get(kind)
            if isinstance(v, str) and v and fingerprint(kind, v, secret) in fps:
                return True
    return False


class Eraser:
    def __init__(self, settings: Settings, ledger_topic: str = LEDGER_TOPIC) -> None:
        self.settings = settings
        self.ledger_topic = ledger_topic
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(s.kafka.topics.erasures, **clients.group_consumer(s, f"{s.worker.app_id}-eraser"))
        await consumer.start()
        try:
            while not self.stopping.is_set():
                got = await consumer.getmany(timeout_ms=500, max_records=10)
                for records in got.values():
                    for rec in records:
                        if not await self._one(rec):
                            return  # stopping: not committed, done again after the restart
                if got:
                    await consumer.commit()
        finally:
            await consumer.stop()

    async def _one(self, rec: Any) -> bool:
        try:
            job = ErasureJob.model_validate_json(rec.value or b"")
        except ValueError as e:  # not ours to fix: say so, and go on
            log.error("erasure job at offset %d is not valid (%s): skipped", rec.offset, str(e)[:200])
            return True
        delay = 1.0
        while not self.stopping.is_set():
            try:
                receipt = await asyncio.to_thread(erase, self.settings, job, self.ledger_topic)
                await asyncio.to_thread(self._publish, receipt)
                log.info("erasure %s done: %s", job.request_id, receipt.removed.model_dump())
                return True
            except Exception as e:  # ClickHouse or the broker away: wait and try again
                why = f"{type(e).__name__} {getattr(e, 'code', '')}".strip()  # never the message: it may quote data
                log.warning("erasure %s failed (%s); retrying in %.0fs", job.request_id, why, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
        return False

    def _publish(self, receipt: ErasureReceipt) -> None:
        prod = producer(self.settings)
        try:
            topic = self.settings.kafka.topics.erasure_receipts
            prod.send(topic, key=receipt.request_id.encode(), value=receipt.model_dump_json().encode())
            prod.flush()
        finally:
            prod.close()


def run_eraser(settings: Settings, ledger_topic: str = LEDGER_TOPIC) -> None:
    eraser = Eraser(settings, ledger_topic)
    run_until_signalled(eraser.run, eraser.stop)
