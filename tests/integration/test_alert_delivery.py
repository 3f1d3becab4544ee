"""`cem alerts deliver` against real local HTTP receivers and the real Kafka broker:
routing and filters, cooldown, retractions, context, retries, restarts without double delivery,
signatures, redirects, secrets from the environment, and retry caps."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipeline.kafka.admin import Record, producer, send_all
from pipeline.kafka.admin import read_to_end as read_topic
from schemas.alert import FrictionAlert
from tests.integration.conftest import ROOT, Namespace, free_port
from tests.integration.http_receiver import Receiver

EXAMPLE = ROOT / "schemas" / "examples" / "friction_alert.json"
SECRET_ENV = "CEM_TEST_WEBHOOK_SECRET"  # noqa: S105 (the variable's name)
SECRET = "test-signing-secret-" + uuid.uuid4().hex


def hook(url: str, **options: Any) -> dict[str, Any]:
    """A signed webhook destination (signing is required unless a route says unsigned: true)."""
    return {"type": "webhook", "url": url, "secret_env": SECRET_ENV, **options}


def alert(**changes: Any) -> FrictionAlert:
    return FrictionAlert.model_validate_json(EXAMPLE.read_bytes()).model_copy(update=changes)


class Delivery:
    """The delivery service as its own process, with a routing file written for the test."""

    def __init__(
        self, space: Namespace, routes: list[dict[str, Any]], env: dict[str, str] | None = None, **delivery: Any
    ) -> None:
        self.space = space
        self.env = {**space.env, SECRET_ENV: SECRET, **(env or {})}
        self.log_path = space.tmp / "delivery.log"
        self.metrics_port = free_port()
        tag = uuid.uuid4().hex[:6]
        self.config = {
            "delivery": {
                "group_id": f"delivery-{tag}",
                "ledger_topic": f"{space.settings.kafka.topics.alerts}.ledger",
                "retry_initial_s": 0.2,
                "retry_max_s": 1.0,
                "metrics_port": self.metrics_port,
                **delivery,
            },
            "routes": routes,
        }
        self.path = space.tmp / f"alerts-{tag}.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Delivery:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", "alerts", "deliver", "--config", str(self.path)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        self.space.procs.append(self.proc)  # stopped by the fixture if the test fails first
        deadline = time.monotonic() + 60
        while not self.metrics():
            assert self.proc.poll() is None, self.log()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ledger(self) -> list[tuple[bytes, dict[str, Any] | None]]:
        """The ledger topic's records: (key, value), a tombstone's value None."""
        records = read_topic(self.space.settings, self.config["delivery"]["ledger_topic"])
        return [(r.key, None if r.value is None else orjson.loads(r.value)) for r in records]

    def wait_for_metric(self, name: str, value: float, timeout_s: float = 60) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            if m.get(name, 0) >= value:
                return m
            assert time.monotonic() < deadline, f"{name} = {m.get(name)}, not {value}\n{self.log()[-3000:]}"
            time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1) as r:  # noqa: S310
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("cem_"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def produce(space: Namespace, alerts: list[FrictionAlert]) -> None:
    topic = space.settings.kafka.topics.alerts
    prod = producer(space.settings)
    send_all(prod, [Record(topic, a.customer_id.encode(), a.model_dump_json().encode()) for a in alerts])
    prod.close()


def test_routes_filters_cooldown_retractions_and_context(space: Namespace, receivers: list[Receiver]) -> None:
    vip, forms = Receiver(secret=SECRET.encode()).start(), Receiver(secret=SECRET.encode()).start()
    receivers += [vip, forms]
    team_topic = f"{space.settings.kafka.topics.alerts}.team-forms"
    service = Delivery(
        space,
        [
            {"name": "vip", "match": {"min_severity": "high", "tier": ["gold", "platinum"]},
             "to": [hook(f"{vip.url}/vip")]},
            {"name": "forms", "match": {"kind": ["re_entry"]},
             "to": [hook(f"{forms.url}/slack", format="slack"),
                    {"type": "kafka", "topic": team_topic}, {"type": "log"}]},
        ],
    ).start()  # fmt: skip
    a1 = alert(alert_id="a1", customer_id="C-1")
    a2 = alert(alert_id="a2", customer_id="C-1", occurred_at=a1.occurred_at + timedelta(minutes=10))  # cooldown
    a3 = alert(
        alert_id="a3",
        customer_id="C-2",
        kind="re_entry",
        matter=None,
        field="passport_number",
        severity="medium",
        loyalty_tier="silver",
        summary="Silver member C-2 had to enter passport_number.",
    )
    a4 = alert(alert_id="a4", customer_id="C-3", severity="medium", loyalty_tier="silver")  # no route
    a1_gone = alert(alert_id="a1", customer_id="C-1", status="retracted", revision=2)
    a2_gone = alert(alert_id="a2", customer_id="C-1", status="retracted", revision=2)  # was never sent
    produce(space, [a1, a2, a3, a4, a1, a1_gone, a2_gone])  # a1 twice: the topic may repeat an alert

    got = vip.wait_for(2)
    forms.wait_for(1)
    time.sleep(2)  # anything else would have arrived by now
    assert [(r.path, r.body["alert_id"], r.body["status"]) for r in vip.received] == [
        ("/vip", "a1", "open"),
        ("/vip", "a1", "retracted"),
    ]
    assert got[0].headers["Idempotency-Key"] == "a1:open" and got[1].headers["X-CEM-Alert-Status"] == "retracted"
    assert all(r.verified for r in vip.received + forms.received)  # signed, slack bodies too
    ctx = got[0].body["context"]  # what the customer already told us travels with the alert
    assert [c["agent_id"] for c in ctx["previous_contacts"]] == ["A-7", "A-12"]
    assert [r.body for r in forms.received] == [
        {"text": ":large_orange_circle: *medium* re_entry: Silver member C-2 had to enter passport_number."}
    ]
    on_team_topic = [FrictionAlert.model_validate_json(r.value) for r in read_topic(space.settings, team_topic)]
    assert [(a.alert_id, a.customer_id) for a in on_team_topic] == [("a3", "C-2")]
    m = service.metrics()
    assert m['cem_alert_deliveries_total{destination="vip.0.webhook",outcome="cooldown"}'] == 1
    assert m['cem_alert_deliveries_total{destination="vip.0.webhook",outcome="already_delivered"}'] == 1
    assert m['cem_alert_deliveries_total{destination="vip.0.webhook",outcome="nothing_to_retract"}'] == 1
    assert m['cem_alert_deliveries_total{destination="forms.1.kafka",outcome="delivered"}'] == 1
    assert service.stop() == 0


def test_a_failing_destination_is_retried_while_others_keep_going(space: Namespace, receivers: list[Receiver]) -> None:
    flaky = Receiver(fail_first=3, hang_first=1, hang_s=3, secret=SECRET.encode()).start()
    healthy = Receiver(secret=SECRET.encode()).start()
    receivers += [flaky, healthy]
    service = Delivery(
        space,
        [
            {"name": "flaky", "to": [hook(flaky.url, timeout_s=1)]},
            {"name": "healthy", "to": [hook(healthy.url)]},
        ],
        cooldown_minutes=0,
    ).start()
    alerts = [alert(alert_id=f"f{i}", customer_id=f"C-{i}") for i in range(5)]
    produce(space, alerts)
    healthy.wait_for(5, timeout_s=30)
    assert len(flaky.received) == 0  # still failing: the healthy destination did not wait for it
    flaky.wait_for(5, timeout_s=60)
    time.sleep(1.5)
    assert Counter(r.body["alert_id"] for r in flaky.received) == {a.alert_id: 1 for a in alerts}
    assert all(r.verified for r in flaky.received)  # the retry was signed again, with a fresh timestamp
    assert flaky.attempts == 3 + 1 + 5  # 500, 500, 500, a timeout, then each alert once
    m = service.metrics()
    assert m['cem_alert_delivery_failed_attempts_total{destination="flaky.0.webhook"}'] == 4
    assert m['cem_alert_destination_up{destination="flaky.0.webhook"}'] == 1
    assert service.stop() == 0


def test_restart_mid_stream_delivers_each_alert_once(space: Namespace, receivers: list[Receiver]) -> None:
    slow = Receiver(delay_s=0.02).start()
    receivers.append(slow)
    routes = [{"name": "all", "to": [hook(slow.url)]}]
    first = Delivery(space, routes, cooldown_minutes=0)
    alerts = [alert(alert_id=f"r{i}", customer_id=f"C-{i % 37}", matter=f"m{i}") for i in range(200)]
    produce(space, alerts)
    first.start()
    slow.wait_for(40, timeout_s=60)
    assert first.stop() == 0  # SIGTERM mid-stream: finishes what is in flight, records, commits
    stopped_at = len(slow.received)
    assert stopped_at < 200
    second = Delivery(space, routes, cooldown_minutes=0)
    second.config["delivery"]["group_id"] = first.config["delivery"]["group_id"]
    second.path.write_text(yaml.safe_dump(second.config))
    second.start()
    slow.wait_for(200, timeout_s=90)
    time.sleep(2)
    counts = Counter(r.body["alert_id"] for r in slow.received)
    assert counts == {a.alert_id: 1 for a in alerts}, [k for k, v in counts.items() if v > 1]
    assert second.stop() == 0


def test_bad_routing_file_is_refused_with_the_key(space: Namespace) -> None:
    bad = Path(space.tmp / "bad.yaml")
    bad.write_text("routes:\n  - name: x\n    to: [{type: webhook, url: 'ftp://nope'}]\n")
    result = space.cem("alerts", "deliver", "--config", str(bad), check=False)
    assert result.returncode == 2 and "routes.0.to.0.webhook.url" in result.stderr


def test_alerts_tail_filters_for_people_and_scripts(space: Namespace) -> None:
    produce(
        space,
        [
            alert(alert_id="t1", customer_id="C-1"),
            alert(alert_id="t2", customer_id="C-2", kind="re_entry", matter=None, field="address", severity="medium"),
            alert(alert_id="t3", customer_id="C-3", loyalty_tier="silver", severity="medium"),
        ],
    )
    base = ("alerts", "tail", "--from-beginning", "--idle-timeout", "3")
    as_json = space.cem(*base, "--json", "--min-severity", "high").stdout.splitlines()
    assert [FrictionAlert.model_validate_json(line).alert_id for line in as_json] == ["t1"]
    by_field = space.cem(*base, "--json", "--kind", "re_entry", "--matter", "ADDRESS").stdout.splitlines()
    assert [FrictionAlert.model_validate_json(line).alert_id for line in by_field] == ["t2"]
    pretty = space.cem(*base, "--tier", "gold").stdout
    assert "contacted us 3 times" in pretty and "earlier:" in pretty and "already gave: date_of_birth" in pretty
    assert "C-3" not in pretty


def test_signed_requests_verify_with_the_documented_code(space: Namespace, receivers: list[Receiver]) -> None:
    signed = Receiver(secret=SECRET.encode()).start()
    wrong_key = Receiver(secret=b"not-the-secret-0123456789").start()
    unsigned = Receiver(secret=SECRET.encode()).start()
    receivers += [signed, wrong_key, unsigned]
    service = Delivery(
        space,
        [
            {"name": "signed", "to": [hook(signed.url)]},
            {"name": "wrong-key", "to": [hook(wrong_key.url)]},
            {"name": "unsigned", "to": [{"type": "webhook", "url": unsigned.url, "unsigned": True}]},
        ],
    ).start()
    produce(space, [alert(alert_id="s1", customer_id="C-1")])
    got = signed.wait_for(1)[0]
    wrong_key.wait_for(1)
    unsigned.wait_for(1)
    assert got.verified is True and got.body["alert_id"] == "s1"
    assert got.headers["X-CEM-Signature"].startswith("v1=") and len(got.headers["X-CEM-Signature"]) == 67
    assert abs(int(got.headers["X-CEM-Timestamp"]) - time.time()) < 60
    assert wrong_key.received[0].verified is False  # the check is not vacuous
    assert "X-CEM-Signature" not in unsigned.received[0].headers
    assert "unsigned.0.webhook sends UNSIGNED requests" in service.log()
    assert service.stop() == 0


def test_a_webhook_without_a_secret_is_refused_at_start(space: Namespace) -> None:
    path = space.tmp / "unsigned.yaml"
    path.write_text("routes:\n  - name: x\n    to: [{type: webhook, url: 'http://127.0.0.1:9/'}]\n")
    result = space.cem("alerts", "deliver", "--config", str(path), check=False)
    assert result.returncode == 2 and "routes.0.to.0.webhook.secret_env" in result.stderr


def test_a_redirect_to_another_host_is_not_followed(space: Namespace, receivers: list[Receiver]) -> None:
    elsewhere = Receiver(host="127.0.0.2", secret=SECRET.encode()).start()  # another address: another host
    redirector = Receiver(redirect_to=elsewhere.url).start()
    healthy = Receiver(secret=SECRET.encode()).start()
    receivers += [elsewhere, redirector, healthy]
    service = Delivery(
        space,
        [{"name": "moved", "to": [hook(f"{redirector.url}/hook")]}, {"name": "healthy", "to": [hook(healthy.url)]}],
        cooldown_minutes=0,
    ).start()
    produce(space, [alert(alert_id="m1", customer_id="C-1"), alert(alert_id="m2", customer_id="C-2")])
    healthy.wait_for(2)
    m = service.wait_for_metric('cem_alert_deliveries_total{destination="moved.0.webhook",outcome="rejected"}', 2)
    time.sleep(1)
    assert elsewhere.attempts == 0 and elsewhere.received == []  # neither payload nor signature left
    assert redirector.attempts == 2 * 3  # each alert: delivery.max_attempts_rejected attempts
    assert m['cem_alert_destination_up{destination="moved.0.webhook"}'] == 0
    reason = f"redirect to another host (http://127.0.0.2:{elsewhere.url.rsplit(':', 1)[1]}) not followed"
    assert reason in service.log()
    failed = {v["alert_id"]: v for _, v in service.ledger() if v and v["destination"] == "moved.0.webhook"}
    assert set(failed) == {"m1", "m2"}
    assert all(v["outcome"] == "failed" and reason in v["reason"] for v in failed.values())
    assert service.stop() == 0


def test_a_dead_destination_fails_its_alerts_and_does_not_hold_back_a_healthy_one(
    space: Namespace, receivers: list[Receiver]
) -> None:
    dead = Receiver(fail_first=10**9).start()
    healthy = Receiver(secret=SECRET.encode()).start()
    receivers += [dead, healthy]
    routes = [{"name": "dead", "to": [hook(dead.url)]}, {"name": "healthy", "to": [hook(healthy.url)]}]
    caps = {"queue_size": 3, "max_attempts": 3, "max_age_s": 10, "cooldown_minutes": 0}
    service = Delivery(space, routes, **caps).start()
    alerts = [alert(alert_id=f"d{i}", customer_id=f"C-{i}") for i in range(40)]
    produce(space, alerts)
    healthy.wait_for(40, timeout_s=30)  # before: the dead destination's full queue stopped the reading
    service.wait_for_metric('cem_alert_deliveries_total{destination="dead.0.webhook",outcome="failed"}', 40)
    time.sleep(1)  # the queue gauge is set once the last failure is in the ledger
    m = service.metrics()
    assert m['cem_alert_deliveries_total{destination="healthy.0.webhook",outcome="delivered"}'] == 40
    assert m['cem_alert_delivery_queue{destination="dead.0.webhook"}'] == 0
    assert dead.attempts <= 3 * 10  # most alerts were failed without a try: its queue was full while it was down
    ledger = {v["alert_id"]: v for _, v in service.ledger() if v and v["destination"] == "dead.0.webhook"}
    assert set(ledger) == {a.alert_id for a in alerts} and {v["outcome"] for v in ledger.values()} == {"failed"}
    log = service.log()
    assert re.search(r"dead\.0\.webhook: gave up alert d\d+ \(open\) after 3 attempt\(s\) .*max_attempts\)", log)
    assert "its queue is full (3, delivery.queue_size) while it is down" in log
    assert service.stop() == 0
    # the failed alerts were committed: a restart tries none of them again
    before = dead.attempts
    again = Delivery(space, routes, **caps)
    again.config["delivery"]["group_id"] = service.config["delivery"]["group_id"]
    again.path.write_text(yaml.safe_dump(again.config))
    again.start()
    time.sleep(3)
    assert dead.attempts == before and len(healthy.received) == 40
    assert again.stop() == 0


def test_header_secrets_from_the_environment_never_reach_the_log(space: Namespace, receivers: list[Receiver]) -> None:
    token = "Bearer tok-" + uuid.uuid4().hex
    echoing = Receiver(fail_first=2, echo_headers=True, secret=SECRET.encode()).start()  # echoes what it got
    receivers.append(echoing)
    routes = [{"name": "auth", "to": [hook(echoing.url, headers={"X-Team": "ops"},
                                           headers_from_env={"Authorization": "CEM_TEST_HOOK_AUTH"})]}]  # fmt: skip
    service = Delivery(space, routes, env={"CEM_TEST_HOOK_AUTH": token}).start()
    produce(space, [alert(alert_id="h1", customer_id="C-1")])
    got = echoing.wait_for(1)[0]
    assert got.headers["Authorization"] == token and got.headers["X-Team"] == "ops" and got.verified
    service.wait_for_metric('cem_alert_deliveries_total{destination="auth.0.webhook",outcome="delivered"}', 1)
    assert service.stop() == 0
    log = service.log()
    assert log.count("'Authorization': '**********'") == 2, log[-3000:]  # both echoes, masked
    assert token not in log and token.split()[1] not in log and SECRET not in log
    ledger = json.dumps([v for _, v in service.ledger()])
    assert token not in ledger and SECRET not in ledger
    routes_out = subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", "alerts", "routes", "--config", str(service.path)],
        env=service.env, text=True, capture_output=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "$CEM_TEST_WEBHOOK_SECRET" in routes_out.stdout
    assert token not in routes_out.stdout + routes_out.stderr and SECRET not in routes_out.stdout
