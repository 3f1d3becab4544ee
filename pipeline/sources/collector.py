"""`cem collect`: an HTTP collector that speaks the Segment tracking API (and so RudderStack's
SDKs) and Snowplow's tracker protocol (tp2, POST), forwarding web touchpoints to
`kafka.topics.web`, and takes CloudEvents (HTTP binding) for `kafka.topics.booking`.

Contract of an answer (docs/sources.md):
* 200 `{"success": true}`: every message of the request is acknowledged by Kafka (acks=all,
  idempotent producer), or was deliberately not forwarded (an unmapped event).
* 400 `{"code", "message", "field"}`: the body or one of its messages cannot be accepted;
  `field` is the path in the body (`batch.3.properties.form`). A request is all or nothing:
  after a 400 nothing of it was forwarded.
* 401: no valid write key. 413: the body or a message is over the limit (a gzip body after
  decompression too). 415: a Content-Encoding other than gzip or identity.
* 503: Kafka did not acknowledge in time, or too many messages wait for it. The SDKs retry;
  a message forwarded before the 503 and sent again has the same `messageId`, which is the
  touchpoint's event_id, so the pipeline counts it once.

Answers and logs name fields, never values: a write key or an email never appears in either.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import hmac
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from cloudevents.v1.http import from_http
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from pydantic import ValidationError

from pipeline.engine.decode import Rejected, decode_touchpoint
from pipeline.kafka.clients import aiokafka
from pipeline.settings import Settings
from pipeline.sources.batching import Dispatcher, Outgoing
from pipeline.sources.settings import SourcesConfig
from processors.sources.cloudevents import map_event
from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from processors.sources.segment import map_message
from processors.sources.snowplow import map_event as map_snowplow
from schemas.segment import SegmentBatch, SegmentMessage
from schemas.snowplow import SnowplowEvent, SnowplowPayload
from schemas.touchpoints import Channel

log = logging.getLogger("cem.collector")

#: the endpoints and the message type each implies (None: a batch of typed messages)
ROUTES: dict[str, str | None] = {
    "/v1/batch": None,
    "/v1/import": None,  # Segment's alias of /v1/batch
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/alias": "alias",
    "/v1/group": "group",
    # analytics.js posts single messages to the short forms
    "/v1/t": "track",
    "/v1/p": "page",
    "/v1/i": "identify",
    "/v1/s": "screen",
    "/v1/a": "alias",
    "/v1/g": "group",
}
# and POST /cloudevents: one CloudEvent from a booking engine (HTTP binding), to kafka.topics.booking
#: Snowplow's tracker protocol, POST form: its events to kafka.topics.web
SNOWPLOW_PATH = "/com.snowplowanalytics.snowplow/tp2"


class Refused(Exception):
    """An answer other than 200, with what the body says."""

    def __init__(self, status: int, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> web.Response:
        body: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        headers = {"WWW-Authenticate": 'Basic realm="cem"'} if self.status == 401 else None
        return web.Response(
            status=self.status, body=orjson.dumps(body), content_type="application/json", headers=headers
        )


def _pydantic_refusal(e: ValidationError, prefix: str) -> Refused:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = str(err["msg"]).removeprefix("Value error, ")
    code = "missing_field" if err["type"] == "missing" else "invalid_field"
    return Refused(400, code, msg, ".".join(p for p in (prefix, loc) if p))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cem_collector_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.messages = Counter(
            "cem_collector_messages",
            "messages received: forwarded, ignored (not mapped) or refused",
            ["outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "cem_collector_ack_seconds",
            "time from a request's arrival to Kafka's acknowledgement of all its messages",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )


class Collector:
    """The HTTP shell around the pure mapping: parse, check, map, validate, produce, answer."""

    def __init__(self, settings: Settings, sources: SourcesConfig) -> None:
        self.settings = settings
        self.c = settings.collector
        self.mapping = sources.segment
        self.topic = settings.kafka.topics.web
        self.booking = settings.kafka.topics.booking
        self.cloudevents = sources.cloudevents
        self.snowplow = sources.snowplow
        self.keys = [(name, key.get_secret_value().encode()) for name, key in self.c.write_keys.items()]
        self.vocabulary = frozenset(settings.rules.field_vocabulary)
        self.max_future = timedelta(hours=settings.worker.max_future_skew_hours)
        self.max_past = timedelta(days=settings.worker.max_past_days)
        self.max_touchpoint_bytes = settings.worker.max_message_bytes
        self.pending = 0  # messages handed to the producer and not yet acknowledged
        self.metrics = Metrics()
        self.producer: AIOKafkaProducer | None = None
        self.dispatcher: Dispatcher | None = None
        self._replacing: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            **aiokafka(self.settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=int(self.c.producer_linger_ms),
            compression_type=None,
            request_timeout_ms=int(self.c.ack_timeout_s * 1000),
            # the dispatcher packs the messages of concurrent requests into one batch per partition
            max_batch_size=256 * 1024,
        )
        await self.producer.start()
        self.dispatcher = Dispatcher(self.producer)
        self.dispatcher.start()

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.c.max_batch_bytes + 1)
        for path, kind in ROUTES.items():
            app.router.add_post(path, self._route(path, kind))
            app.router.add_route("OPTIONS", path, self._preflight)
        app.router.add_post("/cloudevents", self._route("/cloudevents", "cloudevent"))
        app.router.add_post(SNOWPLOW_PATH, self._route(SNOWPLOW_PATH, "snowplow"))
        app.router.add_route("OPTIONS", SNOWPLOW_PATH, self._preflight)
        app.router.add_get("/health", self._health)

        async def _start(_: web.Application) -> None:
            await self.start()

        async def _stop(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(_start)
        app.on_cleanup.append(_stop)
        return app

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": self.producer is not None, "pending": self.pending})

    def _route(self, path: str, kind: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            start = time.monotonic()
            try:
                source = await self.handle(request, kind)
            except Refused as r:
                self.metrics.requests.labels(path, str(r.status)).inc()
                # fields and reasons only: a value can be anyone's email
                log.info("refused %s %s %s%s", path, r.status, r.code, f" at {r.field}" if r.field else "")
                return self._cors(request, r.response())
            self.metrics.requests.labels(path, "200").inc()
            self.metrics.ack_seconds.observe(time.monotonic() - start)
            log.debug("accepted %s from %s", path, source)
            return self._cors(request, web.Response(body=b'{"success":true}', content_type="application/json"))

        return handle

    def _cors(self, request: web.Request, response: web.Response) -> web.Response:
        """Browsers (analytics.js) may read the answer only from the origins allowed."""
        origin = request.headers.get("Origin")
        if origin and (origin in self.c.cors_origins or "*" in self.c.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        response = self._cors(request, web.Response(status=204))
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Content-Encoding"
            response.headers["Access-Control-Max-Age"] = "86400"
        return response

    # -- one request ---------------------------------------------------------------------
    async def handle(self, request: web.Request, kind: str | None) -> str:
        """Forward a request's messages; return the source name. Raise Refused otherwise."""
        source = self._source_of_header(request.headers.get("Authorization"))
        body = await self._body(request)
        if kind == "cloudevent":
            if source is None:
                raise Refused(401, "unauthorized", "HTTP Basic authentication with the write key as user is required")
            event = self.cloudevent(dict(request.headers), body, datetime.now(tz=UTC))
            await self.produce([] if event is None else [event], self.booking)
            return source
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Refused(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise Refused(400, "invalid_json", "the body must be a JSON object")
        if kind == "snowplow":
            if source is None:  # trackers send no key of their own: the write key goes in a header
                raise Refused(401, "unauthorized", "HTTP Basic authentication with the write key as user is required")
            await self.produce(self.prepare_snowplow(obj, datetime.now(tz=UTC)))
            return source
        if source is None:
            # Browsers (analytics.js) send the write key in the body rather than a header.
            source = self._source_of_key(obj.get("writeKey"))
        outgoing = self.prepare(obj, kind, datetime.now(tz=UTC))
        await self.produce(outgoing)
        return source

    def _source_of_header(self, header: str | None) -> str | None:
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            raise Refused(401, "unauthorized", "HTTP Basic authentication with the write key as user is required")
        try:
            user = base64.b64decode(token.strip(), validate=True).partition(b":")[0]
        except (binascii.Error, ValueError):
            raise Refused(401, "unauthorized", "the Authorization header is not valid Basic credentials") from None
        return self._source_of_key(user)

    def _source_of_key(self, key: object) -> str:
        if isinstance(key, str):
            key = key.encode()
        if isinstance(key, bytes) and key:
            found = None
            for name, known in self.keys:  # every key compared, in constant time: no timing oracle
                if hmac.compare_digest(key, known):
                    found = name
            if found is not None:
                return found
        raise Refused(401, "unauthorized", "unknown write key")

    async def _body(self, request: web.Request) -> bytes:
        limit = self.c.max_batch_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, "too_large", f"the body is over the limit of {limit} bytes")
        raw = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            raw += chunk
            if len(raw) > limit:
                raise Refused(413, "too_large", f"the body is over the limit of {limit} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return bytes(raw)
        if encoding != "gzip":
            raise Refused(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")
        return gunzip(bytes(raw), limit)

    def prepare(self, obj: dict[str, Any], kind: str | None, now: datetime) -> list[Outgoing]:
        """Every message of a request checked, mapped and validated as the worker would, or
        Refused for the first one that cannot be. Pure but for the clock passed in."""
        if kind is None:
            try:
                batch = SegmentBatch.model_validate(obj)
            except ValidationError as e:
                raise _pydantic_refusal(e, "") from None
            items = [(f"batch.{i}", m) for i, m in enumerate(batch.batch)]
            shared_context = batch.context
        else:
            given = obj.get("type", kind)
            if given != kind:
                raise Refused(400, "invalid_field", f"this endpoint takes {kind} messages", "type")
            items = [("", {**obj, "type": kind})]
            shared_context = None
        if shared_context:
            items = [(where, raw if "context" in raw else {**raw, "context": shared_context}) for where, raw in items]
        return self._each(
            items, "a message", SegmentMessage, lambda msg: map_message(msg, self.mapping, now), now
        )  # fmt: skip

    def prepare_snowplow(self, obj: dict[str, Any], now: datetime) -> list[Outgoing]:
        """A tp2 request's events checked, mapped and validated, or Refused for the first one
        that cannot be (all or nothing, as a Segment batch)."""
        try:
            payload = SnowplowPayload.model_validate(obj)
        except ValidationError as e:
            raise _pydantic_refusal(e, "") from None
        items = [(f"data.{i}", raw) for i, raw in enumerate(payload.data)]
        return self._each(
            items, "an event", SnowplowEvent, lambda ev: map_snowplow(ev, self.snowplow, self.vocabulary, now), now
        )  # fmt: skip

    def _each(
        self, items: list[tuple[str, Any]], what: str, model: Any, mapping: Callable[[Any], Outcome], now: datetime
    ) -> list[Outgoing]:
        """Each item (where, raw) of a request sized, parsed with `model`, mapped and checked,
        or Refused for the first one that cannot be (all or nothing)."""
        out: list[Outgoing] = []
        ignored = 0
        for where, raw in items:
            if len(orjson.dumps(raw)) > self.c.max_message_bytes:
                limit = self.c.max_message_bytes
                raise Refused(413, "too_large", f"{what} is over the limit of {limit} bytes", where)
            try:
                parsed = model.model_validate(raw)
            except ValidationError as e:
                raise _pydantic_refusal(e, where) from None
            result = mapping(parsed)
            if isinstance(result, Ignored):
                ignored += 1
                continue
            if isinstance(result, Invalid):
                raise Refused(400, "invalid_field", result.detail, _join(where, result.field))
            out.append(self._checked(result, where, now))
        self.metrics.messages.labels("ignored").inc(ignored)
        return out

    def cloudevent(self, headers: dict[str, str], body: bytes, now: datetime) -> Outgoing | None:
        """One CloudEvent (HTTP binding, structured or binary mode) as a booking touchpoint;
        None for a type the mapping does not know (accepted, not forwarded, as in `cem adapt`)."""
        try:
            event = from_http({k.lower(): v for k, v in headers.items()}, body)
        except Exception:  # noqa: BLE001 - the SDK's errors quote the body: none of it goes on
            raise Refused(400, "invalid_cloudevent", "not a CloudEvent in structured or binary mode") from None
        attributes = dict(event.get_attributes())
        result = map_event(attributes, event.data, self.cloudevents)
        if isinstance(result, Ignored):
            self.metrics.messages.labels("ignored").inc()
            return None
        if isinstance(result, Invalid):
            raise Refused(400, "invalid_field", result.detail, result.field)
        return self._checked(result, "", now, "booking")

    def _checked(self, mapped: Mapped, where: str, now: datetime, channel: Channel = "web") -> Outgoing:
        value = orjson.dumps(mapped.value)
        # the worker's own decoder: whatever is forwarded is a touchpoint the worker accepts
        decoded = decode_touchpoint(
            channel,
            value,
            vocabulary=self.vocabulary,
            now=now,
            max_future=self.max_future,
            max_past=self.max_past,
            max_bytes=self.max_touchpoint_bytes,
        )
        if isinstance(decoded, Rejected):
            code = "missing_field" if decoded.reason == "missing_field" else "invalid_field"
            raise Refused(400, code, decoded.detail, _join(where, mapped.source_of(decoded.field)))
        return Outgoing(mapped.key.encode() if mapped.key else None, value)

    async def produce(self, outgoing: list[Outgoing], topic: str | None = None) -> None:
        """Send, and return once Kafka acknowledged every message; Refused(503) otherwise."""
        if not outgoing:
            return
        if self.dispatcher is None:
            self._replace_producer()
            raise Refused(503, "unavailable", "the collector is starting, stopping or reconnecting to Kafka")
        n = len(outgoing)
        if self.pending + n > self.c.max_pending_messages:
            raise Refused(503, "busy", "too many messages are waiting for Kafka; retry later")
        self.pending += n
        try:
            await asyncio.wait_for(self.dispatcher.send(topic or self.topic, outgoing), self.c.ack_timeout_s)
        except (TimeoutError, Exception) as e:  # noqa: BLE001 - every failure to be acknowledged is a 503
            self.metrics.messages.labels("unacknowledged").inc(n)
            log.warning("Kafka did not acknowledge %d message(s): %s", n, type(e).__name__)
            if self.producer_dead():
                self._replace_producer()
            raise Refused(503, "kafka_unavailable", "Kafka did not acknowledge the messages; retry") from None
        finally:
            self.pending -= n
        self.metrics.messages.labels("forwarded").inc(n)

    def producer_dead(self) -> bool:
        """aiokafka's producer is lost for good once its sender task has ended (an
        OutOfOrderSequenceNumber after the broker lost acknowledged data, an unexpected
        error): every later send raises the same error."""
        task = getattr(getattr(self.producer, "_sender", None), "sender_task", None)
        return isinstance(task, asyncio.Future) and task.done()

    def _replace_producer(self) -> None:
        """Replace the producer, in the background, once at a time; requests meanwhile get 503.
        If Kafka is away the attempt fails, and the next request makes another."""
        if self._replacing is not None and not self._replacing.done():
            return

        async def replace() -> None:
            log.warning("starting a new Kafka producer")
            with contextlib.suppress(Exception):
                await self.stop()
            try:
                await self.start()
            except Exception as e:  # noqa: BLE001 - Kafka away: retried by the next request
                log.warning("could not start a Kafka producer: %s", type(e).__name__)
                with contextlib.suppress(Exception):
                    await self.stop()

        self._replacing = asyncio.create_task(replace())


def _join(where: str, field: str) -> str:
    return ".".join(p for p in (where, field) if p)


def gunzip(raw: bytes, limit: int) -> bytes:
    """A gzip body, decompressed to at most `limit` bytes: a small body that expands without
    bound (a decompression bomb) is refused after `limit` bytes of work, not after all of it."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise Refused(413, "too_large", f"the decompressed body is over the limit of {limit} bytes")
        if not d.eof:
            raise Refused(400, "invalid_gzip", "the gzip body is truncated")
    except zlib.error:
        raise Refused(400, "invalid_gzip", "the body is not valid gzip") from None
    return out


async def serve(settings: Settings, sources: SourcesConfig, stop: asyncio.Event) -> None:
    """Run the collector until `stop` is set."""
    collector = Collector(settings, sources)
    c = settings.collector
    if c.metrics_port:
        start_http_server(c.metrics_port, addr="127.0.0.1", registry=collector.metrics.registry)
    # aiohttp would decompress a gzip body itself, unbounded; `gunzip` does it with a limit.
    # No access log: a query string or a referrer can carry anyone's email.
    runner = web.AppRunner(collector.app(), access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, c.host, c.port)
    await site.start()
    # What is loaded by now lives as long as the process: kept out of the garbage collector's
    # full collections, which otherwise paused every request for 20-50 ms a few times a
    # second under load (measured: 18 such pauses in 25 s before, 1 after).
    gc.collect()
    gc.freeze()
    log.info("collecting on http://%s:%d (sources: %s)", c.host, c.port, ", ".join(sorted(c.write_keys)) or "none")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
