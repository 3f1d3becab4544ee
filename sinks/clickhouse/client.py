"""ClickHouse connections. A clickhouse-driver Client is not safe to share across threads or
tasks, so each user (agent, CLI command) makes its own."""

from __future__ import annotations

import re
import weakref
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.columns import base as _columns
from clickhouse_driver.errors import Error, NetworkError, ServerException

from sinks.clickhouse.settings import ClickHouseSettings

# 192 UNKNOWN_USER, 193 WRONG_PASSWORD, 195 IP_ADDRESS_NOT_ALLOWED, 291 DATABASE_ACCESS_DENIED,
# 516 AUTHENTICATION_FAILED (20.x+)
AUTH_ERRORS = frozenset({192, 193, 195, 291, 516})


class ClickHouseUnavailable(Exception):
    pass


def _columns_without_cycles() -> None:
    """clickhouse-driver gives every column object it makes (some 50 per insert) a
    serialization helper that points back at the column: a reference cycle, which only
    Python's cyclic collector frees. The worker freezes its long-lived objects instead of
    letting that collector walk them (pipeline/engine/memory.py), so its hot path must make no
    cyclic garbage: the helper's back-reference is made weak. The column owns the helper, so
    the column outlives it. clickhouse-driver is pinned; tests/unit/test_memory.py checks that
    the driver's columns still leave no cyclic garbage."""
    init = _columns.CommonSerialization.__init__
    if getattr(init, "cem_weak", False):
        return

    def weak_init(self: Any, column: Any) -> None:
        init(self, weakref.proxy(column))

    weak_init.cem_weak = True  # type: ignore[attr-defined]
    _columns.CommonSerialization.__init__ = weak_init


_columns_without_cycles()


def connect(cfg: ClickHouseSettings, database: str | None = None) -> Client:
    """A client in `database` (default: cfg.database; users may be limited to that one)."""
    return Client(
        host=cfg.host,
        port=cfg.port,
        user=cfg.user,
        password=cfg.password.get_secret_value(),
        database=database or cfg.database,
        connect_timeout=cfg.connect_timeout_s,
        send_receive_timeout=cfg.send_receive_timeout_s,
        secure=cfg.secure,
        verify=cfg.verify,
        ca_certs=None if cfg.ca_certs is None else str(cfg.ca_certs),
        certfile=None if cfg.certfile is None else str(cfg.certfile),
        keyfile=None if cfg.keyfile is None else str(cfg.keyfile),
        settings=_settings(cfg),
    )


def _settings(cfg: ClickHouseSettings) -> dict[str, int]:
    # a query is not cancelled when its client dies: bound it server-side
    out = {"max_execution_time": int(cfg.send_receive_timeout_s)}
    if cfg.cluster:
        # An insert into a Distributed table returns only once every shard has the rows (by
        # default it queues them on the receiving server and returns at once): the worker
        # commits Kafka offsets after a write, so the write must have reached the shards.
        out["insert_distributed_sync"] = 1
        # ... and gives up on a shard that does not answer (0, the default, waits for ever)
        out["insert_distributed_timeout"] = int(cfg.send_receive_timeout_s)
    return out


def tls_problem(e: Exception) -> str | None:
    """One sentence for a failed TLS handshake (which never heals by retrying), else None."""
    said = str(e)
    if "SSL" not in said:
        return None
    reason = re.search(r"\[SSL: ([A-Z0-9_]+)\]", said)
    where = re.search(r"\(([^()]+:\d+)\)$", said)
    return (
        f"ClickHouse at {where.group(1) if where else 'the configured host'}: TLS handshake failed "
        f"({reason.group(1) if reason else 'no reason given'}): check clickhouse.ca_certs (the CA that signed "
        "the server's certificate), clickhouse.verify, and that clickhouse.port is the server's secure port"
    )


def check_credentials(cfg: ClickHouseSettings) -> None:
    """Raise ClickHouseUnavailable if the server refuses these credentials or its TLS
    certificate. A server that does not answer passes: callers that write retry until it is
    back."""
    client = connect(cfg)
    try:
        client.execute("SELECT 1")
    except ServerException as e:
        if e.code == 81:  # no such database yet: `cem migrate` creates it
            return
        if e.code in AUTH_ERRORS:
            raise ClickHouseUnavailable(
                f"ClickHouse at {cfg.host}:{cfg.port} refused user {cfg.user!r} (code {e.code}): "
                "check the clickhouse user and password settings (the password is never printed)"
            ) from None
        raise
    except NetworkError as e:
        problem = tls_problem(e)
        if problem:
            raise ClickHouseUnavailable(problem) from None
        return
    except Error:
        return
    finally:
        client.disconnect()
