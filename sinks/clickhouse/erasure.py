"""Erasing one customer from ClickHouse, waiting until it is done, and the receipt.

Every table that holds a customer's rows is listed in ERASABLE. `kpi_daily` is not: it holds
per-day aggregates of event ids by matter, channel and tier, nothing that identifies a
customer (docs/security.md).

ALTER ... DELETE is a mutation: ClickHouse rewrites the affected parts in the background, and
the rows stay readable until it has finished. So we wait for the mutations to finish, then
count again. A receipt is only written once the count is zero.

On a cluster (clickhouse.cluster) the deletes run `ON CLUSTER` on the local tables, once per
shard, and replicate to the other replicas. Reading through the Distributed tables sees one
replica per shard, so the wait asks every server itself: no mutation pending and no row left
in its local tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.erasure import ErasureReceipt, Removed
from sinks.clickhouse.cluster import LOCAL
from sinks.clickhouse.migrate import Executor

ERASABLE = ("timeline_versions", "friction_alert_versions")


class ErasureIncomplete(Exception):
    pass


def count_rows(client: Executor, db: str, customer_ids: str | list[str], suffix: str = "") -> dict[str, int]:
    """Rows of these customer ids per erasable table (`suffix` "_local": one server's own)."""
    ids = (customer_ids,) if isinstance(customer_ids, str) else tuple(customer_ids)  # a tuple: SQL's IN (...)
    return {
        table: int(
            client.execute(f"SELECT count() FROM {db}.{table}{suffix} WHERE customer_id IN %(c)s", {"c": ids})[0][0]
        )
        for table in ERASABLE
    }


def _pending(client: Executor, db: str, tables: tuple[str, ...]) -> int:
    return int(
        client.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND table IN %(tables)s AND is_done = 0",
            {"db": db, "tables": tables},
        )[0][0]
    )


def cluster_servers(client: Executor, cluster: str) -> list[tuple[str, int]]:
    """(host, native port) of every server of the cluster, as the servers know them."""
    rows = client.execute(
        "SELECT host_address, port FROM system.clusters WHERE cluster = %(c)s ORDER BY shard_num, replica_num",
        {"c": cluster},
    )
    if not rows:
        raise ErasureIncomplete(f"the server knows no cluster named {cluster!r} (clickhouse.cluster)")
    return [(str(h), int(p)) for h, p in rows]


def delete_customer(
    client: Executor,
    db: str,
    customer_ids: str | list[str],
    timeout_s: float = 300.0,
    cluster: str = "",
    servers: Sequence[Executor] = (),
) -> dict[str, int]:
    """Delete the rows of these customer ids (a customer and the keys of their identifiers)
    from every erasable table and wait until none is left. Returns the rows found before
    deleting. Safe to repeat. On a cluster, `servers` are connections to every server of it
    (`cluster_servers`), each checked on its own."""
    ids = [customer_ids] if isinstance(customer_ids, str) else list(customer_ids)
    before = count_rows(client, db, ids)
    for table, n in before.items():
        if n:
            target = f"{db}.{table}{LOCAL} ON CLUSTER {cluster}" if cluster else f"{db}.{table}"
            client.execute(f"ALTER TABLE {target} DELETE WHERE customer_id IN %(c)s", {"c": tuple(ids)})
    deadline = time.monotonic() + timeout_s
    while True:
        if cluster:
            pending, left = 0, dict.fromkeys(ERASABLE, 0)
            for server in servers:
                pending += _pending(server, db, tuple(t + LOCAL for t in ERASABLE))
                here = count_rows(server, db, ids, suffix=LOCAL)
                left = {t: left[t] + here[t] for t in ERASABLE}
        else:
            pending, left = _pending(client, db, ERASABLE), count_rows(client, db, ids)
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
