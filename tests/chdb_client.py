"""A clickhouse-driver-like `execute` over chdb (ClickHouse 26 in-process), so the same
migrator and queries run on the modern engine in unit tests."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from chdb import session as chs


def literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, datetime):
        return f"toDateTime('{v:%Y-%m-%d %H:%M:%S}', 'UTC')"
    if isinstance(v, date):
        return f"toDate('{v:%Y-%m-%d}')"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    return str(v)


class ChdbClient:
    def __init__(self, path: str) -> None:
        self.session = chs.Session(path)

    def execute(self, query: str, params: Any = None, with_column_types: bool = False) -> Any:
        q = query.strip()
        if isinstance(params, list):  # INSERT ... VALUES with rows as data, like clickhouse-driver
            values = ", ".join("(" + ", ".join(literal(v) for v in row) + ")" for row in params)
            self.session.query(f"{q} {values}")
            return []
        if isinstance(params, dict):
            q = q % {k: literal(v) for k, v in params.items()}
        head = "\n".join(line for line in q.splitlines() if not line.lstrip().startswith("--")).lstrip()
        if not head.upper().startswith(("SELECT", "SHOW", "WITH")):
            self.session.query(q)
            return []
        out = self.session.query(q, "JSONCompact").bytes()
        doc = json.loads(out) if out else {"data": [], "meta": []}
        types = [m["type"] for m in doc["meta"]]
        # JSON quotes 64-bit integers; give them back as ints like clickhouse-driver does
        rows = [
            tuple(int(v) if isinstance(v, str) and "Int64" in t else v for v, t in zip(row, types, strict=True))
            for row in doc["data"]
        ]
        if with_column_types:
            return rows, [(m["name"], m["type"]) for m in doc["meta"]]
        return rows

    def close(self) -> None:
        self.session.close()
