"""The SQL kit: ready queries for the metrics contact-centre and CX teams use.

Each file in `queries/` starts with a header saying which question it answers and how the
metric is defined. Placeholders: `{db}` and the parameters below (defaults from config).
Every query runs on ClickHouse 18.16 and 24+ (tests/unit/test_sql_kit.py runs them on both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUERIES_DIR = Path(__file__).with_name("queries")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class KitQuery:
    name: str
    sql: str

    @property
    def question(self) -> str:
        """The header's question, joined across its indented continuation lines."""
        parts: list[str] = []
        for line in self.sql.splitlines():
            if line.startswith("-- Question:"):
                parts.append(line.removeprefix("-- Question:").strip())
            elif parts and line.startswith("--   ") and not line[3:].lstrip().startswith(("Definition", "Caveat")):
                parts.append(line[2:].strip())
            elif parts:
                break
        return " ".join(parts)

    @property
    def params(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.sql))

    def render(self, **values: Any) -> str:
        missing = self.params - set(values)
        if missing:
            raise KeyError(f"{self.name} needs {', '.join(sorted(missing))}")
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.sql)


def default_params(db: str, window_days: int) -> dict[str, Any]:
    return {"db": db, "window_days": window_days, "limit": 20, "min_contacts": 1, "funnel_seconds": 30 * 86400}


def queries(directory: Path = QUERIES_DIR) -> dict[str, KitQuery]:
    return {p.stem: KitQuery(p.stem, p.read_text()) for p in sorted(directory.glob("*.sql"))}


def run(client: Any, query: KitQuery, **values: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows (clickhouse-driver's Client, or anything with its execute)."""
    rows, columns = client.execute(query.render(**values), with_column_types=True)
    return [name for name, _ in columns], rows
