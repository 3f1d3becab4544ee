"""One typed settings object, loaded from YAML with environment overrides.

Precedence (highest first): environment variables `CEM_<SECTION>__<KEY>` (e.g.
`CEM_KAFKA__BOOTSTRAP_SERVERS`), then the YAML file (`CEM_CONFIG`, default `config/cem.yaml`),
then the defaults below. Environment wins so that a deployment can override one value
without copying the file. A bad value is reported by its dotted name (`kafka.partitions`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processors.model import ReEntryRules, RepeatContactRules, Rules

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "cem.yaml"
FIELD_VOCABULARY = (
    "name",
    "email",
    "phone",
    "address",
    "date_of_birth",
    "passport_number",
    "loyalty_id",
    "payment_card",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topics(_Section):
    web: str = "cem.touchpoints.web"
    callcenter: str = "cem.touchpoints.callcenter"
    booking: str = "cem.touchpoints.booking"
    profiles: str = "cem.crm.profiles"
    alerts: str = "cem.friction.alerts"
    deadletter: str = "cem.deadletter"
    erasure_receipts: str = "cem.erasure.receipts"
    # internal: touchpoints and profile updates re-keyed by customer (see docs/architecture.md)
    by_customer: str = "cem.internal.by-customer"
    # internal: identifier fingerprint -> customer id, compacted, read in full by every worker
    identity: str = "cem.internal.identity"
    # internal: snapshots of the judge's state per partition, compacted (pipeline/state.py)
    snapshots: str = "cem.internal.snapshots"

    @property
    def channels(self) -> tuple[str, str, str]:
        """The channel (touchpoint) topics, read by stage A."""
        return (self.web, self.callcenter, self.booking)

    def channel_of(self, topic: str) -> str | None:
        return {self.web: "web", self.callcenter: "call_center", self.booking: "booking"}.get(topic)


class KafkaSecurity(_Section):
    """How every client cem runs (worker, producers, admin, alert delivery) talks to Kafka."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str = ""
    password: SecretStr = SecretStr("")
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signed the broker's certificate")
    ssl_certfile: Path | None = Field(None, description="client certificate (PEM), for mutual TLS only")
    ssl_keyfile: Path | None = Field(None, description="client private key (PEM), for mutual TLS only")
    ssl_check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.sasl and not (self.username and self.password.get_secret_value()):
            raise ValueError(f"{self.protocol} needs username and password")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS)")
        return self


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    security: KafkaSecurity = KafkaSecurity()
    partitions: int = Field(8, ge=1, le=1024, description="partitions of every topic cem creates")
    replication_factor: int = Field(1, ge=1)
    topics: Topics = Topics()
    deadletter_retention_days: int = Field(30, ge=1)
    # The judge's state is rebuilt from the by-customer topic after its newest snapshot, so the
    # topic must keep far longer than worker.snapshot_interval_s.
    internal_retention_days: int = Field(7, ge=1, description="retention of cem.internal.by-customer")


class ClickHouseSettings(_Section):
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
    connect_timeout_s: float = Field(5.0, gt=0)
    send_receive_timeout_s: float = Field(60.0, gt=0)
    # 0 keeps rows forever; otherwise timeline and alert rows expire this long after
    # occurred_at (needs ClickHouse >= 20.1: `cem migrate` reports it when the server is older)
    retention_days: int = Field(0, ge=0, le=36500)

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


