"""The worked example end to end on the real Kafka broker and ClickHouse server: exact results."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.kafka.admin import Record, producer, read_jsonl, send_all, wait_until_processed
from pipeline.kafka.admin import read_to_end as read_topic
from schemas.alert import FrictionAlert
from tests.integration.conftest import Namespace
from tests.scenario import STORY, load_expected

EXPECTED = load_expected()
RAW_VALUES = ("ana.silva", "Ana.Silva", "example.com", "912 345", "912345678", "TP-889123", "TP-100200", "li.wen")


def _timeline(ns: Namespace) -> dict[str, dict[str, Any]]:
    rows = ns.ch().execute(f"SELECT event_id, customer_id, friction, resolved_by, _topic FROM {ns.db}.timeline")
    by_event: dict[str, dict[str, Any]] = {}
    for event_id, customer, friction, resolved_by, topic in rows:
        assert event_id not in by_event, f"{event_id} shows twice"
        by_event[event_id] = {"customer_id": customer, "friction": list(friction), "resolved_by": resolved_by}
        assert topic.startswith("t")  # provenance: the namespaced source topic
    return by_event


def _alerts(ns: Namespace) -> list[dict[str, Any]]:
    cols = (
        "alert_id, status, kind, customer_id, matter, field, count, severity, known_in_crm, evidence, summary, "
        "trigger_event_id"
    )
    rows = ns.ch().execute(f"SELECT {cols} FROM {ns.db}.friction_alerts")
    names = [c.strip() for c in cols.split(",")]
    return [dict(zip(names, r, strict=True)) for r in rows]


def _key(a: dict[str, Any]) -> tuple[Any, ...]:
    subject = a.get("matter") or a.get("field")
    trigger = a["trigger_event_id"] if "trigger_event_id" in a else a["trigger"]
    return (a["kind"], a["customer_id"], subject, a["count"], a["severity"], trigger)


def check_expected(ns: Namespace) -> list[dict[str, Any]]:
    timeline = _timeline(ns)
    assert len(timeline) == EXPECTED["timeline_rows"]
    assert Counter(r["customer_id"] for r in timeline.values()) == EXPECTED["timeline_rows_by_customer"]
    assert {e: r["friction"] for e, r in timeline.items()} == EXPECTED["timeline_flags"]
    for event_id, how in EXPECTED["resolved_by"].items():
        assert timeline[event_id]["resolved_by"] == how
    alerts = _alerts(ns)
    opened = [a for a in alerts if a["status"] == "open"]
    assert Counter(_key(a) for a in opened) == Counter(_key(a) for a in EXPECTED["alerts"])
    for want in EXPECTED["alerts"]:
        if "known_in_crm" in want:
            [got] = [a for a in opened if a["field"] == want["field"]]
            assert bool(got["known_in_crm"]) == want["known_in_crm"]
    # what analysts read shows each alert once
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    return alerts


def published_alerts(ns: Namespace) -> dict[str, FrictionAlert]:
    latest: dict[str, FrictionAlert] = {}
    for rec in read_topic(ns.settings, ns.settings.kafka.topics.alerts):
        alert = FrictionAlert.model_validate_json(rec.value)
        assert rec.key == alert.customer_id.encode()  # keyed by customer
        if alert.alert_id not in latest or alert.revision > latest[alert.alert_id].revision:
            latest[alert.alert_id] = alert
    return latest


def test_airline_story_end_to_end(ns: Namespace) -> None:
    result = ns.cem("produce", str(STORY), "--wait-profiles", check=False)
    assert result.returncode == 0 and "produced 10 message(s)" in result.stdout, result.stderr[-3000:]
    wait_until_processed(ns.settings, timeout_s=120)

    alerts = check_expected(ns)
    # The three topics are read concurrently, so even file order may reach the judge a little
    # out of order: a retraction is allowed, but never of an alert that should be open.
    open_ids = {a["alert_id"] for a in alerts if a["status"] == "open"}
    on_topic = published_alerts(ns)
    assert {a["alert_id"] for a in alerts} == set(on_topic)
    assert {i for i, a in on_topic.items() if a.status == "open"} == open_ids
    for a in on_topic.values():  # every alert says what the customer already told us
        assert a.context.fields_given or a.context.previous_contacts, a.alert_id
        if a.kind == "repeat_contact":
            assert {c.matter for c in a.context.previous_contacts} == {a.matter}

    stats = ns.stats()
    assert stats["duplicates"] == 1 and stats["profiles"] == {"held": 2}
    assert stats["events_in"][ns.settings.kafka.topics.callcenter] == 6

    timeline = ns.cem("timeline", "C-1042").stdout
    assert timeline.count("REPEAT CONTACT") == 2 and "RE-ENTERED" in timeline and "w-3 (by email)" in timeline

    # privacy: no raw identifier value in ClickHouse, on the alerts topic, or on the internal topic
    ch = ns.ch()
    for table in ("timeline_versions", "friction_alert_versions"):
        dump = json.dumps(ch.execute(f"SELECT * FROM {ns.db}.{table}"), default=str)
        assert not [v for v in RAW_VALUES if v in dump], table
    for topic in (ns.settings.kafka.topics.alerts, ns.settings.kafka.topics.by_customer):
        blob = b"".join(r.value or b"" for r in read_topic(ns.settings, topic)).decode()
        assert not [v for v in RAW_VALUES if v in blob], topic


def test_airline_story_in_a_shuffled_late_order(ns: Namespace) -> None:
    """Touchpoints arrive shuffled and in waves, so the judge sees them out of event-time order:
    c-3 (which continues c-2) comes before c-2, and w-1 (the first event) comes last."""
    records = list(read_jsonl(Path(STORY), ns.settings))
    profiles = [r for r in records if r.topic == ns.settings.kafka.topics.profiles]
    touches = [r for r in records if r.topic != ns.settings.kafka.topics.profiles]

    def held_back(event_id: str) -> list[Record]:
        return [r for r in touches if json.loads(r.value or b"{}")["event_id"] == event_id]

    first_wave = [r for r in touches if r not in held_back("c-2") + held_back("w-1")]
    random.Random(42).shuffle(first_wave)
    prod = producer(ns.settings)
    send_all(prod, profiles)
    wait_until_processed(ns.settings, timeout_s=120)
    for wave in (first_wave, held_back("c-2"), held_back("w-1")):
        send_all(prod, wave)
        wait_until_processed(ns.settings, timeout_s=120)
    prod.close()

    alerts = check_expected(ns)
    open_ids = {a["alert_id"] for a in alerts if a["status"] == "open"}
    on_topic = published_alerts(ns)
    assert {i for i, a in on_topic.items() if a.status == "open"} == open_ids
    # c-3 looked like a new contact until c-2 arrived: its alert was published, then retracted
    retracted = [a for a in alerts if a["status"] == "retracted"]
    assert [(a["kind"], a["trigger_event_id"]) for a in retracted] == [("repeat_contact", "c-3")]
    assert on_topic[retracted[0]["alert_id"]].status == "retracted"
    # w-1 arrived last: rows already written were rewritten with new flags
    assert ns.stats()["row_rewrites"] > 0
