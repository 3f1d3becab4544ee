"""`cem alerts deliver`: friction alerts to webhooks, team topics and the log.

- Its own consumer group on `cem.friction.alerts`; offsets are committed only up to the
  oldest alert not yet handled by every destination it goes to (at-least-once).
- One queue and worker per destination: a destination that is down is retried with
  exponential backoff while the others keep going (until its queue is full).
- Every outcome is written to a compacted ledger topic before the offset moves, and the
  ledger is read back at start-up, so a restart neither re-delivers an alert to a
  destination nor forgets a cooldown. A receiver can also deduplicate on the
  `Idempotency-Key` header (`<alert_id>:<status>`): after a hard kill (SIGKILL), the request
  that was in flight may be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge, start_http_server
from pydantic import ValidationError

from pipeline import kafka_config
from pipeline.settings import Settings
from schemas.alert import FrictionAlert
from sinks.delivery.config import AlertsConfig, KafkaDestination, LogDestination, Route, WebhookDestination
from sinks.delivery.ledger import Decision, Ledger

log = logging.getLogger("cem.delivery")

DELIVERIES = Counter(
    "cem_alert_deliveries_total", "Alert outcomes per destination", ["destination", "outcome"]
)  # outcome: delivered | retracted | cooldown | already_delivered | nothing_to_retract | rejected
FAILED_ATTEMPTS = Counter("cem_alert_delivery_failed_attempts_total", "Failed delivery attempts", ["destination"])
DESTINATION_UP = Gauge("cem_alert_destination_up", "1 if the last attempt succeeded", ["destination"])
QUEUE_DEPTH = Gauge("cem_alert_delivery_queue", "Alerts waiting per destination", ["destination"])
INVALID = Counter("cem_alert_delivery_invalid_messages_total", "Messages on the alerts topic that are not alerts")


class Rejected(Exception):
    """The destination refused the alert for good (a 4xx other than 408/429)."""


@dataclass
class Job:
    route: Route
    destination_id: str
    alert: FrictionAlert
    tp: TopicPartition
    offset: int


class OffsetTracker:
    """Commit positions that never pass an alert some destination has not handled yet."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, dict[int, int]] = defaultdict(dict)
        self.seen: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int, jobs: int) -> None:
        self.seen[tp] = offset
        if jobs:
            self.pending[tp][offset] = jobs

    def done(self, tp: TopicPartition, offset: int) -> None:
        left = self.pending[tp][offset] - 1
        if left:
            self.pending[tp][offset] = left
        else:
            del self.pending[tp][offset]

    def committable(self) -> dict[TopicPartition, int]:
        out = {}
        for tp, last in self.seen.items():
            waiting = self.pending.get(tp)
            out[tp] = min(waiting) if waiting else last + 1
        return out


def render(dest: WebhookDestination, alert: FrictionAlert) -> bytes:
    if dest.format == "slack":
        icon = ":red_circle:" if alert.severity == "high" else ":large_orange_circle:"
        text = f"{icon} *{alert.severity}* {alert.kind}: {alert.summary}"
        if alert.status == "retracted":
            text = f":white_check_mark: RETRACTED (late data showed it was not friction): {alert.summary}"
        return orjson.dumps({"text": text})
    return alert.model_dump_json().encode()


