"""Numbered migrations: `migrations/NNNN_name.sql`, applied in order, recorded, safe to re-run.

Each file may hold several statements separated by `;` at the end of a line; `{db}` is the
configured database. Applied versions are recorded in `{db}.schema_migrations`. A file whose
header says `-- requires: clickhouse >= X.Y` is skipped on older servers and *not* recorded,
so upgrading the server and re-running `cem migrate` applies it then.

With `clickhouse.cluster` named, the same files run `ON CLUSTER` in their cluster form
(sinks/clickhouse/cluster.py), and the ledger is replicated to every server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sinks.clickhouse import cluster as on_cluster

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_REQUIRES = re.compile(r"^--\s*requires:\s*clickhouse\s*>=\s*([\d.]+)\s*$", re.MULTILINE)
#: the tables whose rows age out when clickhouse.retention_days is set
RETENTION_TABLES = ("timeline_versions", "friction_alert_versions")
TTL_MIN_VERSION = (20, 1)


class Executor(Protocol):
    """What the migrator needs of a connection (clickhouse-driver's Client has it)."""

    def execute(self, query: str, params: Any = None) -> Any: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    @property
    def requires(self) -> tuple[int, ...]:
        m = _REQUIRES.search(self.sql)
        return tuple(int(p) for p in m.group(1).split(".")) if m else ()

    def statements(self, db: str) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        parts = re.split(r";\s*$", text.replace("{db}", db), flags=re.MULTILINE)
        return [p.strip() for p in parts if p.strip()]

    def cluster_statements(self, db: str, cluster: str) -> list[str]:
        """The statements that apply this migration to every server of `cluster`."""
        return [out for statement in self.statements(db) for out in on_cluster.rewrite(statement, db, cluster)]


@dataclass
class Outcome:
    applied: list[Migration] = field(default_factory=list)
    skipped: list[Migration] = field(default_factory=list)  # the server is too old for them
    retention: str = ""


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.iterdir()):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {directory}")
    return found


def server_version(client: Executor) -> tuple[int, ...]:
    ((version,),) = client.execute("SELECT version()")
    return tuple(int(p) for p in str(version).split(".") if p.isdigit())


def _ensure_ledger(client: Executor, db: str, cluster: str = "") -> None:
    if cluster:
        # ON CLUSTER waits for every server: only when this one has no ledger yet, so that
        # `cem migrate --status` still answers while a server is away
        if client.execute(f"EXISTS TABLE {db}.schema_migrations") != [(1,)]:
            for statement in on_cluster.ledger_ddl(db, cluster):
                client.execute(statement)
        return
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime('UTC')) "
        "ENGINE = MergeTree() ORDER BY version"
    )


def applied(client: Executor, db: str, cluster: str = "") -> dict[int, tuple[str, str, datetime]]:
    _ensure_ledger(client, db, cluster)
    rows = client.execute(f"SELECT version, name, checksum, applied_at FROM {db}.schema_migrations ORDER BY version")
    return {int(v): (n, c, a) for v, n, c, a in rows}


def migrate(
    client: Executor, db: str, retention_days: int = 0, directory: Path = MIGRATIONS_DIR, cluster: str = ""
) -> Outcome:
    """Apply pending migrations in order, then set the retention TTL where the server has TTL.
    With `cluster`, on every server of that cluster (each statement waits for all of them)."""
    done = applied(client, db, cluster)
    version = server_version(client)
    out = Outcome()
    for mig in discover(directory):
        if mig.version in done:
            continue
        if mig.requires and version < mig.requires:
            out.skipped.append(mig)
            continue
        for statement in mig.cluster_statements(db, cluster) if cluster else mig.statements(db):
            client.execute(statement)
        at = datetime.now(UTC).replace(microsecond=0)
        if cluster:  # the checksum is the file's, as on one server; `cluster` says where it ran
            client.execute(
                f"INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at, cluster) VALUES",
                [(mig.version, mig.name, mig.checksum, at, cluster)],
            )
        else:
            client.execute(
                f"INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at) VALUES",
                [(mig.version, mig.name, mig.checksum, at)],
            )
        out.applied.append(mig)
    out.retention = sync_retention(client, db, retention_days, version, cluster)
    return out


def sync_retention(client: Executor, db: str, days: int, version: tuple[int, ...], cluster: str = "") -> str:
    """Make the tables' TTL match clickhouse.retention_days (idempotent; every migrate run).
    On a cluster the TTL is the local tables' (ON CLUSTER): rows expire where they are stored."""
    if version < TTL_MIN_VERSION:
        return "kept forever" if days == 0 else f"not applied: TTL needs ClickHouse >= 20.1 (server {version})"
    tables = on_cluster.local_tables(RETENTION_TABLES) if cluster else list(RETENTION_TABLES)
    where = f" ON CLUSTER {cluster}" if cluster else ""
    for table in tables:
        ((ddl,),) = client.execute(f"SHOW CREATE TABLE {db}.{table}")
        has_ttl = "TTL " in str(ddl)
        if days > 0:
            client.execute(f"ALTER TABLE {db}.{table}{where} MODIFY TTL occurred_at + toIntervalDay({int(days)})")
        elif has_ttl:
            client.execute(f"ALTER TABLE {db}.{table}{where} REMOVE TTL")
    return f"rows expire {days} days after occurred_at" if days > 0 else "kept forever"
