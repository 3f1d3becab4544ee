"""Security settings, client configuration, least-privilege users and erasure in ClickHouse
(the modern engine, in-process): pure or in-process parts, no servers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine.decode import decode_touchpoint
from pipeline.engine.rows import timeline_row
from pipeline.kafka import clients
from pipeline.settings import FIELD_VOCABULARY, ConfigError, load_settings
from processors.judge import RowVersion
from processors.model import Touch
from schemas.erasure import ErasureReceipt, Removed
from sinks.clickhouse.erasure import ERASABLE, delete_customer, find_receipt, insert_receipt
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.users import PROFILES, UsersError, users_from, users_sql, users_xml
from sinks.clickhouse.writer import TIMELINE_COLUMNS
from tests.chdb_client import ChdbClient


def test_plaintext_by_default_and_every_client_gets_the_same_security(tmp_path: Path) -> None:
    k = load_settings().kafka
    assert clients.kafka_python(k)["security_protocol"] == "PLAINTEXT"
    assert clients.faust_credentials(k) is None

    ca = tmp_path / "ca.pem"
    ca.write_text(_self_signed_pem())
    given = "pw"
    k = load_settings(
        kafka={
            "bootstrap_servers": "b1:9093,b2:9093",
            "security": {"protocol": "SASL_SSL", "username": "cem", "password": given, "ssl_cafile": str(ca)},
        }
    ).kafka
    kp, ak = clients.kafka_python(k), clients.aiokafka(k)
    for cfg in (kp, ak):
        assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_mechanism"] == "SCRAM-SHA-512"
        assert cfg["sasl_plain_username"] == "cem" and cfg["sasl_plain_password"] == given
        assert cfg["ssl_context"].check_hostname
    assert kp["bootstrap_servers"] == ["b1:9093", "b2:9093"] and ak["bootstrap_servers"] == "b1:9093,b2:9093"
    creds: Any = clients.faust_credentials(k)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512" and creds.password == given


@pytest.mark.parametrize(
    ("security", "says"),
    [
        ({"protocol": "SASL_SSL", "username": "cem"}, "kafka.security: SASL_SSL needs username and password"),
        ({"protocol": "SSL", "ssl_cafile": "/nowhere/ca.pem"}, "kafka.security: ssl_cafile: no such file"),
        ({"protocol": "TLS"}, "kafka.security.protocol"),
        ({"protocol": "SASL_PLAINTEXT", "username": "u", "password": "p", "sasl_mechanism": "MD5"}, "sasl_mechanism"),
    ],
)
def test_bad_security_settings_name_the_key(security: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(kafka={"security": security})
    assert says in str(e.value)


def test_secrets_are_hidden_in_the_effective_config() -> None:
    s = load_settings(
        kafka={"security": {"protocol": "SASL_PLAINTEXT", "username": "u", "password": "kafka-pw"}},
        clickhouse={"password": "ch-pw", "eraser_user": "e", "eraser_password": "er-pw"},
    )
    text = repr(s.redacted()) + repr(s)
    assert not [x for x in ("kafka-pw", "ch-pw", "er-pw", "cem-pipeline-dev-secret") if x in text]


def test_clickhouse_roles_fall_back_to_the_writer() -> None:
    ch = load_settings(
        clickhouse={"user": "w", "password": "p", "analyst_user": "a", "analyst_password": "q"}
    ).clickhouse
    assert ch.as_role("eraser") is ch and ch.as_role("admin") is ch
    assert ch.as_role("analyst").user == "a" and ch.as_role("analyst").password.get_secret_value() == "q"


def _users_settings(**changes: str) -> Any:
    base = {
        "user": "cem_writer", "password": "w-pw", "eraser_user": "cem_eraser", "eraser_password": "e-pw",
        "analyst_user": "cem_analyst", "analyst_password": "a-pw",
    }  # fmt: skip
    return load_settings(clickhouse=base | changes).clickhouse


def test_users_xml_has_one_profile_per_role_hashes_only_and_one_database() -> None:
    users = users_from(_users_settings())
    xml = users_xml(users, "cem", ["127.0.0.1"])
    assert "w-pw" not in xml and "e-pw" not in xml and "a-pw" not in xml
    root = ET.fromstring(xml)  # noqa: S314  # our own output
    for u in users:
        node = root.find(f"users/{u.name}")
        assert node is not None
        assert node.findtext("profile") == f"cem_{u.role}"
        assert [d.text for d in node.findall("allow_databases/database")] == ["cem"]
        assert len(node.findtext("password_sha256_hex") or "") == 64
        profile = root.find(f"profiles/cem_{u.role}")
        assert profile is not None
        assert {c.tag: int(c.text or "") for c in profile} == PROFILES[u.role]
    assert PROFILES["writer"]["allow_ddl"] == 0 and PROFILES["analyst"]["readonly"] == 1


def test_users_sql_grants_each_role_only_its_job() -> None:
    sql = users_sql(users_from(_users_settings()), "cem", ["10.0.0.0/8"])
    assert "GRANT INSERT, SELECT ON cem.* TO cem_writer" in sql
    assert "GRANT ALTER DELETE, SELECT ON cem.* TO cem_eraser" in sql
    assert "GRANT SELECT ON cem.* TO cem_analyst" in sql
    assert all("pw" not in s for s in sql) and all("HOST IP '10.0.0.0/8'" in s for s in sql if "USER " in s[:12])


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"analyst_password": ""}, "clickhouse.analyst_password is empty"),
        ({"eraser_user": ""}, "clickhouse.eraser_user is not set"),
        ({"user": "default"}, "may not be 'default'"),
        ({"analyst_user": "cem_writer"}, "three different user names"),
    ],
)
def test_users_need_names_and_passwords(changes: dict[str, str], says: str) -> None:
    with pytest.raises(UsersError) as e:
        users_from(_users_settings(**changes))
    assert says in str(e.value)


def test_a_field_list_holding_a_value_is_rejected_without_quoting_it() -> None:
    raw = b'{"event_id": "w1", "occurred_at": "2026-03-02T10:00:00Z", "type": "form_submit", "customer_id": "C",'
    raw += b' "form": "f", "session_id": "s", "fields": ["ana@example.com", "passport_number"]}'
    now = datetime(2026, 3, 3, tzinfo=UTC)
    kw: Any = {"vocabulary": frozenset(FIELD_VOCABULARY), "now": now, "max_future": now - now, "max_bytes": 10_000}
    got: Any = decode_touchpoint("web", raw, **kw)
    assert got.field == "fields.0" and "ana@example.com" not in got.describe()
    # a value that looks like a name is not quoted either: a surname looks like one
    got = decode_touchpoint("web", raw.replace(b"ana@example.com", b"shoe_size"), **kw)
    assert got.field == "fields.0" and "shoe_size" not in got.describe()


def test_erasure_deletes_one_customer_waits_and_keeps_one_receipt(tmp_path: Path) -> None:
    client = ChdbClient(str(tmp_path / "chdb"))
    migrate(client, "cem")
    now = datetime(2026, 3, 5, tzinfo=UTC)
    for cid, n in (("C-1", 3), ("C-2", 2)):
        for i in range(n):
            t = Touch(customer_id=cid, channel="web", event_id=f"{cid}-{i}", t=1_772_700_000_000_000 + i, type="login")
            client.execute(
                f"INSERT INTO cem.timeline_versions ({', '.join(TIMELINE_COLUMNS)}) VALUES",
                [timeline_row(RowVersion(t, (), (), 1), int(now.timestamp()))],
            )
    assert delete_customer(client, "cem", "C-1") == dict.fromkeys(ERASABLE, 0) | {"timeline_versions": 3}
    assert client.execute("SELECT customer_id, count() FROM cem.timeline_versions GROUP BY customer_id") == [("C-2", 2)]
    assert delete_customer(client, "cem", "C-1") == dict.fromkeys(ERASABLE, 0)  # safe to repeat

    receipt = ErasureReceipt(
        request_id="r-1", subject="fp", requested_by="dpo", requested_at=now, completed_at=now, verified=True,
        removed=Removed(customer_state=1, identity_entries=2, timeline_rows=3, alert_rows=0),
    )  # fmt: skip
    assert find_receipt(client, "cem", "r-1") is None
    insert_receipt(client, "cem", receipt)
    assert find_receipt(client, "cem", "r-1") == receipt
    client.close()


def _self_signed_pem() -> str:
    import tempfile

    from tests.tls import make_ca_and_broker_cert

    with tempfile.TemporaryDirectory() as d:
        return (make_ca_and_broker_cert(Path(d)) / "ca.pem").read_text()
