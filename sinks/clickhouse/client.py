"""ClickHouse connections. A clickhouse-driver Client is not safe to share across threads or
tasks, so each user (agent, CLI command) makes its own."""

from __future__ import annotations

from clickhouse_driver import Client
from clickhouse_driver.errors import Error, NetworkError, ServerException

from pipeline.settings import ClickHouseSettings

# 192 UNKNOWN_USER, 193 WRONG_PASSWORD, 195 IP_ADDRESS_NOT_ALLOWED, 291 DATABASE_ACCESS_DENIED,
# 516 AUTHENTICATION_FAILED (20.x+)
AUTH_ERRORS = frozenset({192, 193, 195, 291, 516})


class ClickHouseUnavailable(Exception):
    pass


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
        # a query is not cancelled when its client dies: bound it server-side
        settings={"max_execution_time": int(cfg.send_receive_timeout_s)},
    )


def check_credentials(cfg: ClickHouseSettings) -> None:
    """Raise ClickHouseUnavailable if the server refuses these credentials. A server that
    does not answer passes: callers that write retry until it is back."""
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
    except (NetworkError, Error):
        return
    finally:
        client.disconnect()
