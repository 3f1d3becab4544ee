"""The cluster form of the migrations (`clickhouse.cluster` set), derived from the same files.

The numbered migrations are written for one server. On a cluster each statement is rewritten,
so there is one definition of every table and view, and the single-server files (and their
recorded checksums) stay as they are:

* a `*MergeTree` table `X` becomes `X_local`, created `ON CLUSTER` as `Replicated*MergeTree`
  under `/clickhouse/tables/{shard}/<db>/X` with the `{replica}` macro, plus a `Distributed`
  table under the name `X` that shards by the key in SHARDING. Readers and writers keep the
  names they use on one server;
* plain views are created `ON CLUSTER` unchanged: they read the Distributed tables, and a
  `FINAL` through a Distributed table is done by each shard on its own rows (docs/analysts.md);
* materialized views are attached to the local tables (`FROM X_local`, `TO Y_local`): they
  fire on the replica that receives an insert, and their target table replicates;
* `ALTER TABLE X` alters `X_local ON CLUSTER` (ClickHouse runs it once per shard, on one
  replica), then drops and recreates the Distributed table `X` from it: 18.16 refuses an
  `ALTER ... ON CLUSTER` of a non-replicated table in a cluster whose shards replicate;
* `DROP TABLE` runs `ON CLUSTER`; `INSERT ... SELECT` runs as written (Distributed on both
  sides).

Any other statement is refused with an error, so a new kind of migration cannot silently do
the wrong thing on a cluster.
"""

from __future__ import annotations

import re

LOCAL = "_local"
#: how each table's rows are spread over the shards. Every version of a row, and every row of
#: a customer, must land on one shard: ReplacingMergeTree collapses versions per shard only,
#: and the detections read one customer's rows together.
SHARDING = {
    "timeline_versions": "cityHash64(customer_id)",
    "friction_alert_versions": "cityHash64(customer_id)",
    "erasure_receipts": "cityHash64(request_id)",
    # aggregate states of ids, merged across shards when read: any spread is right
    "kpi_daily": "rand()",
}
ZK_ROOT = "/clickhouse/tables"

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE (?:IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)\((?P<args>[^)]*)\)(?P<rest>.*)$",
    re.DOTALL,
)
_CREATE_VIEW = re.compile(
    r"^CREATE VIEW (?P<ine>IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s+AS\b(?P<rest>.*)$", re.DOTALL
)
_CREATE_MV = re.compile(
    r"^CREATE MATERIALIZED VIEW (?P<ine>IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s+TO\s+(?P<tdb>\w+)\.(?P<target>\w+)"
    r"\s+AS\b(?P<rest>.*)$",
    re.DOTALL,
)
_ALTER = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<name>\w+)\s+(?P<rest>.*)$", re.DOTALL)
_DROP = re.compile(r"^DROP TABLE (?P<ie>IF EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*$")
_INSERT_SELECT = re.compile(r"^INSERT INTO \w+\.\w+\s+SELECT\b", re.DOTALL)


class NotForCluster(ValueError):
    """A migration statement of a form the cluster rewriting does not know."""


def zk_path(db: str, table: str) -> str:
    return f"{ZK_ROOT}/{{shard}}/{db}/{table}"


def distributed(db: str, name: str, cluster: str) -> str:
    if name not in SHARDING:
        raise NotForCluster(f"table {name} has no sharding key: add it to sinks.clickhouse.cluster.SHARDING")
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{name}{LOCAL} "
        f"ENGINE = Distributed({cluster}, {db}, {name}{LOCAL}, {SHARDING[name]})"
    )


def rewrite(statement: str, db: str, cluster: str) -> list[str]:
    """The statements that do on `cluster` what `statement` does on one server."""
    s = statement.strip()
    if m := _CREATE_TABLE.match(s):
        name, args = m["name"], m["args"].strip()
        if name not in SHARDING:
            raise NotForCluster(f"table {name} has no sharding key: add it to sinks.clickhouse.cluster.SHARDING")
        replicated = f"'{zk_path(db, name)}', '{{replica}}'" + (f", {args}" if args else "")
        return [
            f"CREATE TABLE IF NOT EXISTS {db}.{name}{LOCAL} ON CLUSTER {cluster}\n{m['columns']}\n"
            f"ENGINE = Replicated{m['engine']}({replicated}){m['rest']}",
            distributed(db, name, cluster),
        ]
    if m := _CREATE_MV.match(s):
        target = m["target"] + (LOCAL if m["target"] in SHARDING else "")
        rest = re.sub(
            rf"\bFROM\s+{re.escape(db)}\.(\w+)\b",
            lambda f: f"FROM {db}.{f[1]}{LOCAL if f[1] in SHARDING else ''}",
            m["rest"],
        )
        return [
            f"CREATE MATERIALIZED VIEW {m['ine'] or ''}{m['db']}.{m['name']} ON CLUSTER {cluster} "
            f"TO {m['tdb']}.{target} AS{rest}"
        ]
    if m := _CREATE_VIEW.match(s):
        return [f"CREATE VIEW {m['ine'] or ''}{m['db']}.{m['name']} ON CLUSTER {cluster} AS{m['rest']}"]
    if m := _ALTER.match(s):
        name = m["name"]
        if name not in SHARDING:
            raise NotForCluster(f"ALTER of {name}, which is not a sharded table")
        return [
            f"ALTER TABLE {db}.{name}{LOCAL} ON CLUSTER {cluster} {m['rest']}",
            f"DROP TABLE IF EXISTS {db}.{name} ON CLUSTER {cluster}",
            distributed(db, name, cluster),
        ]
    if m := _DROP.match(s):
        return [f"DROP TABLE {m['ie'] or ''}{m['db']}.{m['name']} ON CLUSTER {cluster}"]
    if _INSERT_SELECT.match(s):
        return [s]
    raise NotForCluster(f"no cluster form for this statement: {s[:80]}...")


def ledger_ddl(db: str, cluster: str) -> list[str]:
    """The database and the migrations ledger on every server. The ledger is one replicated
    table across the whole cluster (no {shard} in its path), so each server knows what ran."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {cluster} "
        "(version UInt32, name String, checksum String, applied_at DateTime('UTC'), cluster String) "
        f"ENGINE = ReplicatedMergeTree('{ZK_ROOT}/all/{db}/schema_migrations', '{{replica}}') ORDER BY version",
    ]


def local_tables(tables: tuple[str, ...] | list[str]) -> list[str]:
    return [t + LOCAL for t in tables]
