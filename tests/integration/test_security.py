"""Security against the real services: a broker that only speaks SASL_SSL (SCRAM-SHA-512 over
TLS, with a CA and certificate made here), least-privilege ClickHouse users, clear errors for
wrong credentials, and erasure end to end (through that broker, by those users)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_driver.errors import ServerException

from pipeline.kafka.admin import Record, producer, read_to_end, send_all, wait_until_processed
from processors.identity import fingerprint
from schemas.erasure import ErasureReceipt
from sinks.clickhouse.client import connect
from tests.integration.conftest import ROOT, STACK_ENV, Namespace, free_port, make_space
from tests.integration.test_airline_story import check_expected
from tests.integration.test_alert_delivery import Delivery
from tests.scenario import STORY
from tests.tls import make_ca_and_broker_cert

SECURE_PORT = int(os.environ.get("CEM_TEST_SECURE_KAFKA_PORT", "29192"))
# 18.16 refuses DDL for allow_ddl=0 with 392 (QUERY_IS_PROHIBITED); 20.5+ says 497 (ACCESS_DENIED)
DENIED = {392, 497}
READONLY = {164, 497}
DB_DENIED = {291, 497}


@pytest.fixture(scope="module")
def secure_kafka(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second broker, SASL_SSL only, with SCRAM users formatted into its storage."""
    tls = make_ca_and_broker_cert(tmp_path_factory.mktemp("tls"))
    secret = {"admin": uuid.uuid4().hex, "cem": uuid.uuid4().hex}
    client_env = {
        "CEM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{SECURE_PORT}",
        "CEM_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
        "CEM_KAFKA__SECURITY__SASL_MECHANISM": "SCRAM-SHA-512",
        "CEM_KAFKA__SECURITY__USERNAME": "cem",
        "CEM_KAFKA__SECURITY__PASSWORD": secret["cem"],
        "CEM_KAFKA__SECURITY__SSL_CAFILE": str(tls / "ca.pem"),
    }
    stack_dir = ROOT / ".local" / "test-stack-secure"
    shutil.rmtree(stack_dir, ignore_errors=True)  # SCRAM users are written when storage is formatted
    env = {
        **os.environ,
        **STACK_ENV,
        **client_env,
        "CEM_STACK_DIR": str(stack_dir),
        "CEM_KAFKA_PORT": str(SECURE_PORT),
        "CEM_KAFKA_CONTROLLER_PORT": str(SECURE_PORT + 1),
        "CEM_KAFKA_TLS_DIR": str(tls),
        "CEM_KAFKA_SCRAM_USERS": f"admin:{secret['admin']} cem:{secret['cem']}",
        "CEM_KAFKA_HEAP": "512m",
    }
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "kafka-start"], env=env, check=True)
    try:
        yield client_env
    finally:
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), "kafka-stop"], env=env, check=False)


