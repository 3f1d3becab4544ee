"""Least-privilege ClickHouse users for cem (`cem clickhouse users`).

Three users, each with only what its job needs, limited to cem's database:

  writer   the stream worker: INSERT (and SELECT); no CREATE, ALTER, DROP
  eraser   erasure: ALTER ... DELETE of one customer's rows (and SELECT to count them)
  analyst  SELECT only (the SQL kit, reports, timelines)

ClickHouse 18.16 has no SQL for users: they live in the server's users config, so for it we
write a `users.d/` file, which the server reloads by itself within seconds. There, a user is
shaped by a settings profile: `readonly=1` (read only) or `allow_ddl=0` (no CREATE, ALTER,
DROP). 18.16 has no finer grant than that, so its eraser may run any DDL in cem's database;
ClickHouse 20.5 and later get exact GRANTs (`ALTER DELETE` only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal
from xml.sax.saxutils import escape

from sinks.clickhouse.settings import ClickHouseSettings

Role = Literal["writer", "eraser", "analyst"]
ROLES: tuple[Role, ...] = ("writer", "eraser", "analyst")
# 18.16 settings profiles per role; see the module docstring
PROFILES: dict[Role, dict[str, int]] = {
    "writer": {"readonly": 0, "allow_ddl": 0},
    "eraser": {"readonly": 0, "allow_ddl": 1},
    "analyst": {"readonly": 1, "allow_ddl": 0},
}
GRANTS: dict[Role, str] = {
    "writer": "INSERT, SELECT",
    "eraser": "ALTER DELETE, SELECT",
    "analyst": "SELECT",
}
SQL_USERS_SINCE = (20, 5)  # CREATE USER / GRANT


class UsersError(Exception):
    pass


@dataclass(frozen=True)
class User:
    role: Role
    name: str
    password: str


def users_from(cfg: ClickHouseSettings) -> list[User]:
    """The three users as configured (clickhouse.user, eraser_user, analyst_user + passwords)."""
    out = []
    for role in ROLES:
        r = cfg.as_role(role)
        if role != "writer" and r is cfg:
            raise UsersError(f"clickhouse.{role}_user is not set: name the {role} user in the config")
        password = r.password.get_secret_value()
        if not password:
            key = "password" if role == "writer" else f"{role}_password"
            raise UsersError(f"clickhouse.{key} is empty: set it (e.g. CEM_CLICKHOUSE__{key.upper()})")
        if r.user == "default":
            raise UsersError(f"the {role} user may not be 'default': give it its own name")
        out.append(User(role, r.user, password))
    if len({u.name for u in out}) != len(out):
        raise UsersError("writer, eraser and analyst need three different user names")
    return out


def users_xml(users: list[User], database: str, networks: list[str]) -> str:
    """A users.d file for ClickHouse 18.16: profiles and users, passwords as SHA-256 only."""
    profiles = "".join(
        f"    <cem_{u.role}>" + "".join(f"<{k}>{v}</{k}>" for k, v in PROFILES[u.role].items()) + f"</cem_{u.role}>\n"
        for u in users
    )
    nets = "".join(f"<ip>{escape(n)}</ip>" for n in networks)
    entries = "".join(
        f"    <{u.name}>\n"
        f"      <password_sha256_hex>{hashlib.sha256(u.password.encode()).hexdigest()}</password_sha256_hex>\n"
        f"      <networks>{nets}</networks>\n"
        f"      <profile>cem_{u.role}</profile>\n"
        f"      <quota>default</quota>\n"
        f"      <allow_databases><database>{escape(database)}</database></allow_databases>\n"
        f"    </{u.name}>\n"
        for u in users
    )
    return (
        '<?xml version="1.0"?>\n<!-- written by `cem clickhouse users`: cem\'s least-privilege users -->\n'
        f"<yandex>\n  <profiles>\n{profiles}  </profiles>\n  <users>\n{entries}  </users>\n</yandex>\n"
    )


def users_sql(users: list[User], database: str, networks: list[str]) -> list[str]:
    """Statements for ClickHouse 20.5+: users with exact grants on cem's database only."""
    hosts = ", ".join(f"IP '{n}'" for n in networks)
    out = []
    for u in users:
        digest = hashlib.sha256(u.password.encode()).hexdigest()
        out.append(f"CREATE USER IF NOT EXISTS {u.name} IDENTIFIED WITH sha256_hash BY '{digest}' HOST {hosts}")
        out.append(f"ALTER USER {u.name} IDENTIFIED WITH sha256_hash BY '{digest}' HOST {hosts}")
        out.append(f"REVOKE ALL ON *.* FROM {u.name}")
        out.append(f"GRANT {GRANTS[u.role]} ON {database}.* TO {u.name}")
        if u.role == "eraser":  # it records the receipt of each erasure it carries out
            out.append(f"GRANT INSERT ON {database}.erasure_receipts TO {u.name}")
    return out
