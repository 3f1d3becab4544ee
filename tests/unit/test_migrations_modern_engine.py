"""The migrations and the deduplicating views also run on a modern ClickHouse (chdb, 26.x).

The same files run on the Debian 18.16 server in tests/integration; together they keep the
DDL portable. chdb runs in-process, so this needs no server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine.rows import alert_row, timeline_row
from processors.judge import AlertVersion, RowVersion
from processors.model import Touch
from sinks.clickhouse.migrate import discover, migrate
from sinks.clickhouse.writer import ALERT_COLUMNS, TIMELINE_COLUMNS
from tests.chdb_client import ChdbClient, literal


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    client = ChdbClient(str(tmp_path_factory.mktemp("chdb")))
    out = migrate(client, "cem", retention_days=400)
    assert [m.version for m in out.applied] == [m.version for m in discover()]  # 26.x runs them all
    assert out.skipped == [] and out.retention == "rows expire 400 days after occurred_at"
    again = migrate(client, "cem", retention_days=400)
    assert again.applied == [] and again.skipped == []  # safe to re-run
    ((ddl,),) = client.execute("SHOW CREATE TABLE cem.timeline_versions")
    assert "LowCardinality(String)" in ddl and "TTL occurred_at + toIntervalDay(400)" in ddl
    yield client.session
    client.close()


def _insert(sess: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    values = ", ".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows)
    sess.query(f"INSERT INTO cem.{table} ({', '.join(columns)}) VALUES {values}")


def test_migration_files_are_numbered_and_split() -> None:
    migs = discover()
    assert [m.version for m in migs] == sorted(m.version for m in migs)
    assert migs[0].version == 1
    for m in migs:
        assert all(";" not in s.rstrip()[-1:] for s in m.statements("cem"))
        assert all("{db}" not in s for s in m.statements("cem"))


def test_views_show_the_latest_revision_once(chdb_session: Any) -> None:
    now = int(datetime(2026, 3, 5, tzinfo=UTC).timestamp())
    touch = Touch(customer_id="C-1", channel="web", event_id="w-1", t=1_772_700_000_000_000, type="form_submit")
    rows = [timeline_row(RowVersion(touch, (), (), 1), now), timeline_row(RowVersion(touch, ("re_entry",), (), 2), now)]
    # written in two inserts (two parts), as a rewrite after a late event would be
    for row in rows:
        _insert(chdb_session, "timeline_versions", TIMELINE_COLUMNS, [row])
    _insert(chdb_session, "timeline_versions", TIMELINE_COLUMNS, [rows[0]])  # a replay of revision 1
    got = chdb_session.query("SELECT event_id, friction, _version FROM cem.timeline", "CSV").bytes().decode()
    assert got.strip() == '"w-1","[\'re_entry\']",2'

    body = {
        "kind": "re_entry", "customer_id": "C-1", "severity": "high", "t": touch.t, "matter": None,
        "field": "passport_number", "count": 3, "window_days": 30, "channels": ["web"], "distinct_agents": 0,
        "places": ["web:f1"], "known_in_crm": True, "evidence": ["w-1"], "loyalty_tier": "gold",
        "trigger": "w-1", "trigger_channel": "web",
        "summary": "s",
    }  # fmt: skip
    for status, rev in (("open", 1), ("retracted", 2)):
        row = alert_row(AlertVersion("a-1", status, rev, touch.t, body), ("t", 0, 1), now)
        assert len(row) == len(ALERT_COLUMNS)
        _insert(chdb_session, "friction_alert_versions", ALERT_COLUMNS, [row])
    got = chdb_session.query("SELECT alert_id, status, revision FROM cem.friction_alerts", "CSV").bytes().decode()
    assert got.strip() == '"a-1","retracted",2'


def test_migrations_directory_has_only_sql_migrations() -> None:
    here = Path(__file__).resolve().parents[2] / "sinks" / "clickhouse" / "migrations"
    assert {p.suffix for p in here.iterdir()} == {".sql"}
    assert len(list(here.iterdir())) == len(discover())
