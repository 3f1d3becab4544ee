"""Settings of the collector (`collector:` in config/cem.yaml) and the source mappings file
(`config/sources.yaml`)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from processors.sources.cloudevents import CloudEventsMapping
from processors.sources.connect import ConnectMapping
from processors.sources.segment import SegmentMapping
from processors.sources.snowplow import SnowplowMapping
from sinks.settings import ConfigError, Section, describe_errors, yaml_error

DEFAULT_SOURCES_CONFIG = Path(__file__).resolve().parents[2] / "config" / "sources.yaml"


class CollectorSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    # source name -> write key (the HTTP Basic user the SDK sends). The name, never the key,
    # is what logs and metrics show. Set them in the environment, e.g.
    # CEM_COLLECTOR__WRITE_KEYS='{"website": "..."}'.
    write_keys: dict[str, SecretStr] = {}
    sources_file: Path = DEFAULT_SOURCES_CONFIG
    # Segment's documented limits (32 KB a message, 500 KB a batch); a gzip body is limited
    # after decompression too, which is what guards against decompression bombs
    max_message_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    max_batch_bytes: int = Field(500 * 1024, ge=1024, le=16 * 1024 * 1024)
    ack_timeout_s: float = Field(
        10.0, gt=0, le=120, description="longest a request waits for Kafka's acknowledgement before answering 503"
    )
    max_pending_messages: int = Field(
        100_000, ge=100, description="messages waiting for Kafka's acknowledgement at most; more are answered 503"
    )
    producer_linger_ms: float = Field(2.0, ge=0, le=1000)
    # web pages on these origins may post from the browser (analytics.js); "*" for any
    cors_origins: list[str] = []
    metrics_port: int = Field(9109, ge=0, le=65535, description="Prometheus metrics on 127.0.0.1; 0: none")

    @field_validator("write_keys")
    @classmethod
    def _keys(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, key in v.items():
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"{name}: a write key needs at least 16 characters")
        return v


class AdaptSettings(Section):
    """`cem adapt`: contact trace records and CloudEvents from their raw topics
    (`kafka.topics.connect_ctr`, `kafka.topics.cloudevents`) to the channel topics."""

    # Connect sends a contact's record again after each update: a contact waits this long
    # after its first record for newer ones, and goes out as the newest
    contact_settle_s: float = Field(30.0, ge=0, le=3600, description="how long a contact waits for a newer record")
    max_held_contacts: int = Field(
        100_000, ge=1, description="contacts waiting to settle at most; past it the oldest goes out early"
    )
    max_remembered_contacts: int = Field(
        1_000_000, ge=1, description="contacts forwarded that are remembered to drop a record delivered again"
    )
    batch_size: int = Field(1000, ge=1, le=100_000, description="records taken at most per batch")
    metrics_port: int = Field(9110, ge=0, le=65535, description="Prometheus metrics on 127.0.0.1; 0: none")


class SourcesConfig(BaseModel):
    """config/sources.yaml: how each source's messages become touchpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segment: SegmentMapping = SegmentMapping()
    connect: ConnectMapping = ConnectMapping()
    cloudevents: CloudEventsMapping = CloudEventsMapping()
    snowplow: SnowplowMapping = SnowplowMapping()


def load_sources_config(path: Path = DEFAULT_SOURCES_CONFIG) -> SourcesConfig:
    """Load and validate the mappings; an error names the bad key."""
    if not path.exists():
        raise ConfigError(f"sources config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise yaml_error(path, e) from None
    try:
        return SourcesConfig.model_validate(data)
    except ValidationError as e:
        raise describe_errors(e, f"invalid sources config {path}") from None