class WorkerSettings(_Section):
    app_id: str = "cem-pipeline"
    web_port: int = Field(6066, ge=1, le=65535)
    batch_size: int = Field(2000, ge=1, le=100_000, description="records stage A takes at most per batch")
    insert_rows: int = Field(20_000, ge=1, le=1_000_000, description="timeline rows per ClickHouse insert at most")
    batch_within_s: float = Field(
        0.5, gt=0, le=60, description="longest a judged row waits for its ClickHouse insert (alerts do not wait)"
    )
    session_timeout_s: float = Field(10.0, gt=0)
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=5000, description="longest the broker holds a fetch that finds nothing new (latency vs requests)"
    )
    commit_interval_s: float = Field(1.0, gt=0)
    max_future_skew_hours: float = Field(24.0, ge=0, description="events further ahead of the clock are rejected")
    max_message_bytes: int = Field(256 * 1024, ge=1024, description="larger touchpoints go to the dead-letter topic")
    snapshot_interval_s: float = Field(
        300.0, ge=1, description="longest a partition with changes goes without a snapshot of its state"
    )
    snapshot_min_touchpoints: int = Field(
        50_000, ge=1, description="a partition is snapshotted after this many touchpoints, or as many as it holds"
    )
    bootstrap_timeout_s: float = Field(
        120.0, ge=0, description="longest the touchpoints wait at start-up for the CRM profiles to be indexed"
    )
    profile_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="longest a batch of touchpoints waits for CRM profiles other workers are forwarding",
    )
    # 5 s: after an outage, the worker resumes at most this long after ClickHouse is back
    # (with 30 s it lost up to 30 s); a failed attempt costs one refused connection.
    clickhouse_retry_max_s: float = Field(
        5.0, gt=0, description="longest pause between retries of a write (ClickHouse or Kafka away)"
    )
    producer_linger_ms: float = Field(
        5.0, ge=0, le=1000, description="how long the producer waits to fill a batch (faust's default: 0)"
    )
    producer_batch_bytes: int = Field(
        512 * 1024, ge=16 * 1024, le=8 * 2**20, description="largest producer batch per partition (faust's: 16 KiB)"
    )
    data_dir: Path = Path(".local/worker")

    @property
    def resolve_group(self) -> str:
        """The consumer group that reads the channel topics and the CRM topic (stage A)."""
        return f"{self.app_id}-resolve"

    @property
    def judge_group(self) -> str:
        """The consumer group that reads the internal by-customer topic (stage B)."""
        return f"{self.app_id}-judge"

    @property
    def legacy_changelog(self) -> str:
        """Where releases up to 0.2 kept the judge's state (a faust table's changelog): read
        once, when a partition has no snapshot yet."""
        return f"{self.app_id}-customers-changelog"


class RepeatContactConfig(_Section):
    window_days: int = Field(7, ge=1, le=365)
    transfer_grace_minutes: int = Field(15, ge=0, le=24 * 60)


class ReEntryConfig(_Section):
    window_days: int = Field(30, ge=1, le=365)
    alert_threshold: int = Field(3, ge=2, le=1000)


class RulesSettings(_Section):
    repeat_contact: RepeatContactConfig = RepeatContactConfig()
    re_entry: ReEntryConfig = ReEntryConfig()
    vip_tiers: list[str] = ["gold", "platinum"]
    allowed_lateness_days: int = Field(7, ge=0, le=365)
    field_vocabulary: list[str] = list(FIELD_VOCABULARY)

    @field_validator("vip_tiers", "field_vocabulary")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [s.strip().lower() for s in v]

    def to_rules(self) -> Rules:
        return Rules(
            repeat_contact=RepeatContactRules(
                self.repeat_contact.window_days, self.repeat_contact.transfer_grace_minutes
            ),
            re_entry=ReEntryRules(self.re_entry.window_days, self.re_entry.alert_threshold),
            vip_tiers=frozenset(self.vip_tiers),
            allowed_lateness_days=self.allowed_lateness_days,
        )


class PrivacySettings(_Section):
    # Salt of the identifier fingerprints. Change it for production: with the default an
    # attacker who knows an email can test whether it is in the identity index.
    fingerprint_secret: SecretStr = SecretStr("cem-pipeline-dev-secret-change-me")


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path.exists():
            if self.path != DEFAULT_CONFIG:
                raise ConfigError(f"config file not found: {self.path}")
            return {}
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: top level must be a mapping")
        return data


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the config."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CEM_", env_nested_delimiter="__", extra="forbid", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()
    rules: RulesSettings = RulesSettings()
    privacy: PrivacySettings = PrivacySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("CEM_CONFIG", str(DEFAULT_CONFIG)))
        return (init_settings, env_settings, _YamlSource(settings_cls, path))

    @cached_property
    def rules_obj(self) -> Rules:
        return self.rules.to_rules()

    @property
    def secret(self) -> bytes:
        return self.privacy.fingerprint_secret.get_secret_value().encode()

    def redacted(self) -> dict[str, Any]:
        """The effective config with secrets hidden (`cem config check`)."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


def describe_errors(e: ValidationError, title: str = "invalid configuration") -> ConfigError:
    """One line per problem, each naming the dotted key, for the person who wrote the config."""
    problems = []
    for err in e.errors(include_url=False):
        name, msg = ".".join(str(p) for p in err["loc"]), err["msg"]
        # an unknown key's value is not shown: it may be a secret put under a misspelt name
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        if msg.startswith("Value error, "):
            msg, got = msg.removeprefix("Value error, "), ""
            if not name:  # validators of the whole settings word their errors "<key>: <why>"
                name, _, msg = msg.partition(": ")
        problems.append(f"  {name}: {msg}{got}")
    return ConfigError(f"{title}:\n" + "\n".join(problems))


def load_settings(**overrides: Any) -> Settings:
    """Load and validate; raise ConfigError naming each bad key."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise describe_errors(e) from None
