"""ClickHouse connections. A clickhouse-driver Client is not safe to share across threads or
tasks, so each user (agent, CLI command) makes its own."""

from __future__ import annotations

from clickhouse_driver import Client

from pipeline.settings import ClickHouseSettings


def connect(cfg: ClickHouseSettings, database: str | None = None) -> Client:
    return Client(
        host=cfg.host,
        port=cfg.port,
        user=cfg.user,
        password=cfg.password.get_secret_value(),
        database=database or "default",
        connect_timeout=cfg.connect_timeout_s,
        send_receive_timeout=cfg.send_receive_timeout_s,
        # a query is not cancelled when its client dies: bound it server-side
        settings={"max_execution_time": int(cfg.send_receive_timeout_s)},
    )
