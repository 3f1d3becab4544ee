"""cem on a real ClickHouse cluster (`make test-cluster`): ZooKeeper and three clickhouse-server
processes on loopback, as 2 shards, the second with 2 replicas (scripts/cluster.sh), with the
tables `cem migrate` makes for `clickhouse.cluster`. Kafka is the test session's broker.

* the airline story gives its exact results, each customer's rows on one shard, and the SQL
  kit, `cem timeline` and `cem report` read them as on one server;
* a labelled workload keeps precision and recall at 1.0 while one replica is stopped and
  started again, then a whole shard, then ZooKeeper: no row lost, none visible twice, and
  the replicas agree; the figures (docs/operations.md) are printed;
* erasure by the least-privilege eraser leaves nothing on any server: each server's local
  tables are asked directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka.admin import producer, send_all, send_in_order, wait_until_processed
from sinks.clickhouse import kit
from sinks.clickhouse.client import connect
from sinks.clickhouse.settings import ClickHouseSettings
from tests.integration.conftest import ROOT, Namespace, make_space
from tests.integration.test_airline_story import check_expected, published_alerts
from tests.integration.test_faults import records, wait_until
from tests.integration.test_kill_anywhere import Expected, labelled, verify
from tests.journeys import generate
from tests.kit_dataset import EXPECTED as KIT_EXPECTED
from tests.kit_dataset import load as load_kit
from tests.kit_dataset import normalize
from tests.scenario import STORY, run_pure

pytestmark = pytest.mark.cluster

NAME = os.environ.get("CEM_CLUSTER_NAME", "cem_cluster")
CLUSTER_ENV = {
    "CEM_CLUSTER_DIR": str(ROOT / ".local" / "test-cluster"),
    "CEM_CLUSTER_NAME": NAME,
    "CEM_CLUSTER_ZK_PORT": os.environ.get("CEM_CLUSTER_ZK_PORT", "26181"),
    "CEM_CLUSTER_TCP_BASE": os.environ.get("CEM_CLUSTER_TCP_BASE", "26000"),
    "CEM_CLUSTER_HTTP_BASE": os.environ.get("CEM_CLUSTER_HTTP_BASE", "26100"),
    "CEM_CLUSTER_INTERSERVER_BASE": os.environ.get("CEM_CLUSTER_INTERSERVER_BASE", "26200"),
}
TCP = {n: int(CLUSTER_ENV["CEM_CLUSTER_TCP_BASE"]) + n for n in (1, 2, 3)}
SHARD_OF = {1: 1, 2: 2, 3: 2}
CUSTOMERS = 1200


def cluster_sh(*args: str) -> None:
    subprocess.run([str(ROOT / "scripts" / "cluster.sh"), *args], env={**os.environ, **CLUSTER_ENV}, check=True)


@pytest.fixture(scope="session")
def cluster(stack: dict[str, str]) -> Iterator[dict[str, str]]:
    cluster_sh("wipe")
    cluster_sh("up")
    yield CLUSTER_ENV
    cluster_sh("down")


def node(n: int) -> Any:
    """A connection to one server, as the administrator (the local stack's `default`)."""
    return connect(ClickHouseSettings(port=TCP[n]), "default")


def cluster_space(
    stack: dict[str, str], tmp: Path, mp: pytest.MonkeyPatch, entry: int = 1, extra: dict[str, str] | None = None
) -> Namespace:
    env = {"CEM_CLICKHOUSE__PORT": str(TCP[entry]), "CEM_CLICKHOUSE__CLUSTER": NAME, **(extra or {})}
    return make_space(stack, tmp, mp, 4, env)


@pytest.fixture
def cspace(
    stack: dict[str, str], cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Namespace]:
    space = cluster_space(stack, tmp_path, monkeypatch)
    try:
        yield space
    finally:
        for proc in space.procs:
            space.stop_worker(proc)


def local_rows(n: int, db: str, table: str, what: str = "count()", where: str = "1") -> Any:
    return node(n).execute(f"SELECT {what} FROM {db}.{table}_local WHERE {where}")


def sync_replicas(db: str) -> None:
    for n in (1, 2, 3):
        for table in ("timeline_versions", "friction_alert_versions"):
            node(n).execute(f"SYSTEM SYNC REPLICA {db}.{table}_local")


def test_tables_are_replicated_local_tables_behind_distributed_ones(cspace: Namespace) -> None:
    db = cspace.db
    for n in (1, 2, 3):
        engines = dict(node(n).execute(f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
        assert engines["timeline_versions_local"] == "ReplicatedReplacingMergeTree"
        assert engines["friction_alert_versions_local"] == "ReplicatedReplacingMergeTree"
        assert engines["kpi_daily_local"] == "ReplicatedAggregatingMergeTree"
        assert engines["timeline_versions"] == engines["friction_alert_versions"] == "Distributed"
        assert engines["timeline"] == engines["friction_alerts"] == engines["kpi_daily_view"] == "View"
        # the ledger is replicated to every server, and says where the migrations ran
        node(n).execute(f"SYSTEM SYNC REPLICA {db}.schema_migrations")
        done = node(n).execute(f"SELECT version, cluster FROM {db}.schema_migrations ORDER BY version")
        assert [v for v, _ in done] == [1, 2, 3, 4, 6, 7, 8, 9] and {c for _, c in done} == {NAME}
    again = cspace.cem("migrate")
    assert "applied 0 migration(s)" in again.stdout, again.stdout + again.stderr


def test_airline_story_on_the_cluster(cspace: Namespace) -> None:
    ns, db = cspace, cspace.db
    ns.start_worker()
    result = ns.cem("produce", str(STORY), "--wait-profiles", check=False)
    assert result.returncode == 0 and "produced 10 message(s)" in result.stdout, result.stderr[-3000:]
    wait_until_processed(ns.settings, timeout_s=120)

    alerts = check_expected(ns)
    open_ids = {a["alert_id"] for a in alerts if a["status"] == "open"}
    assert {i for i, a in published_alerts(ns).items() if a.status == "open"} == open_ids
    timeline = ns.cem("timeline", "C-1042").stdout
    assert timeline.count("REPEAT CONTACT") == 2 and "RE-ENTERED" in timeline and "w-3 (by email)" in timeline

    # sharded by customer: each customer's rows on one shard, the same on both of its replicas
    sync_replicas(db)
    where = {n: dict(local_rows(n, db, "timeline_versions", "customer_id, count()", "1 GROUP BY customer_id"))
             for n in (1, 2, 3)}  # fmt: skip
    assert where[2] == where[3]
    assert not set(where[1]) & set(where[2])
    assert set(where[1]) | set(where[2]) == set(dict(ns.ch().execute(f"SELECT customer_id, 1 FROM {db}.timeline")))

    # the SQL kit and the report read the Distributed tables as they read one server's
    report = ns.cem("report", "--out", str(ns.tmp / "report.html"), check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "C-1042" in (ns.tmp / "report.html").read_text()


def test_sql_kit_on_the_cluster(cspace: Namespace) -> None:
    client, db = cspace.ch(), cspace.db
    load_kit(client, db)  # through the Distributed tables, sharded by customer
    for name, want in KIT_EXPECTED.items():
        columns, rows = kit.run(client, kit.queries()[name], **kit.default_params(db, 7))
        assert normalize(rows) == want, (name, columns)
    rows = client.execute(
        f"SELECT matter, sum(contacts), sum(repeat_contacts), sum(repeat_contact_alerts) FROM {db}.kpi_daily_view "
        "WHERE matter != '' GROUP BY matter ORDER BY matter"
    )
    assert rows == [("baggage_allowance", 4, 2, 2), ("refund_status", 4, 1, 1), ("seat_selection", 1, 0, 0)]


@pytest.fixture(scope="module")
def expected() -> Expected:
    j = generate(CUSTOMERS, seed=23)
    pure = run_pure(j.lines)
    opened = pure.open_alerts()
    # the labels are the whole truth for the kinds they label; the rule file's other rules are
    # checked against event-time order (test_kill_anywhere.labelled)
    assert {labelled(a["kind"], a["customer_id"], a["matter"] or a["field"]) for a in opened.values()} - {None} == (
        j.labels
    )
    return Expected(j, pure, set(opened))


def test_replica_and_shard_outages_while_the_worker_writes(
    stack: dict[str, str], cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: Expected
) -> None:
    """The worker writes through node 1 (shard 1). Node 2, a replica of shard 2, is stopped for
    a quarter of the stream: node 1 must send shard 2's rows to node 3. Then all of shard 2
    (nodes 2 and 3) is stopped for a while and started again; then ZooKeeper."""
    space = cluster_space(stack, tmp_path, monkeypatch, entry=1)
    db = space.db
    try:
        recs = records(space, expected.journeys.lines)
        profiles = [r for r in recs if r.topic == space.settings.kafka.topics.profiles]
        touches = [r for r in recs if r.topic != space.settings.kafka.topics.profiles]
        parts = [touches[k * len(touches) // 4 : (k + 1) * len(touches) // 4] for k in range(4)]
        space.start_worker()
        prod = producer(space.settings)
        started = time.monotonic()
        send_in_order(prod, profiles + parts[0], space.settings.kafka.topics.profiles)
        wait_until_processed(space.settings, timeout_s=300)
        healthy_s = time.monotonic() - started

        # one replica of shard 2 away: shard 2's rows go to the other one
        cluster_sh("stop-node", "2")
        started = time.monotonic()
        send_all(prod, parts[1])
        wait_until_processed(space.settings, timeout_s=300)
        replica_down_s = time.monotonic() - started
        errors_replica = space.stats()["clickhouse_errors"]
        on_3 = local_rows(3, db, "timeline_versions")[0][0]
        cluster_sh("start-node", "2")
        started = time.monotonic()
        wait_until(lambda: local_rows(2, db, "timeline_versions")[0][0] >= on_3, 120, "node 2 to catch up")
        catch_up_s = time.monotonic() - started

        # shard 2 away: every write with rows for it fails and is retried; nothing is
        # committed meanwhile, and the worker goes on once the shard is back
        cluster_sh("stop-node", "2")
        cluster_sh("stop-node", "3")
        outage_started = time.monotonic()
        send_all(prod, parts[2])
        stall(space, errors_replica, "a shard was away")
        cluster_sh("start-node", "2")
        cluster_sh("start-node", "3")
        back = time.monotonic()
        wait_until_processed(space.settings, timeout_s=300)
        shard_outage_s, resume_s = back - outage_started, time.monotonic() - back
        errors_shard = space.stats()["clickhouse_errors"]

        # ZooKeeper away: the replicated tables turn read-only, inserts fail (code 242) and are
        # retried; the servers take new sessions once it is back
        cluster_sh("stop-zookeeper")
        outage_started = time.monotonic()
        send_all(prod, parts[3])
        prod.close()
        stall(space, errors_shard, "ZooKeeper was away")
        cluster_sh("start-zookeeper")
        back = time.monotonic()
        wait_until_processed(space.settings, timeout_s=300)
        zk_outage_s, zk_resume_s = back - outage_started, time.monotonic() - back
        stats = space.stats()

        sync_replicas(db)
        for table in ("timeline_versions", "friction_alert_versions"):
            a = local_rows(2, db, table, "count(), uniqExact(*)")
            b = local_rows(3, db, table, "count(), uniqExact(*)")
            assert a == b, (table, a, b)  # the replicas of shard 2 hold the same rows
        # sharded by customer: every customer's rows on one shard, and both shards in use
        shard_1, shard_2 = (
            {c for (c,) in local_rows(n, db, "timeline_versions", "DISTINCT customer_id")} for n in (1, 2)
        )
        assert shard_1 and shard_2 and not shard_1 & shard_2, (len(shard_1), len(shard_2), len(shard_1 & shard_2))
        verify(space, expected)  # exact results: none lost, none twice, precision and recall 1.0
        print(
            f"\n  cluster outage figures ({len(touches)} touchpoints, {CUSTOMERS} customers, worker on node 1;"
            f" customer keys on shard 01: {len(shard_1)}, on shard 02: {len(shard_2)}):"
            f"\n    healthy: profiles and the first quarter in {healthy_s:.1f}s"
            f"\n    replica ch2 stopped: second quarter in {replica_down_s:.1f}s, {errors_replica} failed writes;"
            f" ch2 caught up {catch_up_s:.1f}s after its start"
            f"\n    shard 02 stopped {shard_outage_s:.1f}s: {errors_shard - errors_replica} failed writes"
            f" (retried), no row written meanwhile; lag cleared {resume_s:.1f}s after the shard was back"
            f"\n    ZooKeeper stopped {zk_outage_s:.1f}s: {stats['clickhouse_errors'] - errors_shard} failed writes"
            f" (retried), no row written meanwhile; lag cleared {zk_resume_s:.1f}s after it was back"
        )
    finally:
        for proc in space.procs:
            space.stop_worker(proc)
        cluster_sh("start-zookeeper")
        for n in ("2", "3"):
            cluster_sh("start-node", n)


def stall(space: Namespace, errors_before: int, what: str) -> None:
    """Wait for a failed write, then check that nothing is written for a while."""
    wait_until(lambda: space.stats()["clickhouse_errors"] > errors_before, 60, "a failed write")
    time.sleep(10)
    written = space.stats()["timeline_rows_written"]
    time.sleep(2)
    assert space.stats()["timeline_rows_written"] == written, f"rows written while {what}"


def test_least_privilege_users_and_erasure_leave_nothing_on_any_server(
    stack: dict[str, str], cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    space = cluster_space(stack, tmp_path, monkeypatch, extra=users)
    db, cid = space.db, "C-1042"
    users_dirs = [Path(CLUSTER_ENV["CEM_CLUSTER_DIR"]) / f"node{n}" / "users.d" for n in (1, 2, 3)]
    try:
        for n, users_d in zip((1, 2, 3), users_dirs, strict=True):  # the same users on every server
            made = subprocess.run(
                [sys.executable, "-m", "pipeline.ops.cli", "clickhouse", "users", "--xml-dir", str(users_d)],
                env={**space.env, "CEM_CLICKHOUSE__PORT": str(TCP[n])}, text=True, capture_output=True, check=False,
            )  # fmt: skip
            assert made.returncode == 0 and made.stdout.count("can log in") == 3, made.stdout + made.stderr
        space.start_worker()  # writes as the writer
        space.start_eraser()  # erases as the eraser
        result = space.cem("produce", str(STORY), "--wait-profiles", check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        wait_until_processed(space.settings, timeout_s=120)
        check_expected(space)
        # the analyst reads through the Distributed tables: kit, timeline
        shown = space.cem("timeline", cid)
        assert shown.stdout.count("REPEAT CONTACT") == 2, shown.stdout + shown.stderr
        ran = space.cem("kit", "run", "top_customers_by_friction", check=False)
        assert ran.returncode == 0 and cid in ran.stdout, ran.stdout + ran.stderr

        sync_replicas(db)
        holders = [n for n in (1, 2, 3) if local_rows(n, db, "timeline_versions", where=f"customer_id = '{cid}'")[0][0]]
        assert holders in ([1], [2, 3]), holders  # one shard, and every replica of it
        others = space.ch().execute(f"SELECT count() FROM {db}.timeline WHERE customer_id != %(c)s", {"c": cid})[0][0]

        r = space.cem("erase", cid, "--by", "dpo@example.test", "--timeout", "180", check=False)
        assert r.returncode == 0, r.stdout + r.stderr + space.tmp.joinpath("eraser.log").read_text()[-3000:]
        assert "verified: True" in r.stdout
        sync_replicas(db)
        for n in (1, 2, 3):  # every server, its own tables, directly
            for table in ("timeline_versions", "friction_alert_versions"):
                assert local_rows(n, db, table, where=f"customer_id = '{cid}'") == [(0,)], (n, table)
            pending = node(n).execute(
                f"SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0"
            )  # fmt: skip
            assert pending == [(0,)], n
        assert space.ch().execute(f"SELECT count() FROM {db}.timeline WHERE customer_id != %(c)s", {"c": cid}) == [
            (others,)
        ]
        receipts = space.ch().execute(f"SELECT count() FROM {db}.erasure_receipts FINAL")
        assert receipts == [(1,)]
    finally:
        for proc in space.procs:
            space.stop_worker(proc)
        for users_d in users_dirs:
            (users_d / "cem-users.xml").unlink(missing_ok=True)
