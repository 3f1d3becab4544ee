"""Erasing one customer from ClickHouse, waiting until it is done, and the receipt.

Every table that holds a customer's rows is listed in ERASABLE. `kpi_daily` is not: it holds
per-day aggregates of event ids by matter, channel and tier, nothing that identifies a
customer (docs/security.md).

ALTER ... DELETE is a mutation: ClickHouse rewrites the affected parts in the background, and
the rows stay readable until it has finished. So we wait for the mutations to finish, then
count again. A receipt is only written once the count is zero.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from schemas.erasure import ErasureReceipt, Removed
from sinks.clickhouse.migrate import Executor

ERASABLE = ("timeline_versions", "friction_alert_versions")


class ErasureIncomplete(Exception):
    pass


def count_rows(client: Executor, db: str, customer_ids: str | list[str]) -> dict[str, int]:
    ids = (customer_ids,) if isinstance(customer_ids, str) else tuple(customer_ids)  # a tuple: SQL's IN (...)
    return {
        table: int(client.execute(f"SELECT count() FROM {db}.{table} WHERE customer_id IN %(c)s", {"c": ids})[0][0])
        for table in ERASABLE
    }


def delete_customer(
    client: Executor, db: str, customer_ids: str | list[str], timeout_s: float = 300.0
) -> dict[str, int]:
    """Delete the rows of these customer ids (a customer and the keys of their identifiers)
    from every erasable table and wait until none is left. Returns the rows found before
    deleting. Safe to repeat."""
    ids = [customer_ids] if isinstance(customer_ids, str) else list(customer_ids)
    before = count_rows(client, db, ids)
    for table, n in before.items():
        if n:
            client.execute(f"ALTER TABLE {db}.{table} DELETE WHERE customer_id IN %(c)s", {"c": tuple(ids)})
    deadline = time.monotonic() + timeout_s
    while True:
        pending = int(
            client.execute(
                "SELECT count() FROM system.mutations WHERE database = %(db)s AND table IN %(tables)s AND is_done = 0",
                {"db": db, "tables": ERASABLE},
            )[0][0]
        )
        left = count_rows(client, db, ids)
        if not pending and not any(left.values()):
            return before
        if time.monotonic() > deadline:
            raise ErasureIncomplete(f"rows of the customer are still present after {timeout_s:.0f}s: {left}")
        time.sleep(0.2)


def find_receipt(client: Executor, db: str, request_id: str) -> ErasureReceipt | None:
    rows = client.execute(
        f"SELECT {', '.join(RECEIPT_COLUMNS)} FROM {db}.erasure_receipts WHERE request_id = %(r)s LIMIT 1",
        {"r": request_id},
    )
    if not rows:
        return None
    r = dict(zip(RECEIPT_COLUMNS, rows[0], strict=True))
    for k in ("requested_at", "completed_at"):
        t = r[k] if isinstance(r[k], datetime) else datetime.fromisoformat(str(r[k]))
        r[k] = t if t.tzinfo else t.replace(tzinfo=UTC)
    removed = Removed(**{k: r.pop(k) for k in Removed.model_fields})
    return ErasureReceipt(**r, removed=removed, verified=True)


RECEIPT_COLUMNS = (
    "request_id",
    "subject",
    "requested_by",
    "requested_at",
    "completed_at",
    "customer_state",
    "identity_entries",
    "timeline_rows",
    "alert_rows",
    "related_keys",
    "ledger_entries",
    "dead_letters",
)


def insert_receipt(client: Executor, db: str, receipt: ErasureReceipt) -> None:
    row: dict[str, Any] = receipt.model_dump(exclude={"removed", "verified"}) | receipt.removed.model_dump()
    for k in ("requested_at", "completed_at"):
        row[k] = _naive_utc(row[k])
    client.execute(
        f"INSERT INTO {db}.erasure_receipts ({', '.join(RECEIPT_COLUMNS)}) VALUES",
        [tuple(row[c] for c in RECEIPT_COLUMNS)],
    )


def _naive_utc(t: datetime) -> datetime:
    """clickhouse-driver writes naive datetimes as they are: give it UTC wall time."""
    return t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None)
