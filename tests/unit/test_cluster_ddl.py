"""The cluster form of the migrations is derived from the single-server files, which stay as
they are. tests/integration_cluster runs it on a real cluster."""

from __future__ import annotations

import re

import pytest

from sinks.clickhouse import cluster
from sinks.clickhouse.migrate import discover

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
