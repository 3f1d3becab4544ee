"""The collector's checks without a broker: mapping, validation, limits, auth, gzip."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.settings import load_settings
from pipeline.sources.collector import Collector, Refused, gunzip
from pipeline.sources.settings import DEFAULT_SOURCES_CONFIG, SourcesConfig, load_sources_config
from processors.sources.common import Ignored, Invalid, Mapped
from processors.sources.segment import SegmentMapping, map_message
from schemas.segment import SegmentMessage
from schemas.touchpoints import WebEvent

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
KEY = "wk-website-0123456789"


@pytest.fixture
def collector() -> Collector:
    return Collector(load_settings(collector={"write_keys": {"website": KEY}}), SourcesConfig())


def msg(**kw: Any) -> dict[str, Any]:
    base = {
        "type": "track",
        "event": "Searched",
        "messageId": "m-1",
        "anonymousId": "a-1",
        "timestamp": "2026-12-05T10:00:00Z",
    }
    return base | kw


def refusal(collector: Collector, body: dict[str, Any], kind: str | None = None) -> tuple[int, str, str]:
    with pytest.raises(Refused) as e:
        collector.prepare(body, kind, NOW)
    return e.value.status, e.value.code, e.value.field


def test_the_shipped_sources_file_is_the_documented_defaults() -> None:
    assert load_sources_config(DEFAULT_SOURCES_CONFIG) == SourcesConfig()


def test_a_form_becomes_a_form_submit_with_its_entered_fields() -> None:
    m = SegmentMessage.model_validate(
        msg(event="form_submitted", properties={"formId": "checkin/passenger-details", "fields": ["passport_number"]})
    )
    out = map_message(m, SegmentMapping(), NOW)
    assert isinstance(out, Mapped)
    event = WebEvent.model_validate_json(orjson.dumps(out.value))
    assert (event.type, event.form, event.fields, event.event_id) == (
        "form_submit",
        "checkin/passenger-details",
        ["passport_number"],
        "m-1",
    )
    assert event.identifiers is not None and event.identifiers.anonymous_id == "a-1"
    assert out.key == "a-1" and out.source_of("fields.0") == "properties.fields.0"


def test_identify_is_a_login_linking_the_anonymous_id() -> None:
    m = SegmentMessage.model_validate(
        msg(type="identify", userId=42, traits={"email": "x@example.com"}, context={"traits": {"loyaltyId": "L-1"}})
    )
    out = map_message(m, SegmentMapping(), NOW)
    assert isinstance(out, Mapped)
    assert out.value["type"] == "login" and out.value["customer_id"] == "42"
    assert out.value["identifiers"] == {"anonymous_id": "a-1", "email": "x@example.com", "loyalty_id": "L-1"}


def test_alias_takes_previous_id_as_the_anonymous_id() -> None:
    m = SegmentMessage.model_validate({"type": "alias", "messageId": "m", "previousId": "p-1", "userId": "C-1"})
    out = map_message(m, SegmentMapping(), NOW)
    assert isinstance(out, Mapped)
    assert out.value["identifiers"] == {"anonymous_id": "p-1"} and out.value["occurred_at"] == NOW.isoformat()


def test_unmapped_events_are_ignored_and_the_mapping_is_configurable() -> None:
    m = SegmentMessage.model_validate(msg(event="Product Viewed"))
    assert isinstance(map_message(m, SegmentMapping(), NOW), Ignored)
    custom = SegmentMapping(track={"Product Viewed": "page_view"}, group=None)
    out = map_message(m, custom, NOW)
    assert isinstance(out, Mapped) and out.value["type"] == "page_view"
    g = SegmentMessage.model_validate(msg(type="group"))
    assert isinstance(map_message(g, custom, NOW), Ignored)
    nameless = SegmentMessage.model_validate(msg(event=None))
    assert map_message(nameless, custom, NOW) == Invalid("event", "a track message needs its event name")


def test_a_batch_is_all_or_nothing_and_400_names_the_field(collector: Collector) -> None:
    good = msg(type="page", properties={"path": "/"})
    cases = {
        "batch.1.properties.form": msg(event="Form Submitted"),
        "batch.1.properties.fields.1": msg(
            event="Form Submitted", properties={"form": "f", "fields": ["email", "ssn"]}
        ),
        "batch.1.anonymousId": msg(anonymousId=["a"]),
        "batch.1.timestamp": msg(timestamp=1700000000),
        "batch.1.traits.email": msg(type="identify", traits={"email": 5}),
        "batch.1.userId": msg(anonymousId=None),
        "batch.1.messageId": msg(messageId="x" * 200),
        "batch.1.type": msg(type="purchase"),
        "batch.1.properties": msg(properties=[1]),
    }
    for field, bad in cases.items():
        status, _, named = refusal(collector, {"batch": [good, bad]})
        assert (status, named) == (400, field)
    assert refusal(collector, {"batch": [good, {k: v for k, v in good.items() if k != "messageId"}]}) == (
        400,
        "missing_field",
        "batch.1.messageId",
    )
    assert refusal(collector, {"batch": "x"})[2] == "batch"
    # a timestamp beyond the allowed clock skew would be a dead letter in the worker: refused here
    assert refusal(collector, {"batch": [msg(timestamp="2036-01-01T00:00:00Z")]})[2] == "batch.0.timestamp"


def test_single_endpoints_take_their_own_type(collector: Collector) -> None:
    body = msg(event="Signed In", userId="C-1")
    [out] = collector.prepare({k: v for k, v in body.items() if k != "type"}, "track", NOW)
    assert b'"type":"login"' in out.value
    assert refusal(collector, msg(type="page"), "track") == (400, "invalid_field", "type")


def test_size_limits(collector: Collector) -> None:
    big = msg(type="page", properties={"path": "/", "blob": "x" * 40_000})
    assert refusal(collector, {"batch": [msg(type="page"), big]}) == (413, "too_large", "batch.1")


def test_gzip_bomb_is_refused_after_the_limit() -> None:
    bomb = gzip.compress(b" " * 50_000_000)  # 50 MB of spaces in about 50 KB
    assert len(bomb) < 100_000
    with pytest.raises(Refused) as e:
        gunzip(bomb, 500 * 1024)
    assert e.value.status == 413
    assert gunzip(gzip.compress(b'{"a": 1}'), 1024) == b'{"a": 1}'
    for broken in (b"not gzip", gzip.compress(b"{}" * 100)[:-12]):
        with pytest.raises(Refused) as e:
            gunzip(broken, 1024)
        assert (e.value.status, e.value.code) == (400, "invalid_gzip")


def test_write_keys(collector: Collector) -> None:
    import base64

    def basic(user: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:".encode()).decode()

    assert collector._source_of_header(basic(KEY)) == "website"
    assert collector._source_of_key(KEY) == "website"
    for header in (basic("wrong-key-0123456789"), basic(""), "Bearer " + KEY, "Basic %%%"):
        with pytest.raises(Refused) as e:
            collector._source_of_header(header)
        assert e.value.status == 401 and KEY not in e.value.message
    with pytest.raises(Refused):
        collector._source_of_key(None)


def test_short_write_keys_are_refused_by_the_settings() -> None:
    from pipeline.settings import ConfigError

    with pytest.raises(ConfigError, match="collector.write_keys"):
        load_settings(collector={"write_keys": {"website": "short"}})


def test_503_when_too_many_messages_wait_and_a_dead_producer_is_replaced() -> None:
    import asyncio

    from pipeline.sources.batching import Outgoing

    settings = load_settings(collector={"write_keys": {"website": KEY}, "max_pending_messages": 100})
    c = Collector(settings, SourcesConfig())
    starts: list[str] = []

    class DeadSender:
        def __init__(self) -> None:
            loop = asyncio.get_running_loop()
            self.sender_task: asyncio.Future[None] = loop.create_future()
            self.sender_task.set_exception(RuntimeError("OutOfOrderSequenceNumber"))
            self.sender_task.exception()  # retrieved: no warning at exit

    class DeadProducer:
        def __init__(self) -> None:
            self._sender = DeadSender()

        async def stop(self) -> None:
            starts.append("stopped")

    class FailingDispatcher:
        async def send(self, topic: str, messages: list[Outgoing]) -> None:
            raise RuntimeError("OutOfOrderSequenceNumber")

        async def stop(self) -> None:
            pass

    async def fake_start() -> None:
        starts.append("started")

    async def main() -> None:
        c.dispatcher = FailingDispatcher()  # type: ignore[assignment]
        c.pending = 60
        with pytest.raises(Refused) as e:
            await c.produce([Outgoing(b"k", b"{}")] * 50)
        assert (e.value.status, e.value.code) == (503, "busy")
        c.pending = 0
        c.producer = DeadProducer()  # type: ignore[assignment]
        c.start = fake_start  # type: ignore[method-assign]
        assert c.producer_dead()
        with pytest.raises(Refused) as e:
            await c.produce([Outgoing(b"k", b"{}")])
        assert (e.value.status, e.value.code) == (503, "kafka_unavailable")
        assert c._replacing is not None
        await c._replacing
        assert starts == ["stopped", "started"] and c.pending == 0

    asyncio.run(main())


def _snowplow(**kw: Any) -> dict[str, Any]:
    base = {"e": "pv", "eid": "e-1", "dtm": "1764936000000", "duid": "d-1", "url": "https://x.example/checkin?q=1"}
    return base | kw


def test_snowplow_events_as_web_touchpoints(collector: Collector) -> None:
    import base64
    import json

    form = {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {
            "schema": "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
            "data": {
                "formId": "checkin/passenger-details",
                "elements": [
                    {"name": "passport_number", "value": "P-123", "nodeName": "INPUT"},
                    {"name": "csrf_token", "value": "t", "nodeName": "INPUT"},
                ],
            },
        },
    }
    px = base64.urlsafe_b64encode(json.dumps(form).encode()).decode().rstrip("=")
    body = {
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [
            _snowplow(),
            _snowplow(e="se", eid="e-2", se_ca="auth", se_ac="Signed In", uid="C-1"),
            _snowplow(e="ue", eid="e-3", ue_px=px, ttm="1764936060000"),
            _snowplow(e="pp", eid="e-4"),  # a page ping: not mapped
        ],
    }
    out = [orjson.loads(o.value) for o in collector.prepare_snowplow(body, NOW)]
    assert [(v["event_id"], v["type"]) for v in out] == [("e-1", "page_view"), ("e-2", "login"), ("e-3", "form_submit")]
    assert out[0]["page"] == "/checkin" and out[0]["occurred_at"] == "2025-12-05T12:00:00+00:00"
    assert out[1]["customer_id"] == "C-1" and out[1]["identifiers"] == {"anonymous_id": "d-1"}
    assert out[2]["form"] == "checkin/passenger-details" and out[2]["fields"] == ["passport_number"]
    assert out[2]["occurred_at"] == "2025-12-05T12:01:00+00:00"  # the true time wins
    assert "P-123" not in json.dumps(out)  # element values never read
    bad = {
        "data.0.eid": _snowplow(eid=5),
        "data.0.dtm": _snowplow(dtm="yesterday"),
        "data.0.uid": _snowplow(duid=None),
        "data.0.ue_px": _snowplow(e="ue", ue_px="%%%"),
        "data.0.se_la": _snowplow(e="se", se_ac="Form Submitted"),  # a form_submit without its form
    }
    for field, event in bad.items():
        status, _, named = refusal_sp(collector, {"schema": "s", "data": [event]})
        assert (status, named) == (400, field)


def refusal_sp(collector: Collector, body: dict[str, Any]) -> tuple[int, str, str]:
    with pytest.raises(Refused) as e:
        collector.prepare_snowplow(body, NOW)
    return e.value.status, e.value.code, e.value.field
