"""The ClickHouse sink of the judge agent.

Contract (after snuba and quix-streams): `write(batch)` inserts the batch's timeline rows and
alert revisions, one INSERT per table. The agent calls it before acknowledging the batch's
Kafka offsets, and replays produce the same rows (same sort key, same version), which the
ReplacingMergeTree tables and their FINAL views collapse. Failures are of two kinds:
* transient (the server away, a timeout, too busy, a missing table or a refused login: what
  an operator or time can fix): `write` raises, nothing is committed, and the agent retries;
* permanent, caused by the rows themselves (a value the column cannot hold, a row the
  server's checks reject): the batch is split until the rows ClickHouse refuses are alone;
  the others are written, and `write` returns the refused ones with the reason, for the
  dead-letter topic. Retrying them would stop the partition for good.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException, TypeMismatchError

TIMELINE_COLUMNS = (
    "customer_id", "occurred_at", "event_id", "channel", "type", "matter", "contact", "outcome", "chain", "place",
    "agent_id", "fields", "crm_known", "friction", "reentered_fields", "loyalty_tier", "profile_version", "resolved_by",
    "_topic", "_partition", "_offset", "_version", "ingested_at",
)  # fmt: skip
ALERT_COLUMNS = (
    "alert_id", "status", "kind", "rule_version", "customer_id", "severity", "occurred_at", "detected_at",
    "matter", "field", "count", "window_days", "channels", "distinct_agents", "places",
    "known_in_crm", "evidence", "loyalty_tier", "summary", "trigger_event_id", "trigger_channel", "context", "revision",
    "backfilled",
    "_topic", "_partition", "_offset", "ingested_at",
)  # fmt: skip


class Columns:
    """Rows kept a column at a time until they are inserted: as the driver wants them, and
    without a tuple per row, which the garbage collector would walk (pipeline/engine/memory.py)."""

    __slots__ = ("columns",)

    def __init__(self, width: int) -> None:
        self.columns: list[list[Any]] = [[] for _ in range(width)]

    def add(self, row: tuple[Any, ...]) -> None:
        for column, value in zip(self.columns, row, strict=True):
            column.append(value)

    def __len__(self) -> int:
        return len(self.columns[0])


log = logging.getLogger("cem.clickhouse")

# Server errors caused by the rows of an insert, which the same rows will always cause:
# 6/27/38/41/72 cannot parse, 53 type mismatch, 69 argument out of bound, 70 cannot convert,
# 117 incorrect data, 131 string too large, 321 value out of the type's range, 349 NULL in an
# ordinary column, 395 throwIf (a check in a materialized view). Anything else the server
# says is taken as transient and retried (doc: docs/operations.md, "Failures").
DATA_ERRORS = frozenset({6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 349, 395})
TOO_MANY_PARTS = 252  # also "too many partitions for single INSERT block": smaller blocks pass


def permanent(e: BaseException) -> bool:
    """Whether ClickHouse (or the driver, serializing) refused an insert because of its rows."""
    if isinstance(e, TypeMismatchError | struct.error | OverflowError | UnicodeEncodeError):
        return True  # the driver could not even serialize a value
    if isinstance(e, ServerException):
        return e.code in DATA_ERRORS or (e.code == TOO_MANY_PARTS and "partitions for single INSERT" in e.message)
    return False


@dataclass(frozen=True, slots=True)
class Refused:
    """A row ClickHouse will never take, and why."""

    table: str
    columns: tuple[str, ...]
    row: tuple[Any, ...]
    reason: str

    def value(self, name: str) -> Any:
        return self.row[self.columns.index(name)]


class ClickHouseSink:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.db = database
        self._timeline_sql = f"INSERT INTO {database}.timeline_versions ({', '.join(TIMELINE_COLUMNS)}) VALUES"
        self._alerts_sql = f"INSERT INTO {database}.friction_alert_versions ({', '.join(ALERT_COLUMNS)}) VALUES"

    def write(self, timeline: Columns, alerts: Sequence[tuple[Any, ...]]) -> list[Refused]:
        """Insert the rows; return those refused for good (see the module's docstring)."""
        refused: list[Refused] = []
        if len(timeline):
            refused += self._insert(self._timeline_sql, "timeline_versions", TIMELINE_COLUMNS, timeline.columns)
        if alerts:
            columns = [list(c) for c in zip(*alerts, strict=True)]
            refused += self._insert(self._alerts_sql, "friction_alert_versions", ALERT_COLUMNS, columns)
        return refused

    def _insert(self, sql: str, table: str, names: tuple[str, ...], columns: list[list[Any]]) -> list[Refused]:
        # Rows are always passed as data, never inline in the SQL: inline VALUES hang on 18.16.
        # Columnar: the driver serializes a column at a time, several times faster than rows.
        try:
            self.client.execute(sql, columns, columnar=True)
            return []
        except Exception as e:
            if not permanent(e):
                raise
            error = e
        rows = len(columns[0])
        if rows == 1:
            # the log names the error's code only: a server's message may quote the row
            log.warning("ClickHouse refused a row of %s for good (%s): it goes to the dead-letter topic",
                        table, getattr(error, "code", type(error).__name__))  # fmt: skip
            return [Refused(table, names, tuple(c[0] for c in columns), _describe(error))]
        half = rows // 2  # split until the refused rows are alone: log2(rows) inserts per bad row
        return self._insert(sql, table, names, [c[:half] for c in columns]) + self._insert(
            sql, table, names, [c[half:] for c in columns]
        )


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None)
    lines = (getattr(e, "message", None) or str(e)).strip().splitlines()
    return (f"code {code}: " if code else "") + (lines[0] if lines else type(e).__name__)[:300]


def now_seconds() -> int:
    """The time as `ingested_at` takes it: whole seconds since the epoch."""
    return int(time.time())