@pytest.fixture(scope="module")
def secure(
    stack: dict[str, str], secure_kafka: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Namespace]:
    """A namespace on the secured broker whose worker writes ClickHouse as `cem_writer` and
    erases as `cem_eraser`: users created by `cem clickhouse users`, limited to its database."""
    tag = uuid.uuid4().hex[:6]
    users = {
        "CEM_CLICKHOUSE__USER": f"cem_writer_{tag}",
        "CEM_CLICKHOUSE__PASSWORD": uuid.uuid4().hex,
        "CEM_CLICKHOUSE__ERASER_USER": f"cem_eraser_{tag}",
        "CEM_CLICKHOUSE__ERASER_PASSWORD": uuid.uuid4().hex,
        "CEM_CLICKHOUSE__ANALYST_USER": f"cem_analyst_{tag}",
        "CEM_CLICKHOUSE__ANALYST_PASSWORD": uuid.uuid4().hex,
        "CEM_CLICKHOUSE__ADMIN_USER": "default",
    }
    with pytest.MonkeyPatch.context() as mp:
        space = make_space(stack, tmp_path_factory.mktemp("secure"), mp, 4, {**secure_kafka, **users})
        users_d = ROOT / ".local" / "test-stack" / "clickhouse" / "users.d"
        made = space.cem("clickhouse", "users", "--xml-dir", str(users_d), check=False)
        assert made.returncode == 0, made.stdout + made.stderr
        assert made.stdout.count("can log in") == 3
        try:
            yield space
        finally:
            for proc in space.procs:
                space.stop_worker(proc)
            (users_d / "cem-users.xml").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def story(secure: Namespace) -> Namespace:
    # The worker never logs in as the eraser (on 18.16 that role may run DDL): with a wrong
    # eraser password it runs as it should, and `cem eraser` does the erasures.
    secure.start_worker(env={"CEM_CLICKHOUSE__ERASER_PASSWORD": "not-the-eraser-password"})
    secure.start_eraser()
    result = secure.cem("produce", str(STORY), "--wait-profiles", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    wait_until_processed(secure.settings, timeout_s=120)
    return secure


def test_airline_story_through_sasl_ssl_with_least_privilege_users(story: Namespace) -> None:
    check_expected(story)  # written by the writer user, read back here
    log = story.worker_log()
    assert "Traceback" not in log
    assert story.settings.kafka.security.password.get_secret_value() not in log
    # the alert delivery service reads and writes the same secured broker
    opened = int(story.ch().execute(f"SELECT count() FROM {story.db}.friction_alerts WHERE status = 'open'")[0][0])
    service = Delivery(story, [{"name": "all", "to": [{"type": "log"}]}]).start()
    try:
        deadline = time.monotonic() + 60
        while _delivered(service.metrics()) < opened:
            assert time.monotonic() < deadline, service.metrics()
            time.sleep(0.3)
    finally:
        assert service.stop() == 0


def _delivered(metrics: dict[str, float]) -> float:
    return sum(
        v for k, v in metrics.items() if k.startswith("cem_alert_deliveries_total") and 'outcome="delivered"' in k
    )


def test_clickhouse_users_can_do_their_job_and_nothing_more(story: Namespace) -> None:
    cfg, db = story.settings.clickhouse, story.db
    admin = connect(cfg.as_role("admin"), "default")
    admin.execute("CREATE TABLE IF NOT EXISTS default.cem_test_other (a UInt8) ENGINE = Memory")
    writer, eraser, analyst = (connect(cfg.as_role(r)) for r in ("writer", "eraser", "analyst"))

    def refused(client: Any, sql: str, codes: set[int]) -> None:
        with pytest.raises(ServerException) as e:
            client.execute(sql)
        assert e.value.code in codes, (sql, e.value.code, e.value.message)

    writer.execute(f"INSERT INTO {db}.erasure_receipts (request_id) VALUES", [("writer-can-insert",)])
    for sql in (
        f"DROP TABLE {db}.timeline_versions",
        f"ALTER TABLE {db}.timeline_versions DELETE WHERE 1",
        f"ALTER TABLE {db}.timeline_versions ADD COLUMN x UInt8",
        f"CREATE TABLE {db}.x (a UInt8) ENGINE = Memory",
        f"TRUNCATE TABLE {db}.timeline_versions",
    ):
        refused(writer, sql, DENIED)
    refused(writer, "SELECT count() FROM default.cem_test_other", DB_DENIED)

    assert analyst.execute(f"SELECT count() FROM {db}.timeline")[0][0] > 0
    refused(analyst, f"INSERT INTO {db}.erasure_receipts (request_id) VALUES ('x')", READONLY)
    refused(analyst, f"DROP TABLE {db}.timeline_versions", READONLY)
    refused(analyst, "SELECT count() FROM default.cem_test_other", DB_DENIED)

    eraser.execute(f"ALTER TABLE {db}.timeline_versions DELETE WHERE customer_id = 'nobody'")
    refused(eraser, "SELECT count() FROM default.cem_test_other", DB_DENIED)
    # nothing was lost on the way: the table is still whole
    assert (
        writer.execute(f"SELECT count() FROM {db}.timeline")[0][0]
        == analyst.execute(f"SELECT count() FROM {db}.timeline")[0][0]
    )


def test_wrong_credentials_fail_fast_with_a_clear_error(story: Namespace) -> None:
    env = story.env
    password = env["CEM_KAFKA__SECURITY__PASSWORD"]
    cases = [
        ({"CEM_KAFKA__SECURITY__PASSWORD": "wrong-" + password[:4]}, "rejected the credentials of user 'cem'"),
        ({"CEM_KAFKA__SECURITY__USERNAME": "mallory"}, "rejected the credentials of user 'mallory'"),
        ({"CEM_KAFKA__SECURITY__SSL_CAFILE": "/etc/ssl/certs/ca-certificates.crt"}, "TLS handshake failed"),
        ({"CEM_KAFKA__SECURITY__PROTOCOL": "SASL_PLAINTEXT"}, "did not accept a SASL_PLAINTEXT connection"),
        ({"CEM_KAFKA__SECURITY__PROTOCOL": "PLAINTEXT"}, "if the broker requires TLS or SASL"),
    ]
    for change, says in cases:
        for command in (["topics", "create"], ["worker", "--web-port", str(free_port())]):
            started = time.monotonic()
            r = subprocess.run(
                [*_cem(), *command], env={**env, **change}, text=True, capture_output=True, timeout=90, cwd=ROOT
            )
            took = time.monotonic() - started
            assert r.returncode == 3, (change, command, r.stdout[-2000:], r.stderr[-2000:])
            assert says in " ".join(r.stderr.split()), (change, r.stderr)
            assert password not in r.stdout + r.stderr
            assert took < 30, f"{command} took {took:.0f}s to give up"
    # ClickHouse: a wrong password for the writer stops the worker at once, without printing it
    r = subprocess.run(
        [*_cem(), "worker", "--web-port", str(free_port())],
        env={**env, "CEM_CLICKHOUSE__PASSWORD": "not-the-password"},
        text=True, capture_output=True, timeout=90, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 3 and "refused user" in r.stderr and story.settings.clickhouse.user in r.stderr, r.stderr
    assert "not-the-password" not in r.stdout + r.stderr


def test_the_sasl_password_stays_out_of_the_kafka_clients_debug_logs(
    secure_kafka: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of client cem builds, at DEBUG, through the SASL_SSL broker: kafka-python
    logs an admin client's whole configuration at DEBUG."""
    import asyncio
    import io
    import logging

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka.admin import NewTopic

    from pipeline.kafka import clients
    from pipeline.kafka.admin import admin_client, ensure_topics
    from pipeline.settings import load_settings

    for key, value in secure_kafka.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    password = s.kafka.security.password.get_secret_value()
    topic = f"debug-log-{uuid.uuid4().hex[:8]}"
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    loggers = [logging.getLogger(name) for name in ("kafka", "aiokafka")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
    try:
        ensure_topics(s, [NewTopic(topic, 1, 1)])
        admin = admin_client(s)
        assert topic in admin.list_topics()
        admin.close()
        prod = producer(s)
        send_all(prod, [Record(topic, b"k", b"v")])
        prod.close()
        assert [r.value for r in read_to_end(s, topic)] == [b"v"]

        async def with_aiokafka() -> None:
            p = AIOKafkaProducer(**clients.aiokafka(s.kafka))
            await p.start()
            await p.send_and_wait(topic, b"w")
            await p.stop()
            c = AIOKafkaConsumer(topic, **clients.aiokafka(s.kafka), auto_offset_reset="earliest")
            await c.start()
            await c.getmany(timeout_ms=2000)
            await c.stop()

        asyncio.run(with_aiokafka())
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.removeHandler(handler)
            log.setLevel(level)
    logged = out.getvalue()
    assert "Starting KafkaAdminClient with configuration" in logged and "sasl_plain_password" in logged
    assert password not in logged


def test_config_check_hides_every_secret(story: Namespace) -> None:
    r = story.cem("config", "check")
    s = story.settings
    secrets = [
        s.kafka.security.password.get_secret_value(),
        s.clickhouse.password.get_secret_value(),
        s.clickhouse.eraser_password.get_secret_value(),
        s.clickhouse.analyst_password.get_secret_value(),
        s.privacy.fingerprint_secret.get_secret_value(),
    ]
    assert all(secrets)
    assert not [x for x in secrets if x in r.stdout]
    assert r.stdout.count("**********") >= len(secrets)


def test_erasure_removes_the_customer_everywhere_and_prints_a_receipt(story: Namespace) -> None:
    s, db, cid = story.settings, story.db, "C-1042"
    ch = story.ch()
    before_rows = ch.execute(f"SELECT count() FROM {db}.timeline_versions WHERE customer_id = %(c)s", {"c": cid})[0][0]
    before_alerts = ch.execute(
        f"SELECT count() FROM {db}.friction_alert_versions WHERE customer_id = %(c)s", {"c": cid}
    )[0][0]
    others = ch.execute(f"SELECT count() FROM {db}.timeline WHERE customer_id != %(c)s", {"c": cid})[0][0]
    assert before_rows > 0 and before_alerts > 0 and others > 0
    owned_before = _identity_owned_by(story, cid)
    assert owned_before, "the story's customer has identity entries to remove"

    r = story.cem("erase", cid, "--by", "dpo@example.test", "--timeout", "180", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    receipt = ErasureReceipt.model_validate_json(r.stdout.strip().splitlines()[-1])
    assert receipt.requested_by == "dpo@example.test" and receipt.verified
    assert receipt.subject == fingerprint("customer_id", cid, s.secret) and cid not in receipt.model_dump_json()
    assert receipt.removed.timeline_rows == before_rows and receipt.removed.alert_rows == before_alerts
    assert receipt.removed.customer_state == 1 and receipt.removed.identity_entries == len(owned_before)
    assert f"timeline rows {before_rows}" in r.stdout

    # nothing of the customer is queryable afterwards, in any table of the database
    assert _tables_mentioning(story, cid) == {}
    assert ch.execute(f"SELECT count() FROM {db}.timeline WHERE customer_id != %(c)s", {"c": cid})[0][0] == others
    # the receipt is recorded, with counts only
    [(req, subject)] = ch.execute(
        f"SELECT request_id, subject FROM {db}.erasure_receipts FINAL WHERE request_id = %(r)s",
        {"r": receipt.request_id},
    )
    assert subject == receipt.subject
    # the identity index no longer resolves any of the customer's identifiers
    assert _identity_owned_by(story, cid) == set()
    # the stream state is gone: the customer's next contact starts from nothing
    topic = s.kafka.topics.callcenter
    nxt = {"event_id": "after-erase-1", "occurred_at": "2026-03-21T09:00:00Z", "type": "call",
           "reason": "refund_status", "agent_id": "A-9", "queue": "general", "duration_s": 60,
           "outcome": "unresolved", "customer_id": cid}  # fmt: skip
    prod = producer(s)
    send_all(prod, [Record(topic, None, _json(nxt))])
    prod.close()
    wait_until_processed(s, timeout_s=60)
    rows = ch.execute(f"SELECT event_id, friction, contact FROM {db}.timeline WHERE customer_id = %(c)s", {"c": cid})
    assert rows == [("after-erase-1", [], "new")]

    # a CRM's own tombstone (no headers) erases too, attributed to the CRM
    other = "C-2077"
    assert _tables_mentioning(story, other)
    before = len(read_to_end(s, s.kafka.topics.erasure_receipts))
    prod = producer(s)
    send_all(prod, [Record(s.kafka.topics.profiles, other.encode(), None)])
    prod.close()
    deadline = time.monotonic() + 120
    while len(receipts := read_to_end(s, s.kafka.topics.erasure_receipts)) == before:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    crm = ErasureReceipt.model_validate_json(receipts[-1].value)
    assert crm.requested_by == "crm" and crm.request_id.startswith(s.kafka.topics.profiles + ":")
    assert _tables_mentioning(story, other) == {}


def _identity_owned_by(ns: Namespace, cid: str) -> set[str]:
    latest: dict[bytes, bytes | None] = {}
    for rec in read_to_end(ns.settings, ns.settings.kafka.topics.identity):
        latest[rec.key] = rec.value
    return {k.decode() for k, v in latest.items() if v == cid.encode()}


def _tables_mentioning(ns: Namespace, needle: str) -> dict[str, int]:
    """Rows holding `needle` in any String or Array(String) column of any table of the database."""
    ch = connect(ns.settings.clickhouse.as_role("admin"), "default")
    columns = ch.execute(
        "SELECT c.table, c.name, c.type FROM system.columns AS c "
        "WHERE c.database = %(db)s AND (c.type LIKE '%%String%%') "
        "AND c.table IN (SELECT name FROM system.tables WHERE database = %(db)s AND engine NOT LIKE '%%View')",
        {"db": ns.db},
    )
    found: dict[str, int] = {}
    for table, column, typ in columns:
        cond = f"has({column}, %(n)s)" if typ.startswith("Array") else f"position(toString({column}), %(n)s) > 0"
        n = ch.execute(f"SELECT count() FROM {ns.db}.{table} WHERE {cond}", {"n": needle})[0][0]
        if n:
            found[f"{table}.{column}"] = n
    return found


def _json(value: dict[str, Any]) -> bytes:
    import json

    return json.dumps(value).encode()


def _cem() -> list[str]:
    import sys

    return [sys.executable, "-m", "pipeline.ops.cli"]
