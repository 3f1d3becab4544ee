"""`cem alerts deliver`: friction alerts to webhooks, team topics and the log.

- Its own consumer group on `cem.friction.alerts`; offsets are committed only up to the
  oldest alert not yet handled by every destination it goes to (at-least-once).
- One bounded queue and worker per destination. A destination that fails is tried again
  with exponential backoff while the others keep going. Each alert has a retry cap
  (`delivery.max_attempts`, `delivery.max_age_s`), after which it is failed for that
  destination (ledger, metric, log line); a destination that is down and whose queue is full
  fails further alerts at once, so it never stops the reading for the others.
- Every outcome is written to a compacted ledger topic before the offset moves, and the
  ledger is read back at start-up, so a restart neither re-delivers an alert to a
  destination nor forgets a cooldown. A receiver can also deduplicate on the
  `Idempotency-Key` header (`<alert_id>:<status>`): after a hard kill (SIGKILL), the request
  that was in flight may be sent again.
- Webhook requests are signed (sinks/delivery/signing.py) and redirects are never followed.
  Secrets (signing secrets, headers from the environment) are scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge, start_http_server
from pydantic import ValidationError

from pipeline.kafka import clients
from pipeline.ops.signals import run_until_signalled
from pipeline.settings import Settings
from schemas.alert import FrictionAlert
from sinks.delivery.config import AlertsConfig, KafkaDestination, LogDestination, Route, WebhookDestination
from sinks.delivery.ledger import DAY_US, Decision, Ledger
from sinks.delivery.retry import RetryPolicy
from sinks.delivery.signing import signature_headers

log = logging.getLogger("cem.delivery")

DELIVERIES = Counter(
    "cem_alert_deliveries_total", "Alert outcomes per destination", ["destination", "outcome"]
)  # outcome: delivered | retracted | cooldown | already_delivered | nothing_to_retract | already_failed
#            | rejected (refused: 4xx, redirect) | failed (retry cap reached, or queue full while down)
FAILED_ATTEMPTS = Counter("cem_alert_delivery_failed_attempts_total", "Failed delivery attempts", ["destination"])
DESTINATION_UP = Gauge("cem_alert_destination_up", "1 if the last attempt succeeded", ["destination"])
QUEUE_DEPTH = Gauge("cem_alert_delivery_queue", "Alerts waiting per destination", ["destination"])
INVALID = Counter("cem_alert_delivery_invalid_messages_total", "Messages on the alerts topic that are not alerts")
LEDGER_ENTRIES = Gauge("cem_alert_ledger_entries", "Entries the delivery ledger holds in memory")
LEDGER_FORGOTTEN = Counter(
    "cem_alert_ledger_forgotten_total", "Ledger entries forgotten: expired (retention) or evicted (size cap)", ["why"]
)
REDACTED = "**********"
# An alert's event time may run ahead of the clock by this much before pruning stops trusting it.
CLOCK_SKEW_US = DAY_US


class Rejected(Exception):
    """The destination refused the alert (a 4xx other than 408/429, or a redirect)."""


@dataclass
class Job:
    route: Route
    destination_id: str
    alert: FrictionAlert
    tp: TopicPartition
    offset: int
    queued_at: float  # time.monotonic() when it was read: delivery.max_age_s counts from here
    attempts: int = 0  # failed attempts
    rejections: int = 0  # those of them the destination refused
    last_error: str = ""


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


def redact(text: str, secrets: list[str], limit: int = 300) -> str:
    """`text` with every secret replaced, cut to `limit` characters. A text cut short before
    (a response body read in part) may end in the first characters of a secret: masked too."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = text[:limit]
    for secret in secrets:
        for n in range(min(len(secret), len(text)), 3, -1):
            if text.endswith(secret[:n]):
                return text[:-n] + REDACTED
    return text


