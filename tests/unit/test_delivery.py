"""Routing, config validation, the delivery ledger's decisions and offset tracking (pure)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from pipeline.settings import ConfigError
from schemas.alert import FrictionAlert
from sinks.delivery.config import DEFAULT_ALERTS_CONFIG, Match, WebhookDestination, load_alerts_config
from sinks.delivery.ledger import Decision, Ledger
from sinks.delivery.service import OffsetTracker, render

EXAMPLE = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "friction_alert.json"


def alert(**changes: Any) -> FrictionAlert:
    base = FrictionAlert.model_validate_json(EXAMPLE.read_bytes())
    return base.model_copy(update=changes)


def test_match_criteria() -> None:
    a = alert()  # repeat_contact, high, gold, baggage_allowance, channels call_center+web, C-1042
    assert Match().matches(a)
    assert Match(kind=["repeat_contact"], min_severity="high", tier=["Gold"], matter=["BAGGAGE_ALLOWANCE"]).matches(a)
    assert Match(min_severity="medium").matches(a)
    assert not Match(min_severity="high").matches(alert(severity="medium"))
    assert not Match(kind=["re_entry"]).matches(a)
    assert Match(channel=["web", "booking"]).matches(a) and not Match(channel=["booking"]).matches(a)
    assert not Match(customer=["C-1"]).matches(a)
    assert Match(matter=["passport_number"]).matches(alert(kind="re_entry", matter=None, field="passport_number"))


def test_shipped_alerts_config_is_valid() -> None:
    cfg = load_alerts_config(DEFAULT_ALERTS_CONFIG)
    assert cfg.routes and cfg.delivery.cooldown_minutes == 60


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("routes:\n  - name: a\n    to: [{type: webhook}]\n", "routes.0.to.0.webhook.url"),
        (
            "routes:\n  - name: a\n    match: {min_severity: urgent}\n    to: [{type: log}]\n",
            "routes.0.match.min_severity",
        ),
        ("routes:\n  - name: a\n    mach: {}\n    to: [{type: log}]\n", "routes.0.mach"),
        ("routes:\n  - name: a\n    to: []\n", "routes.0.to"),
        ("routes:\n  - name: a\n    to: [{type: pager}]\n", "routes.0.to.0"),
        ("delivery: {cooldown_minutes: -1}\n", "delivery.cooldown_minutes"),
        ("routes:\n  - {name: a, to: [{type: log}]}\n  - {name: a, to: [{type: log}]}\n", "routes"),
    ],
)
def test_bad_alerts_config_names_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_alerts_config(path)
    assert f"  {key}" in str(e.value), str(e.value)


def test_ledger_dedupes_per_destination_and_retracts_only_what_went_out() -> None:
    ledger = Ledger()
    a1 = alert(alert_id="a1")
    assert ledger.decide("r", "d1", a1, 60) is Decision.DELIVER
    ledger.let_through("r", a1)
    assert ledger.decide("r", "d2", a1, 60) is Decision.DELIVER  # the route's other destination
    ledger.record("r", "d1", a1, "open")
    assert ledger.decide("r", "d1", a1, 60) is Decision.ALREADY_DELIVERED
    assert ledger.decide("r", "d1", alert(alert_id="a1", revision=2), 60) is Decision.ALREADY_DELIVERED
    gone = alert(alert_id="a1", status="retracted", revision=3)
    assert ledger.decide("r", "d1", gone, 60) is Decision.DELIVER
    ledger.record("r", "d1", gone, "retracted")
    assert ledger.decide("r", "d1", gone, 60) is Decision.NOTHING_TO_RETRACT
    assert ledger.decide("r", "d1", alert(alert_id="a1", revision=4), 60) is Decision.DELIVER  # reopened


def test_cooldown_per_route_customer_and_subject_survives_a_restart() -> None:
    ledger = Ledger()
    first = alert(alert_id="a1")
    ledger.let_through("r", first)
    records = [ledger.record("r", "d", first, "open")]
    soon = alert(alert_id="a2", occurred_at=first.occurred_at + timedelta(minutes=59))
    later = alert(alert_id="a3", occurred_at=first.occurred_at + timedelta(minutes=61))
    assert ledger.decide("r", "d", soon, 60) is Decision.COOLDOWN
    records.append(ledger.record("r", "d", soon, "suppressed"))
    assert ledger.decide("other-route", "d9", soon, 60) is Decision.DELIVER
    assert ledger.decide("r", "d", alert(alert_id="a4", matter="refund"), 60) is Decision.DELIVER
    assert ledger.decide("r", "d", later, 60) is Decision.DELIVER
    assert ledger.decide("r", "d", soon.model_copy(update={"status": "retracted"}), 60) is Decision.NOTHING_TO_RETRACT
    assert ledger.decide("r", "d", soon, 0) is Decision.COOLDOWN  # once suppressed, stays suppressed

    restarted = Ledger()
    for rec in json.loads(json.dumps(records)):  # as read back from the ledger topic
        restarted.apply(rec)
    assert restarted.decide("r", "d", first, 60) is Decision.ALREADY_DELIVERED
    assert restarted.decide("r", "d", soon, 60) is Decision.COOLDOWN
    assert restarted.decide("r", "d", alert(alert_id="a5", occurred_at=soon.occurred_at), 60) is Decision.COOLDOWN


def test_offsets_wait_for_the_slowest_destination() -> None:
    tp = TopicPartition("t", 0)
    tracker = OffsetTracker()
    tracker.add(tp, 10, 2)
    tracker.add(tp, 11, 0)
    tracker.add(tp, 12, 1)
    assert tracker.committable() == {tp: 10}
    tracker.done(tp, 10)
    tracker.done(tp, 12)
    assert tracker.committable() == {tp: 10}
    tracker.done(tp, 10)
    assert tracker.committable() == {tp: 13}


def test_slack_and_json_bodies() -> None:
    slack = WebhookDestination(type="webhook", url="http://x/", format="slack")
    body = json.loads(render(slack, alert()))
    assert set(body) == {"text"} and "contacted us 3 times" in body["text"]
    assert "RETRACTED" in json.loads(render(slack, alert(status="retracted")))["text"]
    plain = WebhookDestination(type="webhook", url="http://x/")
    assert FrictionAlert.model_validate_json(render(plain, alert())) == alert()
