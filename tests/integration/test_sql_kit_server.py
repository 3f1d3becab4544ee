"""Migrations and every SQL kit query on the Debian ClickHouse 18.16 server.
tests/unit/test_sql_kit.py runs the same queries on ClickHouse 26 (chdb)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sinks.clickhouse import kit
from sinks.clickhouse.client import connect
from sinks.clickhouse.migrate import applied, discover, migrate
from sinks.clickhouse.settings import ClickHouseSettings
from tests.kit_dataset import EXPECTED, load, normalize


@pytest.fixture(scope="module")
def server(stack: dict[str, str]) -> Iterator[tuple[Any, str]]:
    db = f"cem_kit_{uuid.uuid4().hex[:8]}"
    client = connect(ClickHouseSettings(port=int(stack["CEM_CLICKHOUSE_PORT"])), "default")
    yield client, db
    client.execute(f"DROP DATABASE IF EXISTS {db}")


def test_migrations_on_18_16_apply_once_and_skip_modern_ones(server: tuple[Any, str]) -> None:
    client, db = server
    first = migrate(client, db, retention_days=30)
    portable = [m.version for m in discover() if not m.requires]
    assert [m.version for m in first.applied] == portable
    assert [m.name for m in first.skipped] == ["modern_storage"]  # needs ClickHouse >= 20.1
    assert first.retention.startswith("not applied: TTL needs ClickHouse >= 20.1")
    second = migrate(client, db)
    assert second.applied == [] and set(applied(client, db)) == set(portable)
    tables = {t for (t,) in client.execute(f"SHOW TABLES FROM {db}")}
    assert {"timeline", "timeline_versions", "friction_alerts", "kpi_daily", "kpi_daily_view"} <= tables
    load(client, db)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kit_query_on_clickhouse_18_16(server: tuple[Any, str], name: str) -> None:
    client, db = server
    columns, rows = kit.run(client, kit.queries()[name], **kit.default_params(db, 7))
    assert normalize(rows) == EXPECTED[name], columns


def test_kpi_view_on_18_16(server: tuple[Any, str]) -> None:
    client, db = server
    rows = client.execute(
        f"SELECT matter, sum(contacts), sum(repeat_contacts), sum(repeat_contact_alerts) FROM {db}.kpi_daily_view "
        "WHERE matter != '' GROUP BY matter ORDER BY matter"
    )
    assert rows == [("baggage_allowance", 4, 2, 2), ("refund_status", 4, 1, 1), ("seat_selection", 1, 0, 0)]
