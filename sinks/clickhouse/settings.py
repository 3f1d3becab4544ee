"""The ClickHouse sink's settings: where the server is, TLS, and the credentials of each role."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from sinks.settings import Section


class ClickHouseSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(19000, ge=1, le=65535)
    database: str = Field("cem", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # The worker's user: inserts rows, nothing else (`cem clickhouse users` creates it).
    user: str = "default"
    password: SecretStr = SecretStr("")
    # Deletes an erased customer's rows (ALTER ... DELETE); empty: the worker's user.
    eraser_user: str = ""
    eraser_password: SecretStr = SecretStr("")
    # Runs migrations and creates the users; empty: the worker's user.
    admin_user: str = ""
    admin_password: SecretStr = SecretStr("")
    # Reads only (`cem kit`, `cem report`, `cem timeline`); empty: the worker's user.
    analyst_user: str = ""
    analyst_password: SecretStr = SecretStr("")
    # TLS on the native protocol: `port` is then the server's tcp_port_secure (9440 by default)
    secure: bool = False
    ca_certs: Path | None = Field(None, description="CA bundle (PEM) that signed the server's certificate")
    verify: bool = Field(True, description="check the server's certificate and host name (secure only)")
    certfile: Path | None = Field(None, description="client certificate (PEM), for mutual TLS only")
    keyfile: Path | None = Field(None, description="client private key (PEM), for mutual TLS only")
    connect_timeout_s: float = Field(5.0, gt=0)
    send_receive_timeout_s: float = Field(60.0, gt=0)
    # 0 keeps rows forever; otherwise timeline and alert rows expire this long after
    # occurred_at (needs ClickHouse >= 20.1: `cem migrate` reports it when the server is older)
    retention_days: int = Field(0, ge=0, le=36500)
    # Empty: one server. Otherwise the cluster (the server's <remote_servers> name) that the
    # migrations create replicated, sharded tables on, and that erasure reaches every server of
    # (docs/operations.md, "Running on a ClickHouse cluster").
    cluster: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")

    @model_validator(mode="after")
    def _tls(self) -> ClickHouseSettings:
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is None:
                continue
            # a CA or certificate given without TLS would be silently ignored: plaintext
            if not self.secure:
                raise ValueError(f"{name} is set but secure is false: set secure: true to use TLS")
            if not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together (mutual TLS)")
        return self

    def as_role(self, role: Literal["writer", "eraser", "admin", "analyst"]) -> ClickHouseSettings:
        """These settings with the credentials of one role (falling back to the writer's)."""
        user, password = {
            "writer": (self.user, self.password),
            "eraser": (self.eraser_user, self.eraser_password),
            "admin": (self.admin_user, self.admin_password),
            "analyst": (self.analyst_user, self.analyst_password),
        }[role]
        if not user:
            return self
        return self.model_copy(update={"user": user, "password": password})
