"""`cem alerts deliver` against real local HTTP receivers and the real Kafka broker:
routing and filters, cooldown, retractions, context, retries, restarts without double delivery."""

from __future__ import annotations

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

import pytest
import yaml

from pipeline.admin import Record, producer, send_all
from pipeline.admin import read_to_end as read_topic
from schemas.alert import FrictionAlert
from tests.integration.conftest import ROOT, Namespace, free_port
from tests.integration.http_receiver import Receiver

EXAMPLE = ROOT / "schemas" / "examples" / "friction_alert.json"


def alert(**changes: Any) -> FrictionAlert:
    return FrictionAlert.model_validate_json(EXAMPLE.read_bytes()).model_copy(update=changes)


class Delivery:
    """The delivery service as its own process, with a routing file written for the test."""

    def __init__(self, space: Namespace, routes: list[dict[str, Any]], **delivery: Any) -> None:
        self.space = space
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
        log = (self.space.tmp / "delivery.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "alerts", "deliver", "--config", str(self.path)],
            env=self.space.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.metrics():
            assert self.proc.poll() is None, (self.space.tmp / "delivery.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        return self

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
    vip, forms = Receiver().start(), Receiver().start()
    receivers += [vip, forms]
    team_topic = f"{space.settings.kafka.topics.alerts}.team-forms"
    service = Delivery(
        space,
        [
            {"name": "vip", "match": {"min_severity": "high", "tier": ["gold", "platinum"]},
             "to": [{"type": "webhook", "url": f"{vip.url}/vip"}]},
            {"name": "forms", "match": {"kind": ["re_entry"]},
             "to": [{"type": "webhook", "url": f"{forms.url}/slack", "format": "slack"},
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
    flaky = Receiver(fail_first=3, hang_first=1, hang_s=3).start()
    healthy = Receiver().start()
    receivers += [flaky, healthy]
    service = Delivery(
        space,
        [
            {"name": "flaky", "to": [{"type": "webhook", "url": flaky.url, "timeout_s": 1}]},
            {"name": "healthy", "to": [{"type": "webhook", "url": healthy.url}]},
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
    assert flaky.attempts == 3 + 1 + 5  # 500, 500, 500, a timeout, then each alert once
    m = service.metrics()
    assert m['cem_alert_delivery_failed_attempts_total{destination="flaky.0.webhook"}'] == 4
    assert m['cem_alert_destination_up{destination="flaky.0.webhook"}'] == 1
    assert service.stop() == 0


def test_restart_mid_stream_delivers_each_alert_once(space: Namespace, receivers: list[Receiver]) -> None:
    slow = Receiver(delay_s=0.02).start()
    receivers.append(slow)
    routes = [{"name": "all", "to": [{"type": "webhook", "url": slow.url}]}]
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
