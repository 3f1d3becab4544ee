"""Routing, config validation, the delivery ledger's decisions and bounds, offset tracking,
webhook signatures, secrets, redirects and retry caps (no broker, no network)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ops.delivery import DeliveryService, Job, OffsetTracker, Rejected, redact, redirect_reason, render
from pipeline.settings import ConfigError, Settings
from schemas.alert import FrictionAlert
from sinks.delivery.config import (
    DEFAULT_ALERTS_CONFIG,
    AlertsConfig,
    DeliverySettings,
    Match,
    WebhookDestination,
    load_alerts_config,
)
from sinks.delivery.ledger import DAY_US, Decision, Ledger
from sinks.delivery.retry import RetryPolicy
from sinks.delivery.signing import sign, signature_headers
from tests.doc_snippets import verify_cem_signature

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
    slack = WebhookDestination(type="webhook", url="http://x/", format="slack", unsigned=True)
    body = json.loads(render(slack, alert()))
    assert set(body) == {"text"} and "contacted us 3 times" in body["text"]
    assert "RETRACTED" in json.loads(render(slack, alert(status="retracted")))["text"]
    plain = WebhookDestination(type="webhook", url="http://x/", unsigned=True)
    assert FrictionAlert.model_validate_json(render(plain, alert())) == alert()


# ---------------------------------------------------------------- signatures

SECRET = b"whsec-test-0123456789"
VERIFY = verify_cem_signature()  # the code docs/security.md gives to receivers


def test_signature_wire_format() -> None:
    # computed independently: printf '%s.%s' 1700000000 '{"alert_id":"a1"}' | openssl dgst -sha256 -hmac ...
    expected = "v1=297573b1c17a0a937b69b963e90cb287517a5fc7f065ffce4297eb5f7b9a78d7"
    assert sign(SECRET, 1_700_000_000, b'{"alert_id":"a1"}') == expected
    assert signature_headers(SECRET, 1_700_000_000, b'{"alert_id":"a1"}') == {
        "X-CEM-Timestamp": "1700000000",
        "X-CEM-Signature": expected,
    }


def test_the_documented_verification_accepts_ours_and_refuses_the_rest() -> None:
    body, ts = b'{"alert_id":"a1","status":"open"}', 1_700_000_000
    good = sign(SECRET, ts, body)
    assert VERIFY(SECRET, body, str(ts), good, now=ts + 10)
    assert VERIFY(SECRET, body, str(ts), f"v0=abc, {good}", now=ts)  # other schemes are skipped
    assert not VERIFY(SECRET, body + b" ", str(ts), good, now=ts)  # body changed
    assert not VERIFY(b"another-secret-0123456", body, str(ts), good, now=ts)
    assert not VERIFY(SECRET, body, str(ts + 1), good, now=ts)  # timestamp changed
    assert not VERIFY(SECRET, body, str(ts), good, now=ts + 301)  # a replay, 5 minutes on
    assert not VERIFY(SECRET, body, str(ts), good, now=ts - 301)
    assert not VERIFY(SECRET, body, "", good, now=ts)
    assert not VERIFY(SECRET, body, "1e9", good, now=ts)
    assert not VERIFY(SECRET, body, "１７００", good, now=ts)  # non-ASCII digits
    assert not VERIFY(SECRET, body, str(ts), good.replace("v1=", "v2="), now=ts)
    assert not VERIFY(SECRET, body, str(ts), "", now=ts)
    assert not VERIFY(SECRET, body, str(ts), "v1=é", now=ts)


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=16, max_size=64),
    body=st.binary(max_size=2000),
    ts=st.integers(min_value=0, max_value=4_000_000_000),
    flip=st.integers(min_value=0),
)
def test_signing_and_the_documented_verification_agree(secret: bytes, body: bytes, ts: int, flip: int) -> None:
    signature = sign(secret, ts, body)
    assert VERIFY(secret, body, str(ts), signature, now=ts)
    if body:  # any one byte changed breaks it
        i = flip % len(body)
        assert not VERIFY(secret, body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :], str(ts), signature, now=ts)


# ---------------------------------------------------------------- secrets in the routing file

ENV = {"HOOK_SECRET": "s3cret-signing-key-0123", "HOOK_AUTH": "Bearer tok-9f8e7d6c5b4a"}


def load(tmp_path: Path, dest: dict[str, Any], environ: dict[str, str] | None = None) -> AlertsConfig:
    path = tmp_path / "alerts.yaml"
    webhook = {"type": "webhook", "url": "http://x/", **dest}
    path.write_text(yaml.safe_dump({"routes": [{"name": "a", "to": [webhook]}]}))
    return load_alerts_config(path, ENV if environ is None else environ)


def test_webhook_secrets_come_from_the_environment_and_never_show(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"secret_env": "HOOK_SECRET", "headers_from_env": {"Authorization": "HOOK_AUTH"}})
    dest = cfg.routes[0].to[0]
    assert isinstance(dest, WebhookDestination)
    assert dest.signing_secret() == ENV["HOOK_SECRET"].encode()
    assert dest.request_headers() == {"Authorization": ENV["HOOK_AUTH"]}
    assert sorted(dest.secret_values()) == sorted(ENV.values())
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json(), json.dumps(cfg.model_dump(mode="json"))):
        assert not any(v in shown for v in ENV.values()), shown
    assert "HOOK_SECRET" in cfg.model_dump_json()  # the variable's name is not a secret


@pytest.mark.parametrize(
    ("dest", "key", "says"),
    [
        ({}, "routes.0.to.0.webhook.secret_env", "unsigned: true"),
        ({"secret_env": "NOT_SET"}, "routes.0.to.0.webhook.secret_env", "NOT_SET is not set"),
        ({"secret_env": "SHORT"}, "routes.0.to.0.webhook.secret_env", "fewer than 16"),
        ({"secret_env": "HOOK_SECRET", "unsigned": True}, "routes.0.to.0.webhook.secret_env", "unsigned"),
        ({"unsigned": True, "headers": {"Authorization": "Bearer x"}}, "routes.0.to.0.webhook.headers", "env"),
        ({"unsigned": True, "headers": {"x-cem-signature": "v1=0"}}, "routes.0.to.0.webhook.headers", "set by cem"),
        (
            {"unsigned": True, "headers_from_env": {"Authorization": "NOT_SET"}},
            "routes.0.to.0.webhook.headers_from_env",
            "NOT_SET is not set",
        ),
        (
            {"unsigned": True, "headers_from_env": {"X-Key": "MULTILINE"}},
            "routes.0.to.0.webhook.headers_from_env",
            "line break",
        ),
        (
            {"unsigned": True, "headers": {"X-Key": "a"}, "headers_from_env": {"x-key": "HOOK_AUTH"}},
            "routes.0.to.0.webhook.headers_from_env",
            "also in headers",
        ),
        ({"unsigned": True, "secret": "in-clear-0123456789"}, "routes.0.to.0.webhook.secret", "Extra inputs"),
    ],
)
def test_webhook_secret_errors_name_the_key_never_the_value(
    tmp_path: Path, dest: dict[str, Any], key: str, says: str
) -> None:
    environ = {**ENV, "SHORT": "0123456789", "MULTILINE": "Bearer a\r\nX-Evil: 1"}
    with pytest.raises(ConfigError) as e:
        load(tmp_path, dest, environ)
    assert f"  {key}: " in str(e.value) and says in str(e.value), str(e.value)
    assert not any(v in str(e.value) for v in (*ENV.values(), "0123456789", "X-Evil")), str(e.value)


def test_an_unsigned_webhook_is_allowed_when_it_says_so(tmp_path: Path) -> None:
    dest = load(tmp_path, {"unsigned": True}).routes[0].to[0]
    assert isinstance(dest, WebhookDestination) and dest.signing_secret() is None and dest.secret_values() == []


def test_the_commented_examples_in_the_shipped_routing_file_are_valid(tmp_path: Path) -> None:
    text = DEFAULT_ALERTS_CONFIG.read_text()
    routes = text[text.index("routes:") :]
    uncommented = re.sub(r"(?m)^  # ?", "  ", routes.replace("  #\n", "\n"))
    path = tmp_path / "alerts.yaml"
    path.write_text(text[: text.index("routes:")] + uncommented)
    names = set(re.findall(r"\b(CEM_[A-Z_]+)\b", uncommented))
    cfg = load_alerts_config(path, {n: "x" * 32 for n in names})
    assert [r.name for r in cfg.routes] == ["everything-to-log", "vip-contact-centre", "digital-forms"]
    webhooks = [d for r in cfg.routes for d in r.to if isinstance(d, WebhookDestination)]
    assert len(webhooks) == 2 and all(d.signing_secret() for d in webhooks)


def test_ledger_retention_must_cover_every_cooldown(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(
        "delivery: {ledger_retention_days: 1}\nroutes:\n  - {name: a, cooldown_minutes: 2880, to: [{type: log}]}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_alerts_config(path)
    assert "  delivery.ledger_retention_days: " in str(e.value)


# ---------------------------------------------------------------- redirects and redaction


def test_redirects_are_judged_by_host_and_name_no_path() -> None:
    url = "http://127.0.0.1:8080/hook"
    other = redirect_reason(url, 307, "http://user:pw@127.0.0.2:8080/steal?token=abc")
    assert "another host (http://127.0.0.2:8080)" in other
    assert not any(x in other for x in ("token", "abc", "user", "pw", "steal"))
    assert "another host" in redirect_reason(url, 302, "https://127.0.0.1:8080/hook")  # scheme changed
    assert "another host" in redirect_reason(url, 302, "http://127.0.0.1:8081/hook")  # port changed
    assert "another host" in redirect_reason("https://a.example/x", 301, "//b.example/x")
    assert "within 127.0.0.1" in redirect_reason(url, 308, "/elsewhere?k=1")
    assert "within a.example" in redirect_reason("https://a.example/x", 301, "https://a.example:443/y")
    assert "without Location" in redirect_reason(url, 302, None)
    assert "invalid Location" in redirect_reason(url, 302, "http://h:99999999/")


def test_redact_masks_whole_and_cut_secrets() -> None:
    secrets = ["Bearer tok-9f8e7d6c5b4a", "s3cret-signing-key-0123"]
    msg = "HTTP 500: you sent {'Authorization': 'Bearer tok-9f8e7d6c5b4a', 'k': 's3cret-signing-key-0123'}"
    assert redact(msg, secrets) == "HTTP 500: you sent {'Authorization': '**********', 'k': '**********'}"
    cut = "HTTP 500: you sent Bearer tok-9f8"  # a body read in part
    assert redact(cut, secrets) == "HTTP 500: you sent **********"
    assert redact("x" * 500, secrets) == "x" * 300
    assert redact("all good", []) == "all good"


# ---------------------------------------------------------------- retry caps

POLICY = RetryPolicy(initial_s=0.5, max_s=4.0, max_attempts=5, max_attempts_rejected=2, max_age_s=60.0)


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = [0.0]
    for _ in range(6):
        delays.append(POLICY.next_delay(delays[-1]))
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_an_alert_is_given_up_by_attempts_refusals_or_age() -> None:
    assert POLICY.give_up(0, 0, 0.0) is None
    assert POLICY.give_up(4, 1, 59.9) is None
    assert "delivery.max_attempts" in (POLICY.give_up(5, 0, 1.0) or "")
    assert "delivery.max_attempts_rejected" in (POLICY.give_up(2, 2, 1.0) or "")
    assert "delivery.max_age_s" in (POLICY.give_up(0, 0, 60.0) or "")
    assert RetryPolicy.of(DeliverySettings()).give_up(9, 0, 0) is None  # defaults: 10 attempts, 600 s
    assert RetryPolicy.of(DeliverySettings()).give_up(0, 0, 600) is not None


# ---------------------------------------------------------------- ledger: failures and bounds


def test_a_failed_alert_is_not_tried_again_and_a_failed_retraction_is() -> None:
    ledger = Ledger()
    a1 = alert(alert_id="a1")
    ledger.let_through("r", a1)
    records = [ledger.record("r", "d", a1, "failed", "5 attempts failed")]
    assert records[0]["reason"] == "5 attempts failed"
    assert ledger.decide("r", "d", a1, 60) is Decision.ALREADY_FAILED
    assert ledger.decide("r", "d", alert(alert_id="a1", status="retracted"), 60) is Decision.NOTHING_TO_RETRACT
    assert ledger.decide("r", "d2", a1, 60) is Decision.DELIVER  # another destination of the route
    soon = alert(alert_id="a2", occurred_at=a1.occurred_at + timedelta(minutes=5))
    assert ledger.decide("r", "d", soon, 60) is Decision.COOLDOWN  # the route let a1 through

    b1 = alert(alert_id="b1", customer_id="C-2")
    records.append(ledger.record("r", "d", b1, "open"))
    b1_gone = alert(alert_id="b1", customer_id="C-2", status="retracted", revision=2)
    records.append(ledger.record("r", "d", b1_gone, "failed", "HTTP 500"))
    assert ledger.decide("r", "d", b1_gone, 60) is Decision.DELIVER  # it still holds the open alert

    restarted = Ledger()
    for rec in json.loads(json.dumps(records)):
        restarted.apply(rec)
    assert restarted.decide("r", "d", a1, 60) is Decision.ALREADY_FAILED
    assert restarted.decide("r", "d", soon, 60) is Decision.COOLDOWN
    assert restarted.decide("r", "d", b1_gone, 60) is Decision.DELIVER


def test_ledger_forgets_what_is_older_than_its_retention_and_tombstones_it() -> None:
    ledger = Ledger(retention_us=DAY_US, max_entries=1000)
    first = alert(alert_id="old", customer_id="C-1")
    ledger.let_through("r", first)
    kept = [ledger.record("r", "d", first, "open")]
    ledger.record("r", "d", alert(alert_id="s", occurred_at=first.occurred_at + timedelta(minutes=1)), "suppressed")
    newer = alert(alert_id="new", customer_id="C-2", occurred_at=first.occurred_at + timedelta(hours=25))
    ledger.let_through("r", newer)
    kept.append(ledger.record("r", "d", newer, "open"))
    pruned = ledger.prune()
    assert sorted(pruned.keys) == [b"d/old", b"d/s"] and pruned.expired == 3 and pruned.evicted == 0
    assert set(ledger.delivered) == {("d", "new")}
    assert set(ledger.last_open) == {("r", "C-2", "baggage_allowance")}
    assert ledger.decide("r", "d", newer, 60) is Decision.ALREADY_DELIVERED
    assert ledger.prune().keys == []  # nothing left to forget
    # far ahead of the clock: not trusted to forget the rest
    ahead = alert(alert_id="future", customer_id="C-3", occurred_at=first.occurred_at + timedelta(days=400))
    ledger.record("r", "d", ahead, "open")
    assert ledger.prune(ceiling_us=ledger.delivered[("d", "new")][1] + 3_600_000_000).keys == []
    assert ("d", "new") in ledger.delivered


def test_ledger_maps_never_hold_more_than_the_cap() -> None:
    ledger = Ledger(retention_us=365 * DAY_US, max_entries=100)
    base = alert()
    for i in range(1000):
        a = alert(alert_id=f"a{i}", customer_id=f"C-{i}", occurred_at=base.occurred_at + timedelta(seconds=i))
        ledger.let_through("r", a)
        ledger.record("r", "d", a, "open")
        if ledger.prune_due():
            ledger.prune()
        assert len(ledger.delivered) <= 101 and len(ledger.last_open) <= 101
    assert ("d", "a999") in ledger.delivered and ("d", "a0") not in ledger.delivered  # the oldest went first
    pruned = ledger.prune()
    assert pruned.evicted == 0 and pruned.keys == []


def test_prune_is_due_when_full_or_when_time_moved_on() -> None:
    ledger = Ledger(retention_us=16 * DAY_US, max_entries=10)
    a = alert()
    ledger.record("r", "d", a, "open")
    assert ledger.prune_due()  # never pruned yet
    ledger.prune()
    assert not ledger.prune_due()
    ledger.record("r", "d", alert(alert_id="b", occurred_at=a.occurred_at + timedelta(hours=23)), "open")
    assert not ledger.prune_due()
    ledger.record("r", "d", alert(alert_id="c", occurred_at=a.occurred_at + timedelta(days=1)), "open")
    assert ledger.prune_due()


# ---------------------------------------------------------------- the service, without broker or network


def test_a_dead_destination_fails_its_alerts_while_a_healthy_one_gets_all(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "delivery": {"queue_size": 2, "max_attempts": 3, "max_age_s": 30, "retry_initial_s": 0.01,
                             "retry_max_s": 0.02, "cooldown_minutes": 0, "metrics_port": 0},
                "routes": [{"name": "dead", "to": [{"type": "log", "name": "dead"}]},
                           {"name": "healthy", "to": [{"type": "log", "name": "healthy"}]}],
            }
        )
    )  # fmt: skip
    service = DeliveryService(Settings(), load_alerts_config(path))
    delivered: list[str] = []
    written: list[dict[str, Any]] = []
    attempts = {"dead": 0}

    async def send(dest: Any, a: FrictionAlert) -> None:
        if dest.name == "dead":
            attempts["dead"] += 1
            raise ConnectionRefusedError("connection refused")
        delivered.append(a.alert_id)

    async def write_ledger(rec: dict[str, Any]) -> bool:
        written.append(rec)
        return True

    service._send = send  # type: ignore[method-assign]
    service._write_ledger = write_ledger  # type: ignore[method-assign]
    tp = TopicPartition("alerts", 0)

    async def run() -> None:
        for dest_id in service.destinations:
            service.queues[dest_id] = asyncio.Queue(maxsize=2)
        workers = [asyncio.create_task(service._worker(d)) for d in service.destinations]
        for i in range(50):
            value = alert(alert_id=f"x{i}", customer_id=f"C-{i}").model_dump_json().encode()
            await asyncio.wait_for(service._dispatch(tp, i, value), timeout=5)
        for _ in range(200):
            if len(written) == 100:
                break
            await asyncio.sleep(0.02)
        service.stop()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    asyncio.run(run())
    assert delivered == [f"x{i}" for i in range(50)]
    failed = [r for r in written if r["destination"] == "dead"]
    assert len(failed) == 50 and {r["outcome"] for r in failed} == {"failed"}
    assert sum("delivery.max_attempts" in r["reason"] for r in failed) >= 1
    assert sum("queue is full" in r["reason"] for r in failed) >= 40
    assert attempts["dead"] <= 3 * (50 - 40)
    assert service.tracker.committable() == {tp: 50}


def test_a_refused_request_is_tried_max_attempts_rejected_times() -> None:
    cfg = AlertsConfig.model_validate(
        {"delivery": {"retry_initial_s": 0.01, "metrics_port": 0}, "routes": [{"name": "r", "to": [{"type": "log"}]}]}
    )
    service = DeliveryService(Settings(), cfg)
    written: list[dict[str, Any]] = []
    calls = 0

    async def send(dest: Any, a: FrictionAlert) -> None:
        nonlocal calls
        calls += 1
        raise Rejected("HTTP 307: redirect to another host (http://127.0.0.2:1) not followed")

    async def write_ledger(rec: dict[str, Any]) -> bool:
        written.append(rec)
        return True

    service._send = send  # type: ignore[method-assign]
    service._write_ledger = write_ledger  # type: ignore[method-assign]
    job = Job(cfg.routes[0], "r.0.log", alert(), TopicPartition("t", 0), 0, queued_at=time.monotonic())
    assert asyncio.run(service._deliver("r.0.log", job)) is True
    assert calls == 3 and written[0]["outcome"] == "failed" and "another host" in written[0]["reason"]
