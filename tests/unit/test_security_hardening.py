"""Hardening, pure parts: the development fingerprint secret off the local stack, no secret
values in configuration errors or in the Kafka clients' DEBUG logs, ClickHouse TLS settings,
owner-only dead-letter exports, the replay's topic policy, and escaped CLI output."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline.kafka import clients
from pipeline.kafka.admin import Record
from pipeline.settings import ConfigError, load_settings
from schemas.alert import FrictionAlert

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"
SECRET = "Sup3r-s3cret-V4lue"  # noqa: S105  # what must never be printed
HIDDEN = "**********"


def _cem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CEM_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", *args],
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        text=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


# -- the development fingerprint secret ------------------------------------------------------


@pytest.mark.parametrize(
    ("kafka", "clickhouse", "remote"),
    [
        ("broker1.example:9093,broker2.example:9093", "127.0.0.1", ["broker1.example", "broker2.example"]),
        ("127.0.0.1:19092", "clickhouse.internal", ["clickhouse.internal"]),
        ("10.0.0.5:9092", "localhost", ["10.0.0.5"]),
    ],
)
def test_the_development_secret_is_refused_off_the_local_stack(kafka: str, clickhouse: str, remote: list[str]) -> None:
    s = load_settings(kafka={"bootstrap_servers": kafka}, clickhouse={"host": clickhouse})
    assert s.privacy.dev_secret and s.remote_hosts == remote
    with pytest.raises(ConfigError) as e:
        s.check_fingerprint_secret()
    assert "privacy.fingerprint_secret is the development default" in str(e.value)
    assert "CEM_PRIVACY__FINGERPRINT_SECRET" in str(e.value) and remote[0] in str(e.value)
    # with a secret of one's own, anywhere is fine
    own = load_settings(
        kafka={"bootstrap_servers": kafka}, clickhouse={"host": clickhouse}, privacy={"fingerprint_secret": SECRET}
    )
    own.check_fingerprint_secret()
    assert not own.privacy.dev_secret


@pytest.mark.parametrize("servers", ["127.0.0.1:19092", "localhost:9092,127.0.0.2:9093", "[::1]:9092", "::1"])
def test_the_local_stack_may_use_the_development_secret(servers: str) -> None:
    s = load_settings(kafka={"bootstrap_servers": servers}, clickhouse={"host": "::1"})
    assert s.privacy.dev_secret and s.remote_hosts == []
    s.check_fingerprint_secret()


def test_a_worker_with_the_development_secret_off_the_local_stack_does_not_start() -> None:
    r = _cem("worker", env={"CEM_KAFKA__BOOTSTRAP_SERVERS": "kafka.prod.example:9093"})
    assert r.returncode == 2, r.stdout + r.stderr
    said = " ".join(r.stderr.split())
    assert "privacy.fingerprint_secret is the development default" in said and "kafka.prod.example" in said
    assert "Traceback" not in r.stderr


def test_config_check_shows_the_development_secret_and_fails_off_the_local_stack() -> None:
    local = _cem("config", "check", env={})
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["privacy"]["fingerprint_secret"] == f"{HIDDEN} (the development default)"
    assert "development default" in local.stderr  # a warning, even here
    remote = _cem("config", "check", env={"CEM_CLICKHOUSE__HOST": "ch.prod.example"})
    assert remote.returncode == 2 and "ch.prod.example" in remote.stderr
    own = _cem(
        "config", "check", env={"CEM_CLICKHOUSE__HOST": "ch.prod.example", "CEM_PRIVACY__FINGERPRINT_SECRET": SECRET}
    )
    assert own.returncode == 0 and "development default" not in own.stdout + own.stderr
    assert json.loads(own.stdout)["privacy"]["fingerprint_secret"] == HIDDEN
    assert SECRET not in own.stdout + own.stderr


# -- configuration errors never print secret values ----------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        (f"clickhouse:\n  pasword: {SECRET}\n", "clickhouse.pasword"),
        (f"privacy:\n  fingerprint_secrt: {SECRET}\n", "privacy.fingerprint_secrt"),
        (f"kafka:\n  security:\n    username: u\n    passwd: {SECRET}\n", "kafka.security.passwd"),
        (f"clickhouse:\n  eraser_password: [{SECRET}]\n", "clickhouse.eraser_password"),
        ("clickhouse:\n  password: 31415926535\n", "clickhouse.password"),
        (f"clickhouse: {SECRET}\n", "clickhouse"),
        (f"worker:\n  api_tokn: {SECRET}\n", "worker.api_tokn"),
        (f"clickhouse:\n  password: {SECRET}: oops\n", ":2:"),  # not YAML: the line is not quoted
        (f"clickhouse:\n  host: h\n password {SECRET}\n", ":3:"),
        (f'clickhouse:\n  password: "{SECRET}\n', "not valid YAML"),
    ],
)
def test_config_errors_from_yaml_never_print_secret_values(
    yaml_text: str, names: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "cem.yaml"
    cfg.write_text(yaml_text)
    monkeypatch.setenv("CEM_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert names in str(e.value)
    assert SECRET not in str(e.value) and "31415926535" not in str(e.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CEM_CLICKHOUSE__PASWORD": SECRET}, "clickhouse.pasword"),
        ({"CEM_PRIVACY__FINGERPRINT_SECRT": SECRET}, "privacy.fingerprint_secrt"),
        ({"CEM_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": SECRET}, "kafka.security.sasl_plain_password"),
        ({"CEM_CLICKHOUSE": json.dumps({"pasword": SECRET})}, "clickhouse.pasword"),
        ({"CEM_KAFKA__SECURITY": '{"password": "' + SECRET + '"'}, "kafka"),  # not JSON
        ({"CEM_RULES__VIP_TIERS": SECRET}, "rules"),  # not JSON either
    ],
)
def test_config_errors_from_the_environment_never_print_secret_values(
    env: dict[str, str], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert names in str(e.value) and SECRET not in str(e.value)


def test_config_errors_still_quote_values_that_cannot_be_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEM_CLICKHOUSE__PORT", "nineteen")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "clickhouse.port: Input should be a valid integer" in str(e.value) and "(got 'nineteen')" in str(e.value)


def test_cem_prints_a_misspelt_secret_key_without_its_value() -> None:
    r = _cem("config", "check", env={"CEM_KAFKA__SECURITY__PASSWROD": SECRET})
    assert r.returncode == 2 and "kafka.security.passwrod" in r.stderr
    assert SECRET not in r.stdout + r.stderr


def test_alerts_config_errors_never_print_secret_values(tmp_path: Path) -> None:
    from sinks.delivery.config import load_alerts_config

    path = tmp_path / "alerts.yaml"
    for destination in (
        "{type: webhook, url: 'https://hooks.example/" + SECRET + "', tokn: x}",  # a misspelt key beside it
        "{type: webhook, url: 'ftp://" + SECRET + "'}",  # a webhook URL carries its token
        "{type: webhook, url: https://x/" + SECRET + ": x}",  # not YAML
    ):
        path.write_text("routes:\n  - name: r\n    to:\n      - " + destination + "\n")
        with pytest.raises(ConfigError) as e:
            load_alerts_config(path)
        assert SECRET not in str(e.value)


# -- the SASL password stays out of the Kafka clients' DEBUG logs --------------------------


class _NoNetwork(Exception):
    pass


class _NoClient:
    """Stands in for kafka-python's network client: the admin client logs its configuration
    before it makes one."""

    def __init__(self, **_: Any) -> None:
        raise _NoNetwork


def test_the_sasl_password_is_not_in_kafka_pythons_debug_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka import KafkaAdminClient

    from pipeline.kafka.admin import admin_client

    s = load_settings(
        kafka={"security": {"protocol": "SASL_PLAINTEXT", "username": "cem", "password": SECRET}},
    )
    monkeypatch.setitem(KafkaAdminClient.DEFAULT_CONFIG, "kafka_client", _NoClient)
    with caplog.at_level(logging.DEBUG), pytest.raises(_NoNetwork):
        admin_client(s)
    assert "sasl_plain_password" in caplog.text  # the configuration was logged ...
    assert SECRET not in caplog.text  # ... without the password
    # every spelling of the settings still carries the real password, masked in any text
    for cfg in (clients.kafka_python(s.kafka), clients.aiokafka(s.kafka)):
        assert cfg["sasl_plain_password"] == SECRET and SECRET not in f"{cfg} {cfg!r}"
    creds: Any = clients.faust_credentials(s.kafka)
    assert creds.password == SECRET and SECRET not in f"{creds!r} {vars(creds)}"


# -- ClickHouse TLS settings ---------------------------------------------------------------


def test_clickhouse_tls_settings_reach_the_driver(tmp_path: Path) -> None:
    from sinks.clickhouse.client import connect

    ca = tmp_path / "ca.pem"
    ca.write_text("not read until connecting")
    ch = load_settings(clickhouse={"secure": True, "port": 9440, "ca_certs": str(ca)}).clickhouse
    conn = connect(ch).connection
    assert conn.secure_socket and conn.verify_cert and conn.check_hostname
    assert conn.ssl_options["ca_certs"] == str(ca)
    plain = connect(load_settings().clickhouse).connection
    assert not plain.secure_socket
    unverified = connect(load_settings(clickhouse={"secure": True, "verify": False}).clickhouse).connection
    assert unverified.secure_socket and not unverified.verify_cert


@pytest.mark.parametrize(
    ("clickhouse", "says"),
    [
        ({"ca_certs": "__CA__"}, "clickhouse: ca_certs is set but secure is false"),
        ({"secure": True, "ca_certs": "/nowhere/ca.pem"}, "clickhouse: ca_certs: no such file"),
        ({"secure": True, "certfile": "__CA__"}, "certfile and keyfile go together"),
        ({"secure": "maybe"}, "clickhouse.secure"),
    ],
)
def test_bad_clickhouse_tls_settings_name_the_key(clickhouse: dict[str, Any], says: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError) as e:
        load_settings(clickhouse={k: str(ca) if v == "__CA__" else v for k, v in clickhouse.items()})
    assert says in str(e.value)


def test_a_failed_tls_handshake_is_one_sentence() -> None:
    from clickhouse_driver.errors import NetworkError

    from sinks.clickhouse.client import tls_problem

    e = NetworkError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate "
        "(_ssl.c:1006) (10.1.2.3:9440)"
    )
    assert tls_problem(e) == (
        "ClickHouse at 10.1.2.3:9440: TLS handshake failed (CERTIFICATE_VERIFY_FAILED): check clickhouse.ca_certs "
        "(the CA that signed the server's certificate), clickhouse.verify, and that clickhouse.port is the "
        "server's secure port"
    )
    assert tls_problem(NetworkError("Connection refused (10.1.2.3:9440)")) is None


# -- dead letters: owner-only exports, replays to the channel topics only -------------------


def test_a_dead_letter_export_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    from pipeline.ops.deadletter import DeadLetter, export

    letter = DeadLetter(0, 0, b"k", b'{"email": "ana@example.com"}', {"cem.source.topic": "cem.touchpoints.web"})
    old = os.umask(0)
    try:
        fresh = tmp_path / "fresh.jsonl"
        assert export([letter], fresh) == 1
        existing = tmp_path / "existing.jsonl"
        existing.write_text("old")
        existing.chmod(0o644)
        export([letter], existing)
    finally:
        os.umask(old)
    for path in (fresh, existing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
        assert json.loads(path.read_text())["value"] == '{"email": "ana@example.com"}'


def test_a_replay_goes_to_the_channel_topics_unless_forced() -> None:
    from pipeline.ops.deadletter import ReplayRefused, check_targets

    s = load_settings()
    t = s.kafka.topics
    fine = [Record(topic, b"k", b"{}") for topic in t.channels]
    check_targets(s, fine)
    for elsewhere in (t.profiles, t.identity, t.by_customer, t.alerts, "anything.else"):
        records = [*fine, Record(elsewhere, b"k", b"{}"), Record(elsewhere, b"k", None)]
        with pytest.raises(ReplayRefused) as e:
            check_targets(s, records)
        assert f"{elsewhere} (2)" in str(e.value) and "--force" in str(e.value)
        check_targets(s, records, force=True)


# -- text from data is printed as text, never as rich markup --------------------------------


def _rendered(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None, emoji=False).print(renderable)
    return out.getvalue()


def test_the_timeline_prints_event_text_as_it_is() -> None:
    from pipeline.ops.cli import render_timeline

    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    rows = [
        (at, "web", "form_submit", "", "[red]form[/]", "", ["email"], ["re_entry"], ["x[/]"], "customer_id", "ev[/]1"),
        (at, "call_center", "call", "bag[/b]", "", "A[1]", [], [], [], "email", "[bold red]REPEAT CONTACT[/]"),
    ]
    text = _rendered(render_timeline("C-[/]9", rows))
    for literal in ("C-[/]9", "ev[/]1", "[red]form[/]", "RE-ENTERED x[/]", "bag[/b]", "(agent A[1])"):
        assert literal in text, (literal, text)
    assert "[bold red]REPEAT CONTACT[/]" in text  # an event id cannot pass for a friction mark


def test_an_alert_prints_its_text_as_it_is() -> None:
    from pipeline.ops.cli import render_alert

    raw = json.loads((EXAMPLES / "friction_alert.json").read_text())
    raw["summary"] = "Customer [/] called [bold]3 times[/] :smile:"
    alert = FrictionAlert.model_validate(raw)
    text = _rendered(render_alert(alert))
    assert "Customer [/] called [bold]3 times[/] :smile:" in text
