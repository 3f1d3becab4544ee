"""ClickHouse over TLS: the test server's secure port (scripts/stack.sh, CEM_CLICKHOUSE_TLS_DIR)
with a CA made by the session. The worker writes and the CLI reads through it, verifying the
certificate; a wrong CA fails at once with one sentence, and no secret is printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError

from pipeline.kafka.admin import Record, producer, send_all, wait_until_processed
from tests.integration.conftest import ROOT, STACK_ENV, Namespace, free_port, make_space
from tests.tls import make_ca_and_cert

TLS_PORT = STACK_ENV["CEM_CLICKHOUSE_TLS_PORT"]
CA = str(Path(STACK_ENV["CEM_CLICKHOUSE_TLS_DIR"]) / "ca.pem")
ODD_ID = "ev[/]1 [bold red]REPEAT CONTACT[/]"  # rich markup in event text must print as it is


@pytest.fixture
def tls_space(stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Namespace]:
    """A namespace whose every ClickHouse connection (migrations included) goes through TLS."""
    env = {"CEM_CLICKHOUSE__SECURE": "true", "CEM_CLICKHOUSE__PORT": TLS_PORT, "CEM_CLICKHOUSE__CA_CERTS": CA}
    space = make_space(stack, tmp_path, monkeypatch, 2, env)
    try:
        yield space
    finally:
        for proc in space.procs:
            space.stop_worker(proc)


def test_the_worker_writes_and_cem_reads_through_tls(tls_space: Namespace) -> None:
    s, db = tls_space.settings, tls_space.db
    assert s.clickhouse.secure and str(s.clickhouse.port) == TLS_PORT
    # the port really is TLS only: a plaintext client is turned away
    with pytest.raises(NetworkError):
        Client(host="127.0.0.1", port=int(TLS_PORT), connect_timeout=3).execute("SELECT 1")

    tls_space.start_worker()
    call = {"event_id": ODD_ID, "occurred_at": "2026-03-02T10:00:00Z", "type": "call", "customer_id": "C-TLS",
            "reason": "refund_status", "agent_id": "A-1"}  # fmt: skip
    prod = producer(s)
    send_all(prod, [Record(s.kafka.topics.callcenter, b"C-TLS", json.dumps(call).encode())])
    prod.close()
    wait_until_processed(s, timeout_s=120)
    deadline = time.monotonic() + 30
    while not tls_space.ch().execute(f"SELECT count() FROM {db}.timeline WHERE customer_id = 'C-TLS'")[0][0]:
        assert time.monotonic() < deadline, tls_space.worker_log()[-3000:]
        time.sleep(0.3)

    shown = tls_space.cem("timeline", "C-TLS", check=False)
    assert shown.returncode == 0, shown.stderr
    assert ODD_ID in " ".join(shown.stdout.split()), shown.stdout
    assert "Traceback" not in tls_space.worker_log()


def test_a_wrong_ca_fails_at_once_with_one_sentence(tls_space: Namespace, tmp_path: Path) -> None:
    other_ca = str(make_ca_and_cert(tmp_path / "other", "server") / "ca.pem")
    password = "not-to-be-printed-" + tmp_path.name
    cases = [
        ({"CEM_CLICKHOUSE__CA_CERTS": other_ca}, "TLS handshake failed (CERTIFICATE_VERIFY_FAILED)"),
        ({"CEM_CLICKHOUSE__PORT": STACK_ENV["CEM_CLICKHOUSE_PORT"]}, "TLS handshake failed"),  # a plaintext port
    ]
    commands = (["timeline", "C-TLS"], ["migrate", "--status"], ["worker", "--web-port", str(free_port())])
    for change, says in cases:
        for command in commands:
            started = time.monotonic()
            r = subprocess.run(
                [sys.executable, "-m", "pipeline.ops.cli", *command],
                env={**tls_space.env, **change, "CEM_CLICKHOUSE__PASSWORD": password},
                text=True, capture_output=True, timeout=90, cwd=ROOT,
            )  # fmt: skip
            said = " ".join(r.stderr.split())
            assert r.returncode == 3, (change, command, r.stdout[-2000:], r.stderr[-2000:])
            assert says in said and "check clickhouse.ca_certs" in said, (command, said)
            assert f"127.0.0.1:{change.get('CEM_CLICKHOUSE__PORT', TLS_PORT)}" in said
            assert password not in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stderr
            assert time.monotonic() - started < 30
    # certificate checks off: the same wrong CA is accepted (an explicit choice, for testing)
    r = tls_space.cem("migrate", "--status", check=False)
    assert r.returncode == 0, r.stderr
    env = {**tls_space.env, "CEM_CLICKHOUSE__CA_CERTS": other_ca, "CEM_CLICKHOUSE__VERIFY": "false"}
    r = subprocess.run([sys.executable, "-m", "pipeline.ops.cli", "migrate", "--status"], env=env, text=True,
                       capture_output=True, timeout=90, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