class DeliveryService:
    def __init__(self, settings: Settings, config: AlertsConfig) -> None:
        self.settings = settings
        self.config = config
        self.ledger = Ledger()
        self.tracker = OffsetTracker()
        self.queues: dict[str, asyncio.Queue[Job]] = {}
        self.destinations: dict[str, Any] = {}
        for route in config.routes:
            for dest_id, dest in zip(route.destination_ids(), route.to, strict=True):
                self.destinations[dest_id] = dest
        self._stopping = asyncio.Event()
        self._busy: dict[str, bool] = {}
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ start-up
    async def load_ledger(self) -> int:
        """Read the whole ledger topic (compacted) into memory."""
        from pipeline.admin import read_to_end

        records = await asyncio.to_thread(read_to_end, self.settings, self.config.delivery.ledger_topic)
        for rec in records:
            if rec.value is not None:
                self.ledger.apply(orjson.loads(rec.value))
        return len(records)

    async def ensure_topics(self) -> None:
        """The ledger (compacted) and every Kafka destination's topic."""
        from kafka.admin import NewTopic

        from pipeline.admin import ensure_topics

        k = self.settings.kafka
        specs = [NewTopic(self.config.delivery.ledger_topic, k.partitions, k.replication_factor,
                          topic_configs={"cleanup.policy": "compact"})]  # fmt: skip
        for dest in self.destinations.values():
            if isinstance(dest, KafkaDestination) and dest.topic not in {x.name for x in specs}:
                specs.append(NewTopic(dest.topic, k.partitions, k.replication_factor))
        await asyncio.to_thread(ensure_topics, self.settings, specs)

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        d = self.config.delivery
        if d.metrics_port:
            start_http_server(d.metrics_port, addr="127.0.0.1")
        await self.ensure_topics()
        loaded = await self.load_ledger()
        log.info("ledger: %d record(s) loaded; %d route(s)", loaded, len(self.config.routes))
        self._producer = AIOKafkaProducer(**kafka_config.aiokafka(self.settings.kafka), acks="all")
        await self._producer.start()
        self._http = aiohttp.ClientSession()
        for dest_id in self.destinations:
            self.queues[dest_id] = asyncio.Queue(maxsize=d.queue_size)
            DESTINATION_UP.labels(dest_id).set(1)
        workers = [asyncio.create_task(self._worker(dest_id)) for dest_id in self.destinations]
        consumer = AIOKafkaConsumer(
            self.settings.kafka.topics.alerts,
            **kafka_config.aiokafka(self.settings.kafka),
            group_id=d.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.worker.session_timeout_s * 1000),
            heartbeat_interval_ms=max(500, int(self.settings.worker.session_timeout_s * 200)),
        )
        await consumer.start()
        committer = asyncio.create_task(self._commit_loop(consumer))
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batch.items():
                    for rec in records:
                        await self._dispatch(tp, rec.offset, rec.value)
        finally:
            # Graceful stop: each destination finishes the attempt in flight and records it;
            # queued alerts stay uncommitted, so the next run delivers them. Then commit.
            self._stopping.set()
            for dest_id, w in zip(self.destinations, workers, strict=True):
                if not self._busy.get(dest_id):
                    w.cancel()
            _, late = await asyncio.wait(workers, timeout=15)
            for w in late:
                w.cancel()
            committer.cancel()
            await self._commit(consumer)
            await consumer.stop()
            await self._producer.stop()
            await self._http.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _dispatch(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        try:
            alert = FrictionAlert.model_validate_json(value or b"")
        except ValidationError as e:
            INVALID.inc()
            log.warning("not an alert at %s@%d: %s", tp, offset, str(e)[:200])
            self.tracker.add(tp, offset, 0)
            return
        jobs: list[Job] = []
        for route in self.config.routes:
            if not route.match.matches(alert):
                continue
            cooldown = (
                route.cooldown_minutes if route.cooldown_minutes is not None else self.config.delivery.cooldown_minutes
            )
            let_through = False
            for dest_id in route.destination_ids():
                decision = self.ledger.decide(route.name, dest_id, alert, cooldown)
                if decision is Decision.DELIVER:
                    jobs.append(Job(route, dest_id, alert, tp, offset))
                    let_through = True
                    continue
                DELIVERIES.labels(dest_id, decision.value).inc()
                if decision is Decision.COOLDOWN and (dest_id, alert.alert_id) not in self.ledger.delivered:
                    await self._write_ledger(self.ledger.record(route.name, dest_id, alert, "suppressed"))
            if let_through and alert.status == "open":
                self.ledger.let_through(route.name, alert)
        self.tracker.add(tp, offset, len(jobs))
        for job in jobs:
            queue = self.queues[job.destination_id]
            while True:  # wait while that destination's queue is full (back-pressure), unless stopping
                try:
                    queue.put_nowait(job)
                    break
                except asyncio.QueueFull:
                    if self._stopping.is_set():
                        return  # left uncommitted: delivered by the next run
                    await asyncio.sleep(0.05)
            QUEUE_DEPTH.labels(job.destination_id).set(queue.qsize())

    async def _worker(self, dest_id: str) -> None:
        queue = self.queues[dest_id]
        while not self._stopping.is_set():
            job = await queue.get()
            self._busy[dest_id] = True
            try:
                if await self._deliver(dest_id, job):
                    self.tracker.done(job.tp, job.offset)
            finally:
                self._busy[dest_id] = False
                queue.task_done()
                QUEUE_DEPTH.labels(dest_id).set(queue.qsize())

    async def _deliver(self, dest_id: str, job: Job) -> bool:
        """Deliver with retries; False when stopping interrupted it (it stays uncommitted)."""
        d = self.config.delivery
        delay = d.retry_initial_s
        attempts = 0
        while True:
            attempts += 1
            try:
                await self._send(self.destinations[dest_id], job.alert)
                DESTINATION_UP.labels(dest_id).set(1)
                outcome = job.alert.status
                DELIVERIES.labels(dest_id, "delivered" if outcome == "open" else "retracted").inc()
                await self._write_ledger(self.ledger.record(job.route.name, dest_id, job.alert, outcome))
                return True
            except Rejected as e:
                FAILED_ATTEMPTS.labels(dest_id).inc()
                if attempts >= d.max_attempts_rejected:
                    log.error("%s refused alert %s for good: %s", dest_id, job.alert.alert_id, e)
                    DELIVERIES.labels(dest_id, "rejected").inc()
                    return True
            except Exception as e:  # down, slow, or erroring: keep trying
                FAILED_ATTEMPTS.labels(dest_id).inc()
                DESTINATION_UP.labels(dest_id).set(0)
                log.warning("%s: delivery of %s failed (%s); retry in %.1fs", dest_id, job.alert.alert_id,
                            e or type(e).__name__, delay)  # fmt: skip
            if self._stopping.is_set():
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            delay = min(delay * 2, d.retry_max_s)

    async def _send(self, dest: Any, alert: FrictionAlert) -> None:
        if isinstance(dest, WebhookDestination):
            assert self._http is not None
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": f"{alert.alert_id}:{alert.status}",
                "X-CEM-Alert-Id": alert.alert_id,
                "X-CEM-Alert-Status": alert.status,
                "X-CEM-Alert-Revision": str(alert.revision),
                **dest.headers,
            }
            timeout = aiohttp.ClientTimeout(total=dest.timeout_s)
            async with self._http.post(dest.url, data=render(dest, alert), headers=headers, timeout=timeout) as resp:
                if resp.status < 300:
                    return
                body = (await resp.text())[:200]
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    raise Rejected(f"HTTP {resp.status}: {body}")
                raise RuntimeError(f"HTTP {resp.status}: {body}")
        elif isinstance(dest, KafkaDestination):
            assert self._producer is not None
            await self._producer.send_and_wait(
                dest.topic, key=alert.customer_id.encode(), value=alert.model_dump_json().encode()
            )
        elif isinstance(dest, LogDestination):
            log.warning("friction alert %s: %s", alert.status, alert.model_dump_json())

    async def _write_ledger(self, rec: dict[str, Any]) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.config.delivery.ledger_topic, key=Ledger.key(rec), value=orjson.dumps(rec)
        )

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in consumer.assignment()}
        if offsets:
            with contextlib.suppress(Exception):  # a rebalance in progress: the next round commits
                await consumer.commit(offsets)


def run_delivery(settings: Settings, config: AlertsConfig) -> None:
    async def main() -> None:
        service = DeliveryService(settings, config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(main())
