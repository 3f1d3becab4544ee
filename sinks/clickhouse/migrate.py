"""Numbered migrations: `migrations/NNNN_name.sql`, applied in order, recorded, safe to re-run.

Each file may hold several statements separated by `;` at the end of a line. `{db}` is
replaced by the configured database. Applied versions are recorded in `{db}.schema_migrations`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_driver import Client

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self, db: str) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.lstrip().startswith("--"))
        parts = re.split(r";\s*$", text.replace("{db}", db), flags=re.MULTILINE)
        return [p.strip() for p in parts if p.strip()]


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


def _ensure_ledger(client: Client, db: str) -> None:
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, checksum String, applied_at DateTime('UTC')) "
        "ENGINE = MergeTree() ORDER BY version"
    )


def applied(client: Client, db: str) -> dict[int, tuple[str, str, datetime]]:
    _ensure_ledger(client, db)
    rows = client.execute(f"SELECT version, name, checksum, applied_at FROM {db}.schema_migrations ORDER BY version")
    return {int(v): (n, c, a) for v, n, c, a in rows}


def migrate(client: Client, db: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations in order; return the ones applied now."""
    done = applied(client, db)
    now_applied = []
    for mig in discover(directory):
        if mig.version in done:
            continue
        for statement in mig.statements(db):
            client.execute(statement)
        client.execute(
            f"INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at) VALUES",
            [(mig.version, mig.name, mig.checksum, datetime.now(UTC).replace(microsecond=0))],
        )
        now_applied.append(mig)
    return now_applied
