"""Every SQL kit query on the modern engine (chdb, ClickHouse 26) against the kit dataset.
tests/integration/test_sql_kit_server.py runs the same queries on the 18.16 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sinks.clickhouse import kit
from sinks.clickhouse.migrate import migrate
from tests.chdb_client import ChdbClient
from tests.kit_dataset import EXPECTED, load, normalize


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClient]:
    c = ChdbClient(str(tmp_path_factory.mktemp("kit")))
    migrate(c, "cem")
    load(c, "cem")
    yield c
    c.close()


def test_every_query_has_an_expectation_and_a_header() -> None:
    qs = kit.queries()
    assert set(qs) == set(EXPECTED)
    for q in qs.values():
        assert q.question and "-- Definition" in q.sql, q.name
        assert q.params <= set(kit.default_params("cem", 7)), q.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kit_query_on_modern_engine(client: ChdbClient, name: str) -> None:
    columns, rows = kit.run(client, kit.queries()[name], **kit.default_params("cem", 7))
    assert normalize(rows) == EXPECTED[name], columns


def test_kpi_view_counts_each_touchpoint_once(client: ChdbClient) -> None:
    rows = client.execute(
        "SELECT matter, sum(contacts), sum(repeat_contacts), sum(repeat_contact_alerts) FROM cem.kpi_daily_view "
        "WHERE matter != '' GROUP BY matter ORDER BY matter"
    )
    assert rows == [("baggage_allowance", 4, 2, 2), ("refund_status", 4, 1, 1), ("seat_selection", 1, 0, 0)]
    ((touchpoints,),) = client.execute("SELECT sum(touchpoints) FROM cem.kpi_daily_view")
    ((distinct,),) = client.execute("SELECT count() FROM cem.timeline")
    assert touchpoints == distinct == 20
