"""`cem collect` against clients nobody here wrote: the released Segment and RudderStack Python
SDKs send a customer's journey through the collector, and a worker turns it into exact rows,
resolutions and friction in ClickHouse. Then the broker goes away mid-send."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from pipeline.kafka.admin import Record, producer, read_to_end, send_all, wait_until_processed
from tests.integration.collector_kit import WRITE_KEYS, start_collector
from tests.integration.conftest import ROOT, STACK_ENV, Namespace

FORM = "checkin/passenger-details"
RAW = ("ana.silva@example.com", "li.wen@example.com", "TP-889123", "+351 912 345 678")


def _profiles(ns: Namespace) -> None:
    """Two CRM customers whose profiles already hold the passport number and date of birth."""
    records = []
    for customer, email, tier in (("C-SEG", RAW[0], "gold"), ("C-RUD", RAW[1], "silver")):
        value = {
            "customer_id": customer,
            "version": 1,
            "updated_at": "2026-01-01T00:00:00Z",
            "loyalty_tier": tier,
            "identifiers": {"email": email},
            "known_fields": ["name", "email", "passport_number", "date_of_birth"],
        }
        records.append(Record(ns.settings.kafka.topics.profiles, customer.encode(), json.dumps(value).encode()))
    prod = producer(ns.settings)
    send_all(prod, records)
    prod.close()
    wait_until_processed(ns.settings, timeout_s=120)


def journey(
    client: Any, customer: str, anonymous: str, identify: Callable[[datetime], None], t0: datetime
) -> dict[str, str]:
    """A visit: a page, the visitor signs in (identify), submits the check-in form twice with
    the same fields, then writes to us about their baggage twice, two days apart. Returns the
    messageId of each step."""
    ids: dict[str, str] = {}

    def sent(name: str, result: tuple[bool, dict[str, Any]]) -> None:
        ok, msg = result
        assert ok
        ids[name] = msg["messageId"]

    sent("page", client.page(anonymous_id=anonymous, name="Check-in", properties={"path": "/checkin"}, timestamp=t0))
    identify(t0 + timedelta(minutes=1))
    ids["identify"] = "?"  # filled by the caller's identify
    form = {"form": FORM, "fields": ["passport_number", "date_of_birth"]}
    for i, minute in enumerate((2, 5)):
        sent(
            f"form{i + 1}",
            client.track(
                anonymous_id=anonymous,
                event="Form Submitted",
                properties=form,
                timestamp=t0 + timedelta(minutes=minute),
            ),
        )
    for i, at in enumerate((t0 + timedelta(minutes=10), t0 + timedelta(days=2))):
        sent(
            f"contact{i + 1}",
            client.track(
                user_id=customer,
                anonymous_id=anonymous,
                event="Contact Form Submitted",
                properties={"reason": "Baggage Allowance", "form": "help/contact"},
                timestamp=at,
            ),
        )
    # an event the default mapping does not know: accepted, not forwarded
    sent("ignored", client.track(anonymous_id=anonymous, event="Product Viewed", timestamp=t0 + timedelta(minutes=3)))
    return ids


def _timeline(ns: Namespace) -> dict[str, tuple[str, str, str, list[str], str]]:
    rows = ns.ch().execute(f"SELECT event_id, customer_id, type, resolved_by, friction, contact FROM {ns.db}.timeline")
    out = {}
    for event_id, customer, typ, resolved_by, friction, contact in rows:
        assert event_id not in out, f"{event_id} shows twice"
        out[event_id] = (customer, typ, resolved_by, sorted(friction), contact)
    return out


def expected(
    ids: dict[str, str], customer: str, anon_key: str, login_by: str
) -> dict[str, tuple[str, str, str, list[str], str]]:
    return {
        # before the sign-in the visitor is anonymous; the page stays theirs
        ids["page"]: (anon_key, "page_view", "anonymous", [], ""),
        ids["identify"]: (customer, "login", login_by, [], ""),
        # after it, the anonymous id belongs to the customer, whose CRM already holds both fields
        ids["form1"]: (customer, "form_submit", "anonymous_id", ["re_entry"], ""),
        ids["form2"]: (customer, "form_submit", "anonymous_id", ["re_entry"], ""),
        ids["contact1"]: (customer, "contact_form", "customer_id", [], "new"),
        ids["contact2"]: (customer, "contact_form", "customer_id", ["repeat_contact"], "new"),
    }


def test_sdk_journeys_land_exactly(space: Namespace) -> None:
    space.start_worker()
    _profiles(space)
    collector = start_collector(space)
    t0 = (datetime.now(UTC) - timedelta(days=5)).replace(second=0, microsecond=0)

    # Segment's SDK, batching in its thread as applications run it; identify with a user id
    seg = SegmentClient(WRITE_KEYS["website"], host=collector.url, upload_interval=0.2, max_retries=3)
    seg_identify: dict[str, str] = {}

    def seg_login(at: datetime) -> None:
        ok, msg = seg.identify(user_id="C-SEG", anonymous_id="anon-seg", traits={"email": RAW[0]}, timestamp=at)
        assert ok
        seg_identify["id"] = msg["messageId"]

    seg_ids = journey(seg, "C-SEG", "anon-seg", seg_login, t0)
    seg_ids["identify"] = seg_identify["id"]
    # the same form message again (an SDK retry after a lost answer): counted once
    seg.track(
        anonymous_id="anon-seg",
        event="Form Submitted",
        properties={"form": FORM, "fields": ["passport_number", "date_of_birth"]},
        timestamp=t0 + timedelta(minutes=5),
        message_id=seg_ids["form2"],
    )
    seg.flush()
    seg.shutdown()

    # RudderStack's SDK (gzip bodies; only a 200 is a success to it); identify by email only
    rud = RudderClient(WRITE_KEYS["app"], host=collector.url, upload_interval=0.2, max_retries=3)
    rud_identify: dict[str, str] = {}

    def rud_login(at: datetime) -> None:
        ok, msg = rud.identify(anonymous_id="anon-rud", traits={"email": RAW[1].upper()}, timestamp=at)
        assert ok
        rud_identify["id"] = msg["messageId"]

    rud_ids = journey(rud, "C-RUD", "anon-rud", rud_login, t0)
    rud_ids["identify"] = rud_identify["id"]
    rud.flush()
    rud.shutdown()

    wait_until_processed(space.settings, timeout_s=120)
    timeline = _timeline(space)
    anon = {r[0] for e, r in timeline.items() if e in (seg_ids["page"], rud_ids["page"])}
    assert all(a.startswith("anon:") for a in anon) and len(anon) == 2
    [seg_anon] = [timeline[seg_ids["page"]][0]]
    [rud_anon] = [timeline[rud_ids["page"]][0]]
    want = expected(seg_ids, "C-SEG", seg_anon, "customer_id") | expected(rud_ids, "C-RUD", rud_anon, "email")
    assert timeline == want

    alerts = space.ch().execute(
        f"SELECT kind, customer_id, matter, count, severity, trigger_event_id FROM {space.db}.friction_alerts "
        "WHERE status = 'open'"
    )
    assert sorted(alerts) == sorted(
        [
            ("repeat_contact", "C-SEG", "baggage_allowance", 2, "high", seg_ids["contact2"]),  # gold: high
            ("repeat_contact", "C-RUD", "baggage_allowance", 2, "medium", rud_ids["contact2"]),
        ]
    )
    assert space.stats()["duplicates"] == 1  # the repeated form message
    # on the topic: only touchpoints, with the SDK's messageId as event_id; no unmapped event
    values = [json.loads(r.value) for r in read_to_end(space.settings, space.settings.kafka.topics.web)]
    assert {v["event_id"] for v in values} == set(want)
    assert seg_ids["ignored"] not in {v["event_id"] for v in values}
    # privacy: the collector's log holds no identifier value, ClickHouse neither
    log = collector.log_text()
    assert not [v for v in (*RAW, RAW[1].upper(), "anon-seg", "anon-rud") if v in log]
    dump = json.dumps(space.ch().execute(f"SELECT * FROM {space.db}.timeline_versions"), default=str)
    assert not [v for v in (*RAW, RAW[1].upper()) if v in dump]


def _stack(action: str) -> None:
    import os

    subprocess.run([str(ROOT / "scripts" / "stack.sh"), action], env={**os.environ, **STACK_ENV}, check=True)


def test_broker_away_mid_send_every_event_once(space: Namespace) -> None:
    """The broker stops while an SDK sends: the collector answers 503, the SDK retries, and once
    the broker is back every event is in ClickHouse once."""
    collector = start_collector(space, ack_timeout_s=2.0)
    client = SegmentClient(
        WRITE_KEYS["website"], host=collector.url, upload_interval=0.05, upload_size=20, max_retries=12
    )
    t0 = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    sent: list[str] = []
    stop_at, total = 200, 600

    def feed() -> None:
        for i in range(total):
            if i == stop_at:
                time.sleep(0.5)  # let the first batches land before the broker goes
            ok, msg = client.page(
                anonymous_id=f"v-{i % 37}",
                name="Home",
                properties={"path": f"/p/{i}"},
                timestamp=t0 + timedelta(seconds=i),
            )
            assert ok
            sent.append(msg["messageId"])
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    while len(sent) < stop_at:
        time.sleep(0.05)
    _stack("kafka-stop")
    time.sleep(6)
    _stack("kafka-start")
    feeder.join()
    client.flush()
    client.shutdown()
    assert collector.proc.poll() is None, "the collector died with the broker"
    assert "refused /v1/batch 503 kafka_unavailable" in collector.log_text(), collector.log_text()[-3000:]

    space.start_worker()
    wait_until_processed(space.settings, timeout_s=180)
    rows = space.ch().execute(f"SELECT event_id, count() FROM {space.db}.timeline GROUP BY event_id")
    assert len(sent) == total
    assert dict(rows) == dict.fromkeys(sent, 1)


def test_snowplow_tracker_journey_lands_exactly(space: Namespace) -> None:
    """The released Snowplow Python tracker, posting tp2 to the collector with the write key on
    its HTTP session: a page, a sign-in, Snowplow's own submit_form twice, two contact forms."""
    import requests
    from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker
    from snowplow_tracker.events import PageView, SelfDescribing, StructuredEvent

    space.start_worker()
    _profiles(space)
    collector = start_collector(space)
    session = requests.Session()
    session.auth = (WRITE_KEYS["website"], "")
    emitter = Emitter("127.0.0.1", protocol="http", port=collector.port, batch_size=20, session=session)
    tracker = Tracker("cem-test", emitter, app_id="web")
    t0 = (datetime.now(UTC) - timedelta(days=5)).replace(second=0, microsecond=0)

    def at(**delta: float) -> float:
        return (t0 + timedelta(**delta)).timestamp() * 1000

    visitor = Subject().set_domain_user_id("sp-visitor")
    member = Subject().set_domain_user_id("sp-visitor").set_user_id("C-SEG")
    form = SelfDescribingJson(
        "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
        {
            "formId": FORM,
            "elements": [
                {"name": "passport_number", "value": "P1234567", "nodeName": "INPUT"},
                {"name": "date_of_birth", "value": "1990-01-01", "nodeName": "INPUT"},
                {"name": "submit", "value": "Next", "nodeName": "BUTTON"},
            ],
        },
    )
    ids = {
        "page": tracker.track(
            PageView(page_url="https://air.example/checkin", event_subject=visitor, true_timestamp=at())
        ),
        "identify": tracker.track(
            StructuredEvent("auth", "Signed In", event_subject=member, true_timestamp=at(minutes=1))
        ),
        "form1": tracker.track(SelfDescribing(form, event_subject=visitor, true_timestamp=at(minutes=2))),
        "form2": tracker.track(SelfDescribing(form, event_subject=visitor, true_timestamp=at(minutes=5))),
        "contact1": tracker.track(
            StructuredEvent("help", "Contact Form Submitted", label="Baggage Allowance", event_subject=member,
                            true_timestamp=at(minutes=10))
        ),
        "contact2": tracker.track(
            StructuredEvent("help", "Contact Form Submitted", label="Baggage Allowance", event_subject=member,
                            true_timestamp=at(days=2))
        ),
    }  # fmt: skip
    tracker.flush()
    assert "refused" not in collector.log_text(), collector.log_text()[-2000:]

    wait_until_processed(space.settings, timeout_s=120)
    timeline = _timeline(space)
    anon = timeline[ids["page"]][0]
    assert anon.startswith("anon:")
    assert timeline == expected(ids, "C-SEG", anon, "customer_id")
    assert "P1234567" not in collector.log_text()
    values = [r.value for r in read_to_end(space.settings, space.settings.kafka.topics.web)]
    assert not [v for v in values if b"P1234567" in v or b"1990-01-01" in v]  # element values never read