def redirect_reason(url: str, status: int, location: str | None) -> str:
    """Why a 3xx answer is a failed delivery. Redirects are never followed: one to another host
    would hand that host the alert and its signature; within the host, the route should name
    the final URL. Only the target's host is named (its path or query may hold a token)."""
    if not location:
        return f"HTTP {status} (a redirect without Location): redirects are not followed"
    here = urlsplit(url)
    try:
        there = urlsplit(urljoin(url, location))
        default = {"http": 80, "https": 443}
        same = (here.scheme, here.hostname, here.port or default.get(here.scheme)) == (
            there.scheme,
            there.hostname,
            there.port or default.get(there.scheme),
        )
    except ValueError:
        return f"HTTP {status}: redirect to an invalid Location not followed"
    if not same:
        port = f":{there.port}" if there.port else ""
        return f"HTTP {status}: redirect to another host ({there.scheme}://{there.hostname}{port}) not followed"
    return f"HTTP {status}: redirect within {here.hostname} not followed (set the route's url to the final URL)"


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
        d = config.delivery
        self.policy = RetryPolicy.of(d)
        self.ledger = Ledger(retention_us=int(d.ledger_retention_days * DAY_US), max_entries=d.ledger_max_entries)
        self.tracker = OffsetTracker()
        self.queues: dict[str, asyncio.Queue[Job]] = {}
        self.destinations: dict[str, Any] = {}
        self.secrets: dict[str, list[str]] = {}  # per destination: what no message may show
        for route in config.routes:
            for dest_id, dest in zip(route.destination_ids(), route.to, strict=True):
                self.destinations[dest_id] = dest
                self.secrets[dest_id] = dest.secret_values() if isinstance(dest, WebhookDestination) else []
        self._stopping = asyncio.Event()
        self._busy: dict[str, bool] = {}
        # Per destination: the pause after its last failed attempt (0 while it is up), and
        # when it may be tried again. Shared by its alerts: a dead destination is not hammered.
        self._delay: dict[str, float] = defaultdict(float)
        self._retry_at: dict[str, float] = defaultdict(float)
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ start-up
    async def load_ledger(self) -> int:
        """Read the whole ledger topic (compacted) into memory."""
        from pipeline.kafka.admin import read_to_end

        records = await asyncio.to_thread(read_to_end, self.settings, self.config.delivery.ledger_topic)
        latest: dict[bytes, bytes | None] = {}
        for rec in records:  # compacted: a key's last record counts, and a tombstone erases it
            latest[rec.key or b""] = rec.value
        for value in latest.values():
            if value is not None:
                self.ledger.apply(orjson.loads(value))
        return len(records)

    async def prune_ledger(self) -> None:
        """Bound the ledger (delivery.ledger_retention_days, ledger_max_entries) and put
        tombstones on the topic for the deliveries it forgot."""
        assert self._producer is not None
        d = self.config.delivery
        pruned = self.ledger.prune(ceiling_us=int(time.time() * 1_000_000) + CLOCK_SKEW_US)
        LEDGER_FORGOTTEN.labels("expired").inc(pruned.expired)
        LEDGER_FORGOTTEN.labels("evicted").inc(pruned.evicted)
        LEDGER_ENTRIES.set(len(self.ledger.delivered) + len(self.ledger.last_open))
        if pruned.evicted:
            log.warning(
                "ledger: %d entries within delivery.ledger_retention_days forgotten to stay under"
                " delivery.ledger_max_entries (%d): their alerts may be delivered again if they come back",
                pruned.evicted, d.ledger_max_entries,
            )  # fmt: skip
        if not pruned.keys:
            return
        try:
            sent = [await self._producer.send(d.ledger_topic, key=k, value=None) for k in pruned.keys]
            await asyncio.gather(*sent)
        except Exception as e:  # the records stay on the topic: the next start forgets them again
            log.warning("ledger: tombstones for %d forgotten entries not written: %s", len(pruned.keys), e)

    async def ensure_topics(self) -> None:
        """The ledger (compacted) and every Kafka destination's topic."""
        from kafka.admin import NewTopic

        from pipeline.kafka.admin import ensure_topics

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
        self._warn_about_settings()
        await self.ensure_topics()
        loaded = await self.load_ledger()
        self._producer = AIOKafkaProducer(**clients.aiokafka(self.settings.kafka), acks="all")
        await self._producer.start()
        await self.prune_ledger()
        log.info(
            "ledger: %d record(s) loaded, %d delivery entries kept; %d route(s)",
            loaded, len(self.ledger.delivered), len(self.config.routes),
        )  # fmt: skip
        self._http = aiohttp.ClientSession()
        for dest_id in self.destinations:
            self.queues[dest_id] = asyncio.Queue(maxsize=d.queue_size)
            DESTINATION_UP.labels(dest_id).set(1)
        workers = [asyncio.create_task(self._worker(dest_id)) for dest_id in self.destinations]
        consumer = AIOKafkaConsumer(
            self.settings.kafka.topics.alerts,
            **clients.aiokafka(self.settings.kafka),
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

    def _warn_about_settings(self) -> None:
        for dest_id, dest in self.destinations.items():
            if isinstance(dest, WebhookDestination) and dest.unsigned:
                log.warning(
                    "%s sends UNSIGNED requests (unsigned: true): its receiver cannot tell them from forgeries",
                    dest_id,
                )
        lateness = self.settings.rules.allowed_lateness_days
        if self.config.delivery.ledger_retention_days < lateness:
            log.warning(
                "delivery.ledger_retention_days (%s) is shorter than rules.allowed_lateness_days (%s):"
                " a late retraction may find its alert forgotten and not be delivered",
                self.config.delivery.ledger_retention_days, lateness,
            )  # fmt: skip

    async def _dispatch(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        try:
            alert = FrictionAlert.model_validate_json(value or b"")
        except ValidationError as e:
            INVALID.inc()
            log.warning("not an alert at %s@%d: %s", tp, offset, str(e)[:200])
            self.tracker.add(tp, offset, 0)
            return
        jobs: list[Job] = []
        now = time.monotonic()
        for route in self.config.routes:
            if not route.match.matches(alert):
                continue
            cooldown = self.config.cooldown_of(route)
            let_through = False
            for dest_id in route.destination_ids():
                decision = self.ledger.decide(route.name, dest_id, alert, cooldown)
                if decision is Decision.DELIVER:
                    jobs.append(Job(route, dest_id, alert, tp, offset, queued_at=now))
                    let_through = True
                    continue
                DELIVERIES.labels(dest_id, decision.value).inc()
                if decision is Decision.COOLDOWN and (dest_id, alert.alert_id) not in self.ledger.delivered:
                    await self._write_ledger(self.ledger.record(route.name, dest_id, alert, "suppressed"))
            if let_through and alert.status == "open":
                self.ledger.let_through(route.name, alert)
        self.tracker.add(tp, offset, len(jobs))
        for job in jobs:
            if not await self._enqueue(job):
                return  # stopping: left uncommitted, delivered by the next run

    async def _enqueue(self, job: Job) -> bool:
        """Queue a job for its destination; False if stopping came first.

        A full queue of a destination that is up (answering, only slower than the alerts
        come) holds the reading back: nothing is lost. A full queue of one that is down fails
        the job at once: a dead destination never stops the others."""
        dest_id = job.destination_id
        queue = self.queues[dest_id]
        while True:
            try:
                queue.put_nowait(job)
                break
            except asyncio.QueueFull:
                if self._delay[dest_id] > 0:
                    await self._fail(job, f"its queue is full ({queue.maxsize}, delivery.queue_size) while it is down")
                    self.tracker.done(job.tp, job.offset)
                    return True
                if self._stopping.is_set():
                    return False
                await asyncio.sleep(0.05)
        QUEUE_DEPTH.labels(dest_id).set(queue.qsize())
        return True

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
        """Deliver with retries, up to the retry caps (then the alert is failed for this
        destination); False when stopping interrupted it (it stays uncommitted)."""
        dest = self.destinations[dest_id]
        while True:
            waited = time.monotonic() - job.queued_at
            why = self.policy.give_up(job.attempts, job.rejections, waited)
            if why is not None:
                refused = job.rejections >= self.policy.max_attempts_rejected
                await self._fail(job, f"{why}; last: {job.last_error}", "rejected" if refused else "failed")
                return True
            if self._stopping.is_set():
                return False
            # the destination's backoff, but never past the alert's age cap
            pause = min(self._retry_at[dest_id] - time.monotonic(), self.policy.max_age_s - waited)
            if pause > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=pause)
                continue
            try:
                await self._send(dest, job.alert)
            except Exception as e:  # refused, down, slow, or erroring: counted against the caps
                job.attempts += 1
                job.rejections += 1 if isinstance(e, Rejected) else 0
                job.last_error = redact(str(e) or type(e).__name__, self.secrets[dest_id])
                FAILED_ATTEMPTS.labels(dest_id).inc()
                DESTINATION_UP.labels(dest_id).set(0)
                self._delay[dest_id] = self.policy.next_delay(self._delay[dest_id])
                self._retry_at[dest_id] = time.monotonic() + self._delay[dest_id]
                log.warning("%s: attempt %d for alert %s failed (%s); next try in %.1fs", dest_id, job.attempts,
                            job.alert.alert_id, job.last_error, self._delay[dest_id])  # fmt: skip
                continue
            self._delay[dest_id] = 0.0
            DESTINATION_UP.labels(dest_id).set(1)
            outcome = job.alert.status
            DELIVERIES.labels(dest_id, "delivered" if outcome == "open" else "retracted").inc()
            return await self._write_ledger(self.ledger.record(job.route.name, dest_id, job.alert, outcome))

    async def _fail(self, job: Job, why: str, outcome: Literal["failed", "rejected"] = "failed") -> None:
        """Give the alert up for this destination: a log line, the metric, the ledger."""
        dest_id = job.destination_id
        log.error("%s: gave up alert %s (%s) after %d attempt(s) in %.1fs: %s", dest_id, job.alert.alert_id,
                  job.alert.status, job.attempts, time.monotonic() - job.queued_at, why)  # fmt: skip
        DELIVERIES.labels(dest_id, outcome).inc()
        await self._write_ledger(self.ledger.record(job.route.name, dest_id, job.alert, "failed", why))

    async def _send(self, dest: Any, alert: FrictionAlert) -> None:
        if isinstance(dest, WebhookDestination):
            assert self._http is not None
            body = render(dest, alert)
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": f"{alert.alert_id}:{alert.status}",
                "X-CEM-Alert-Id": alert.alert_id,
                "X-CEM-Alert-Status": alert.status,
                "X-CEM-Alert-Revision": str(alert.revision),
                **dest.request_headers(),
            }
            secret = dest.signing_secret()
            if secret is not None:  # signed per attempt: a retry carries a fresh timestamp
                headers.update(signature_headers(secret, int(time.time()), body))
            timeout = aiohttp.ClientTimeout(total=dest.timeout_s)
            async with self._http.post(
                dest.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status < 300:
                    return
                if resp.status < 400:
                    raise Rejected(redirect_reason(dest.url, resp.status, resp.headers.get("Location")))
                head = b""  # enough of the answer to say why; never all of it
                while len(head) < 1024 and (chunk := await resp.content.read(1024 - len(head))):
                    head += chunk
                body_text = head.decode(errors="replace")
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    raise Rejected(f"HTTP {resp.status}: {body_text}")
                raise RuntimeError(f"HTTP {resp.status}: {body_text}")
        elif isinstance(dest, KafkaDestination):
            assert self._producer is not None
            await self._producer.send_and_wait(
                dest.topic, key=alert.customer_id.encode(), value=alert.model_dump_json().encode()
            )
        elif isinstance(dest, LogDestination):
            log.warning("friction alert %s: %s", alert.status, alert.model_dump_json())

    async def _write_ledger(self, rec: dict[str, Any]) -> bool:
        """Write a ledger record, retrying while the broker is away; False if stopping came
        first (the alert stays uncommitted). Then bound the ledger when it is due."""
        assert self._producer is not None
        delay = 0.0
        while True:
            try:
                await self._producer.send_and_wait(
                    self.config.delivery.ledger_topic, key=Ledger.key(rec), value=orjson.dumps(rec)
                )
                break
            except Exception as e:  # never send the alert again for a ledger write that failed
                if self._stopping.is_set():
                    return False
                delay = self.policy.next_delay(delay)
                log.warning("ledger write for %s failed (%s); retry in %.1fs", rec["alert_id"], e, delay)
                await asyncio.sleep(delay)
        if self.ledger.prune_due():
            await self.prune_ledger()
        return True

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
    service = DeliveryService(settings, config)
    run_until_signalled(service.run, service.stop)
