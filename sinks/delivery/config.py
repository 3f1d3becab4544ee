"""config/alerts.yaml: named routes, each a match and the destinations it delivers to.

    delivery:
      cooldown_minutes: 60        # per route, customer and matter/field
    routes:
      - name: vip-repeat-contacts
        match: {kind: [repeat_contact], min_severity: high, tier: [gold, platinum]}
        to:
          - {type: webhook, url: "http://127.0.0.1:8080/hook", format: slack}
          - {type: kafka, topic: team.loyalty.alerts}
          - {type: log}

Validated at start-up; an error names the bad key (`routes.0.to.0.url: Field required`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.settings import ConfigError, describe_errors, yaml_error
from schemas.alert import FrictionAlert

SEVERITY_RANK = {"medium": 1, "high": 2}
DEFAULT_ALERTS_CONFIG = Path(__file__).resolve().parents[2] / "config" / "alerts.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """Which alerts a route (or `cem alerts tail`) takes. Every given criterion must hold."""

    kind: list[Literal["repeat_contact", "re_entry"]] | None = None
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


class WebhookDestination(_Strict):
    type: Literal["webhook"]
    name: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://")]
    format: Literal["json", "slack"] = "json"  # slack: a Slack-compatible {"text": ...} body
    timeout_s: float = Field(5.0, gt=0, le=120)
    headers: dict[str, str] = {}


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
    max_attempts_rejected: int = Field(3, ge=1, description="attempts for 4xx answers other than 408/429")
    queue_size: int = Field(1000, ge=1, description="alerts buffered per destination while it is down")
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
        return self


def load_alerts_config(path: Path = DEFAULT_ALERTS_CONFIG) -> AlertsConfig:
    if not path.exists():
        raise ConfigError(f"alerts config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    try:
        return AlertsConfig.model_validate(data)
    except ValidationError as e:
        raise describe_errors(e, f"invalid alerts config {path}") from None
