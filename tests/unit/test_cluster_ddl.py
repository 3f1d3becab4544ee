"""The cluster form of the migrations is derived from the single-server files, which stay as
they are. tests/integration_cluster runs it on a real cluster."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sinks.clickhouse import cluster
from sinks.clickhouse.client import connect
from sinks.clickhouse.erasure import ERASABLE, ErasureIncomplete, delete_customer
from sinks.clickhouse.migrate import discover
from sinks.clickhouse.settings import ClickHouseSettings

# Recorded in every database's schema_migrations: an applied migration never changes.
APPLIED_CHECKSUMS = {
    1: "eb2b623ad77873a2", 2: "2d94976ffefda80f", 3: "cc29fd7c8fdaa07e", 4: "7ee67ae60e5bc49c",
    5: "1492f08875c594ab", 6: "b3cd357ca6e57ba1", 7: "d4cef0e598b14a07", 8: "d60a65e5be841ec1",
}  # fmt: skip


def test_single_server_migrations_are_unchanged() -> None:
    got = {m.version: m.checksum for m in discover() if m.version in APPLIED_CHECKSUMS}
    assert got == APPLIED_CHECKSUMS


@pytest.mark.parametrize("mig", discover(), ids=lambda m: m.name)
def test_every_statement_has_a_cluster_form(mig: object) -> None:
    statements = mig.cluster_statements("cem", "c1")  # type: ignore[attr-defined]
    assert statements
    for s in statements:
        assert " ON CLUSTER c1" in s or s.startswith("INSERT INTO"), s
        # no single-server table engine is left on a cluster: every table replicates, or is Distributed
        engine = re.search(r"ENGINE\s*=\s*(\w+)", s)
        if engine:
            assert engine[1].startswith("Replicated") or engine[1] == "Distributed", s
        if s.startswith("CREATE MATERIALIZED VIEW"):
            # fires where rows are stored, into a replicated table
            assert re.search(r"TO cem\.\w+_local AS", s) and re.search(r"FROM cem\.\w+_local\b", s), s


def test_tables_are_replicated_per_shard_and_distributed_under_their_own_names() -> None:
    [local, dist] = cluster.rewrite(
        "CREATE TABLE IF NOT EXISTS cem.timeline_versions (customer_id String, v UInt32) "
        "ENGINE = ReplacingMergeTree(v) ORDER BY customer_id",
        "cem",
        "c1",
    )
    assert local.startswith("CREATE TABLE IF NOT EXISTS cem.timeline_versions_local ON CLUSTER c1")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/cem/timeline_versions', '{replica}', v)" in local
    assert dist == (
        "CREATE TABLE IF NOT EXISTS cem.timeline_versions ON CLUSTER c1 AS cem.timeline_versions_local "
        "ENGINE = Distributed(c1, cem, timeline_versions_local, cityHash64(customer_id))"
    )
    # the views analysts read are the single-server ones, over the Distributed tables
    [view] = cluster.rewrite("CREATE VIEW cem.timeline AS SELECT * FROM cem.timeline_versions FINAL", "cem", "c1")
    assert view == "CREATE VIEW cem.timeline ON CLUSTER c1 AS SELECT * FROM cem.timeline_versions FINAL"


def test_an_alter_changes_the_local_tables_and_rebuilds_the_distributed_one() -> None:
    out = cluster.rewrite("ALTER TABLE cem.erasure_receipts ADD COLUMN n UInt32 DEFAULT 0", "cem", "c1")
    assert out[0] == "ALTER TABLE cem.erasure_receipts_local ON CLUSTER c1 ADD COLUMN n UInt32 DEFAULT 0"
    assert out[1] == "DROP TABLE IF EXISTS cem.erasure_receipts ON CLUSTER c1"
    assert "Distributed(c1, cem, erasure_receipts_local, cityHash64(request_id))" in out[2]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE cem.new_table (a String) ENGINE = MergeTree() ORDER BY a",  # no sharding key declared
        "RENAME TABLE cem.a TO cem.b",
        "ALTER TABLE cem.some_view MODIFY QUERY SELECT 1",
    ],
)
def test_a_statement_without_a_known_cluster_form_is_refused(statement: str) -> None:
    with pytest.raises(cluster.NotForCluster):
        cluster.rewrite(statement, "cem", "c1")


def test_on_a_cluster_a_write_returns_only_once_the_shards_have_it() -> None:
    one = connect(ClickHouseSettings())
    assert "insert_distributed_sync" not in one.settings  # one server: as before
    many = connect(ClickHouseSettings(cluster="c1", send_receive_timeout_s=30))
    assert many.settings["insert_distributed_sync"] == 1 and many.settings["insert_distributed_timeout"] == 30


class FakeServer:
    """Answers the erasure's queries like a server holding `rows` rows of the customer until an
    ALTER ... ON CLUSTER reaches it (`done`: shared by every server of the fake cluster)."""

    def __init__(self, rows: int, done: list[bool], lagging: bool = False) -> None:
        self.rows, self.done, self.lagging = rows, done, lagging
        self.sql: list[str] = []

    def execute(self, query: str, params: Any = None) -> Any:
        self.sql.append(query)
        if query.startswith("ALTER"):
            self.done[0] = True
        if "system.mutations" in query:
            return [(0,)]
        return [(self.rows if self.lagging or not self.done[0] else 0,)]


def test_erasure_on_a_cluster_deletes_on_every_shard_and_checks_every_server() -> None:
    done = [False]
    entry, servers = FakeServer(4, done), [FakeServer(4, done), FakeServer(0, done), FakeServer(0, done)]
    before = delete_customer(entry, "cem", "C-1", timeout_s=5, cluster="c1", servers=servers)
    assert before == {"timeline_versions": 4, "friction_alert_versions": 4}
    deletes = [q for q in entry.sql if q.startswith("ALTER")]
    assert deletes == [f"ALTER TABLE cem.{t}_local ON CLUSTER c1 DELETE WHERE customer_id IN %(c)s" for t in ERASABLE]
    # the wait asked each server about its own tables, not the Distributed ones
    for server in servers:
        asked = " ".join(server.sql)
        assert "cem.timeline_versions_local" in asked and "cem.friction_alert_versions_local" in asked
        assert "FROM cem.timeline_versions " not in asked
    # a replica that has not run the mutation yet holds the erasure up
    done = [False]
    with pytest.raises(ErasureIncomplete):
        delete_customer(FakeServer(1, done), "cem", "C-1", timeout_s=0.5, cluster="c1",
                        servers=[FakeServer(0, done), FakeServer(1, done, lagging=True)])  # fmt: skip
