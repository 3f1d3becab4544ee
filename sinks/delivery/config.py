"""config/alerts.yaml: named routes, each a match and the destinations it delivers to.

    delivery:
      cooldown_minutes: 60        # per route, customer and matter/field
    routes:
      - name: vip-repeat-contacts
        match: {kind: [repeat_contact], min_severity: high, tier: [gold, platinum]}
        to:
          - type: webhook
            url: "https://hooks.example.com/friction"
            secret_env: CEM_WEBHOOK_SECRET_VIP          # signs every request
            headers_from_env: {Authorization: CEM_VIP_HOOK_AUTH}
          - {type: kafka, topic: team.loyalty.alerts}
          - {type: log}

Validated at start-up; an error names the bad key (`routes.0.to.0.url: Field required`).
Secrets are never in this file: a webhook names the environment variables that hold them,
and they are read when the file is loaded (a missing one is an error naming its key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.alert import FrictionAlert
from sinks.delivery.signing import MIN_SECRET_CHARS, SIGNATURE_HEADER, TIMESTAMP_HEADER
from sinks.settings import ConfigError, describe_errors, yaml_error

SEVERITY_RANK = {"medium": 1, "high": 2}
DEFAULT_ALERTS_CONFIG = Path(__file__).resolve().parents[2] / "config" / "alerts.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Which alerts a route (or `cem alerts tail`) takes. Every given criterion must hold."""

    kind: list[str] | None = Field(None, description="rule names (config/rules.yaml): repeat_contact, re_entry, ...")
    min_severity: Literal["medium", "high"] | None = None
    tier: list[str] | None = None
    matter: list[str] | None = Field(None, description="the matter of repeat_contact or the field of re_entry")
    channel: list[str] | None = Field(None, description="any of the channels the alert involves")
    customer: list[str] | None = None

    @field_validator("tier", "matter")
    @classmethod
    def _lower(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [s.lower() for s in v]

    def matches(self, alert: FrictionAlert) -> bool:
        subject = alert.matter or alert.field or ""
        return (
            (self.kind is None or alert.kind in self.kind)
            and (self.min_severity is None or SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[self.min_severity])
            and (self.tier is None or alert.loyalty_tier.lower() in self.tier)
            and (self.matter is None or subject.lower() in self.matter)
            and (self.channel is None or bool(set(alert.channels) & set(self.channel)))
            and (self.customer is None or alert.customer_id in self.customer)
        )


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# Headers cem sets itself (a route may not replace them) and headers that carry credentials
# (their values belong in the environment: headers_from_env).
RESERVED_HEADERS = frozenset(h.lower() for h in ("Content-Type", "Idempotency-Key", TIMESTAMP_HEADER, SIGNATURE_HEADER))
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    ctx = info.context
    return ctx["environ"] if isinstance(ctx, dict) and "environ" in ctx else os.environ


def _check_header_names(names: list[str], *, plain: bool) -> None:
    for name in names:
        low = name.lower()
        if low in RESERVED_HEADERS or low.startswith("x-cem-"):
            raise ValueError(f"{name} is set by cem")
        if plain and low in CREDENTIAL_HEADERS:
            raise ValueError(f"{name} carries credentials: name an environment variable in headers_from_env")


def _from_env(environ: Mapping[str, str], var: str) -> str:
    """The variable's value; the errors name the variable, never its value."""
    value = environ.get(var, "")
    if not value:
        raise ValueError(f"environment variable {var} is not set")
    if "\r" in value or "\n" in value:
        raise ValueError(f"environment variable {var} holds a line break")
    return value


class WebhookDestination(_Strict):
    """An HTTP POST per alert, signed with the secret in the environment variable `secret_env`
    (or explicitly `unsigned: true`); credentials for headers come from `headers_from_env`."""

    type: Literal["webhook"]
    name: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://")]
    format: Literal["json", "slack"] = "json"  # slack: a Slack-compatible {"text": ...} body
    timeout_s: float = Field(5.0, gt=0, le=120)
    headers: dict[str, str] = {}
    headers_from_env: dict[str, EnvName] = Field(
        {}, description="header name -> environment variable holding its value (e.g. Authorization)"
    )
    # declared before secret_env: its validator reads it
    unsigned: bool = Field(False, description="send without X-CEM-Signature (refused unless set)")
    secret_env: EnvName | None = Field(
        None, validate_default=True, description="environment variable holding the signing secret"
    )

    _secret: SecretStr | None = PrivateAttr(None)
    _env_headers: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, v: dict[str, str]) -> dict[str, str]:
        _check_header_names(list(v), plain=True)
        return v

    @field_validator("headers_from_env")
    @classmethod
    def _env_header_names(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        _check_header_names(list(v), plain=False)
        plain = {h.lower() for h in info.data.get("headers", {})}
        if clash := [h for h in v if h.lower() in plain]:
            raise ValueError(f"{clash[0]} is also in headers")
        environ = _environ(info)
        for var in v.values():
            _from_env(environ, var)
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_set(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if not info.data.get("unsigned"):
                raise ValueError(
                    "required: the environment variable holding this webhook's signing secret"
                    " (or unsigned: true to send unsigned requests)"
                )
            return None
        if info.data.get("unsigned"):
            raise ValueError("a signed webhook cannot also be unsigned: true")
        if len(_from_env(_environ(info), v)) < MIN_SECRET_CHARS:
            raise ValueError(f"environment variable {v} holds fewer than {MIN_SECRET_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> WebhookDestination:
        environ = _environ(info)
        if self.secret_env is not None:
            self._secret = SecretStr(environ[self.secret_env])
        self._env_headers = {h: SecretStr(environ[var]) for h, var in self.headers_from_env.items()}
        return self

    def signing_secret(self) -> bytes | None:
        return None if self._secret is None else self._secret.get_secret_value().encode()

    def request_headers(self) -> dict[str, str]:
        """The route's own headers, those from the environment included."""
        return {**self.headers, **{h: v.get_secret_value() for h, v in self._env_headers.items()}}

    def secret_values(self) -> list[str]:
        """What must never be printed: scrubbed from every message about this destination."""
        found = [v.get_secret_value() for v in self._env_headers.values()]
        if self._secret is not None:
            found.append(self._secret.get_secret_value())
        return [v for v in found if v]


class KafkaDestination(_Strict):
    type: Literal["kafka"]
    name: str | None = None
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


class LogDestination(_Strict):
    type: Literal["log"]
    name: str | None = None


Destination = Annotated[WebhookDestination | KafkaDestination | LogDestination, Field(discriminator="type")]


class Route(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    match: Match = Match()
    to: Annotated[list[Destination], Field(min_length=1)]
    cooldown_minutes: int | None = Field(None, ge=0, description="overrides delivery.cooldown_minutes")

    def destination_ids(self) -> list[str]:
        """Stable ids: the delivery ledger is keyed by them, so renaming one re-delivers."""
        return [d.name or f"{self.name}.{i}.{d.type}" for i, d in enumerate(self.to)]


class DeliverySettings(_Strict):
    group_id: str = "cem-alert-delivery"
    ledger_topic: str = "cem.alerts.deliveries"
    cooldown_minutes: int = Field(60, ge=0)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(30.0, gt=0)
    max_attempts_rejected: int = Field(
        3, ge=1, description="attempts for refusals: 4xx other than 408/429, and redirects"
    )
    max_attempts: int = Field(10, ge=1, description="attempts per alert and destination; then it is failed")
    max_age_s: float = Field(
        600.0, gt=0, description="longest an alert waits for a destination (queued or retrying); then it is failed"
    )
    queue_size: int = Field(
        1000, ge=1, description="alerts held per destination; while it is down and full, more are failed at once"
    )
    ledger_retention_days: float = Field(
        8.0, gt=0, description="ledger entries this far (event time) behind the newest alert are forgotten"
    )
    ledger_max_entries: int = Field(
        500_000, ge=100, description="ledger entries held at most, per map; the oldest are forgotten first"
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="0: no metrics server")


class AlertsConfig(_Strict):
    delivery: DeliverySettings = DeliverySettings()
    routes: list[Route] = []

    @model_validator(mode="after")
    def _unique(self) -> AlertsConfig:
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("routes: route names must be unique")
        ids = [d for r in self.routes for d in r.destination_ids()]
        if len(set(ids)) != len(ids):
            raise ValueError("routes: destination names must be unique")
        # a cooldown needs its ledger entries for as long as it lasts
        retention_minutes = self.delivery.ledger_retention_days * 24 * 60
        for r in self.routes:
            if self.cooldown_of(r) > retention_minutes:
                raise ValueError(f"delivery.ledger_retention_days: shorter than the cooldown of route {r.name}")
        return self

    def cooldown_of(self, route: Route) -> int:
        return self.delivery.cooldown_minutes if route.cooldown_minutes is None else route.cooldown_minutes


def load_alerts_config(path: Path = DEFAULT_ALERTS_CONFIG, environ: Mapping[str, str] | None = None) -> AlertsConfig:
    """Load and validate the routing file, reading the secrets it names from `environ`
    (default: the process environment)."""
    if not path.exists():
        raise ConfigError(f"alerts config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    context: dict[str, Any] = {"environ": os.environ if environ is None else environ}
    try:
        return AlertsConfig.model_validate(data, context=context)
    except ValidationError as e:
        raise describe_errors(e, f"invalid alerts config {path}") from None
