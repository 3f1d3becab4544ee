"""One typed settings object, loaded from YAML with environment overrides.

Precedence (highest first): environment variables `CEM_<SECTION>__<KEY>` (e.g.
`CEM_KAFKA__BOOTSTRAP_SERVERS`), then the YAML file (`CEM_CONFIG`, default `config/cem.yaml`),
then the defaults below. Environment wins so that a deployment can override one value
without copying the file. A bad value is reported by its dotted name (`kafka.partitions`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from pipeline.sources.settings import AdaptSettings, CollectorSettings
from processors.model import MICROS_PER_DAY, ReEntryRules, RepeatContactRules, Rules
from processors.rules import KnownEntryRule, RuleFile, RuleFileError, duration_us, parse_rule_file
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.settings import ConfigError as ConfigError  # the error every settings problem raises
from sinks.settings import Section, describe_errors, yaml_error

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "cem.yaml"
DEFAULT_RULES = DEFAULT_CONFIG.parent / "rules.yaml"
log = logging.getLogger("cem.settings")
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
#: matters of contacts (a contact's reason, as a name): the ones an airline's contact centre
#: sorts its calls into. Configure your own (`rules.matter_vocabulary`).
MATTER_VOCABULARY = (
    "baggage_allowance",
    "lost_luggage",
    "refund_status",
    "flight_change",
    "cancellation",
    "delay_compensation",
    "seat_selection",
    "check_in",
    "booking_change",
    "payment",
    "miles_credit",
    "loyalty_account",
    "special_assistance",
    "complaint",
)


class Topics(Section):
    web: str = "cem.touchpoints.web"
    callcenter: str = "cem.touchpoints.callcenter"
    booking: str = "cem.touchpoints.booking"
    profiles: str = "cem.crm.profiles"
    alerts: str = "cem.friction.alerts"
    deadletter: str = "cem.deadletter"
    erasure_receipts: str = "cem.erasure.receipts"
    # internal: erasures the judge has done its part of, for the eraser (`cem eraser`) to finish
    erasures: str = "cem.internal.erasures"
    # internal: touchpoints and profile updates re-keyed by customer (see docs/architecture.md)
    by_customer: str = "cem.internal.by-customer"
    # internal: identifier fingerprint -> customer id, compacted, read in full by every worker
    identity: str = "cem.internal.identity"
    # internal: snapshots of the judge's state per partition, compacted (pipeline/engine/snapshots.py)
    snapshots: str = "cem.internal.snapshots"
    # raw input of `cem adapt` (pipeline/sources/adapt.py): Amazon Connect contact trace
    # records, and the booking engine's CloudEvents (Kafka binding, structured or binary)
    connect_ctr: str = "cem.raw.connect-ctr"
    cloudevents: str = "cem.raw.booking-cloudevents"

    @property
    def channels(self) -> tuple[str, str, str]:
        """The channel (touchpoint) topics, read by stage A."""
        return (self.web, self.callcenter, self.booking)

    def channel_of(self, topic: str) -> str | None:
        return {self.web: "web", self.callcenter: "call_center", self.booking: "booking"}.get(topic)


class KafkaSecurity(Section):
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


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    security: KafkaSecurity = KafkaSecurity()
    partitions: int = Field(8, ge=1, le=1024, description="partitions of every topic cem creates")
    replication_factor: int = Field(1, ge=1)
    topics: Topics = Topics()
    deadletter_retention_days: int = Field(30, ge=1)
    # The judge's state is rebuilt from the by-customer topic after its newest snapshot, so the
    # topic must keep far longer than worker.snapshot_interval_s.
    internal_retention_days: int = Field(7, ge=1, description="retention of cem.internal.by-customer")


class WorkerSettings(Section):
    app_id: str = "cem-pipeline"
    web_port: int = Field(6066, ge=1, le=65535)
    batch_size: int = Field(2000, ge=1, le=100_000, description="records stage A takes at most per batch")
    insert_rows: int = Field(20_000, ge=1, le=1_000_000, description="timeline rows per ClickHouse insert at most")
    batch_within_s: float = Field(
        0.5, gt=0, le=60, description="longest a judged row waits for its ClickHouse insert (alerts do not wait)"
    )
    session_timeout_s: float = Field(10.0, gt=0)
    # Kafka's static membership (KIP-345), as Kafka Streams advises for local state: the
    # member id is kept with the state on disk, so a worker restarted on its disk rejoins as
    # itself and has its partitions back at once, not after session_timeout_s; a new disk is
    # a new member. The cost: a worker stopped for good keeps its partitions from the others
    # for session_timeout_s.
    static_membership: bool = Field(
        True, description="a worker restarted on its disk gets its partitions back at once (group.instance.id)"
    )
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=5000, description="longest the broker holds a fetch that finds nothing new (latency vs requests)"
    )
    # Kafka's fetch.min.bytes. With Kafka's default of 1, a consumer of a steady trickle sends
    # a fetch for every few records, each one costing the worker and the broker CPU the judge
    # needs: at half load, 64 KiB took 10 % off the workers' CPU (docs/benchmarks.md). The
    # cost: a quiet topic's records wait up to fetch_max_wait_ms at the broker.
    fetch_min_bytes: int = Field(
        64 * 2**10, ge=1, le=2**20,  # far above what a fetch brings, every fetch would wait
        description="the broker answers a fetch once this much is there, or after fetch_max_wait_ms",
    )  # fmt: skip
    # Kafka's max.partition.fetch.bytes. A record batch larger than this comes only as the
    # first partition of a fetch response (KIP-74): keep it above every producer's batches
    # (librdkafka's are up to 1,000,000 bytes; cem's own up to producer_batch_bytes).
    fetch_partition_bytes: int = Field(
        2**20, ge=16 * 1024, le=64 * 2**20,
        description="most a fetch brings of one partition; a consumer holds up to one fetch per partition (memory)",
    )  # fmt: skip
    # The channel topics read in timestamp order across their partitions, as Kafka Streams
    # does (max.task.idle.ms, buffered.records.per.partition): pipeline/kafka/aligned.py
    align_max_idle_ms: float = Field(
        500.0, ge=0, le=60_000,
        description="longest a channel partition with unfetched records holds back the others' newer ones (0: never)",
    )  # fmt: skip
    align_buffered_per_partition: int = Field(
        1000, ge=1, le=100_000, description="records of a channel partition fetched ahead at most (plus one batch)"
    )
    # Stage A's commits are round trips its next batch would wait for (7-8 ms each at 4,000
    # touchpoints/s): finished batches are committed together (pipeline/engine/batches.py)
    commit_interval_s: float = Field(
        1.0, gt=0, le=60,
        description="how often stage A commits the touchpoints it forwarded (CRM profiles at once); "
        "a crash forwards at most this much again, which the judge drops",
    )  # fmt: skip
    max_future_skew_hours: float = Field(24.0, ge=0, description="events further ahead of the clock are rejected")
    # ClickHouse refuses an insert whose rows span more than 100 monthly partitions
    # (max_partitions_per_insert_block): 3,000 days keep a batch's events within 99 months.
    max_past_days: float = Field(
        1825.0, gt=0, le=3000, description="events further behind the clock are rejected (dead-letter topic)"
    )
    # at most what cem itself can write on: a touchpoint goes on as a row, or to the dead-letter topic
    max_message_bytes: int = Field(
        256 * 1024, ge=1024, le=900 * 1024, description="larger touchpoints go to the dead-letter topic"
    )
    snapshot_interval_s: float = Field(
        300.0, ge=1, description="longest a partition with changes goes without a snapshot of its state"
    )
    snapshot_min_touchpoints: int = Field(
        50_000, ge=1, description="a partition is snapshotted after this many touchpoints, or as many as it holds"
    )
    bootstrap_timeout_s: float = Field(
        120.0, ge=0, description="longest the touchpoints wait at start-up for the CRM profiles to be indexed"
    )
    idle_sweep_s: float = Field(
        60.0, ge=0.1, le=3600, description="how often the judge looks for customers idle longer than the kept history"
    )
    # Long enough for a busy worker (one loading its partitions after a rebalance) to forward
    # its profiles: a batch resolved without them files a touchpoint under `anon:`/`unresolved:`,
    # and if this worker then dies before its commit, the batch is resolved again with them, so
    # the touchpoint shows under two customers. It only waits while profiles are on their way.
    profile_wait_s: float = Field(
        30.0,
        ge=0,
        le=600,
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
    log_repeats_every_s: float = Field(
        10.0, ge=0, description="a Kafka client's repeated log message is written once per this many seconds"
    )
    # The worker freezes what it holds after each insert instead of letting the collector walk
    # it (pipeline/engine/memory.py); this bounds the cyclic garbage frozen with it.
    gc_full_every_s: float = Field(
        3600.0, ge=60, le=7 * 86_400,
        description="how often everything held is looked at for cyclic garbage: a pause of ~1 s per million objects",
    )  # fmt: skip
    data_dir: Path = Path(".local/worker")

    @property
    def resolve_group(self) -> str:
        """The consumer group that reads the channel topics and the CRM topic (stage A)."""
        return f"{self.app_id}-resolve"

    @property
    def judge_group(self) -> str:
        """The consumer group that reads the internal by-customer topic (stage B)."""
        return f"{self.app_id}-judge"


class StateSettings(Section):
    """The judge's state on local disk (RocksDB) and what of it is held in memory. The
    defaults fit a worker of 2 cores and 4 GiB with 8 partitions (docs/operations.md)."""

    dir: Path | None = Field(None, description="where the databases live; default: <worker.data_dir>/state")
    cache_customers: int = Field(
        5_000, ge=100, le=10_000_000, description="customers' states kept decoded in memory (most recently used)"
    )
    block_cache_mib: int = Field(32, ge=8, le=65_536, description="RocksDB block cache, shared by every database")
    write_buffer_mib: int = Field(
        32, ge=8, le=65_536, description="RocksDB memtables of every database together (write buffer manager)"
    )
    identity_cache_entries: int = Field(
        20_000, ge=0, le=50_000_000, description="identity index entries kept in memory (most recently used)"
    )
    compression: Literal["lz4", "zstd", "none"] = "lz4"
    cleanup_delay_s: float = Field(
        600.0,
        ge=0,
        le=7 * 86_400,
        description="a partition's copy on disk is deleted this long after another worker got it",
    )
    # Compaction may remove a tombstone of the identity topic a day after it was written (the
    # topic's delete.retention.ms, set by cem): an index on disk older than that could have
    # missed a removal, so one older than this is read again whole.
    identity_resume_hours: float = Field(
        20.0, ge=0, lt=24, description="an identity index on disk older than this is rebuilt from Kafka"
    )


class RepeatContactConfig(Section):
    window_days: int = Field(7, ge=1, le=365)
    transfer_grace_minutes: int = Field(15, ge=0, le=24 * 60)
    alert_cooldown_minutes: int = Field(
        60, ge=0, le=7 * 24 * 60, description="a matter's next alert no sooner than this, unless more severe"
    )
    max_evidence: int = Field(50, ge=2, le=1000, description="newest contacts counted and listed per matter")


class ReEntryConfig(Section):
    window_days: int = Field(30, ge=1, le=365)
    alert_threshold: int = Field(3, ge=2, le=1000)
    max_evidence: int = Field(50, ge=2, le=1000, description="newest entries counted and listed per field")


class RulesSettings(Section):
    """The judge's settings. The friction rules themselves are in the rule file (`file`,
    default config/rules.yaml; docs/rules.md). The `repeat_contact` and `re_entry` keys of
    earlier versions still work: a key set here (in config/cem.yaml or CEM_RULES__...)
    overrides the same parameter of the rule of that name in the rule file."""

    file: Path | None = Field(None, description="the friction rules (docs/rules.md); default config/rules.yaml")
    repeat_contact: RepeatContactConfig = RepeatContactConfig()
    re_entry: ReEntryConfig = ReEntryConfig()
    vip_tiers: list[str] = ["gold", "platinum"]
    allowed_lateness_days: int = Field(7, ge=0, le=365)
    max_events_per_customer: int = Field(
        2000, ge=10, le=100_000, description="events kept per customer; the oldest go first"
    )
    field_vocabulary: list[str] = list(FIELD_VOCABULARY)
    # a contact's matter is one of these, or `other` (counted, never judged as a repeat)
    matter_vocabulary: list[str] = list(MATTER_VOCABULARY)

    @field_validator("vip_tiers", "field_vocabulary", "matter_vocabulary")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [s.strip().lower() for s in v]

    @property
    def rules_path(self) -> Path:
        return self.file if self.file is not None else DEFAULT_RULES

    def rule_file(self) -> RuleFile:
        """The rule file, validated, with the legacy keys set here applied; ConfigError names
        the rule and the key of a problem."""
        path = self.rules_path
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"rules.file: cannot read the rule file {path} ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
        try:
            parsed = parse_rule_file(data, str(path))
        except RuleFileError as e:
            raise ConfigError(str(e)) from None
        return self._legacy(parsed)

    def _legacy(self, parsed: RuleFile) -> RuleFile:
        """The rule file with the legacy keys set here applied; one that changes what the file
        says is logged, so that an old config/cem.yaml does not silently win over the rule file."""
        rc, re = self.repeat_contact, self.re_entry
        # (legacy key, the rule's name or "contacts", its key there, the value in the file's terms)
        wanted: list[tuple[str, str, str, Any]] = []
        for k in sorted(rc.model_fields_set):
            v = getattr(rc, k)
            if k == "window_days":
                wanted += [(k, "repeat_contact", "window", f"{v}d"), (k, "contacts", "window", f"{v}d")]
            elif k == "transfer_grace_minutes":
                wanted.append((k, "contacts", "transfer_grace", f"{v}m"))
            elif k == "alert_cooldown_minutes":
                wanted.append((k, "repeat_contact", "cooldown", f"{v}m"))
            else:
                wanted.append((k, "repeat_contact", k, v))
        names = {"window_days": "window", "alert_threshold": "threshold", "max_evidence": "max_evidence"}
        for k in sorted(re.model_fields_set):
            v = getattr(re, k)
            wanted.append((k, "re_entry", names[k], f"{v}d" if k == "window_days" else v))
        legacy = (("repeat_contact", "repeat"), ("re_entry", "known_entry"))
        targets: dict[str, Any] = {"contacts": parsed.contacts}
        targets |= {r.name: r for r in parsed.rules if (r.name, r.template) in legacy}
        for k, name, key, value in wanted:
            target = targets.get(name)
            if target is None:
                continue
            before = getattr(target, key)
            same = duration_us(before) == duration_us(value) if isinstance(value, str) else before == value
            if not same:
                section = "repeat_contact" if name in ("repeat_contact", "contacts") else "re_entry"
                log.warning(
                    "rules.%s.%s (config/cem.yaml or CEM_RULES__...) overrides %s: %s instead of %s",
                    section, k, f"contacts.{key}" if name == "contacts" else f"{key} of rule {name!r}", value, before,
                )  # fmt: skip
            targets[name] = target.model_copy(update={key: value})
        rules = [targets.get(r.name, r) if r.name in ("repeat_contact", "re_entry") else r for r in parsed.rules]
        return RuleFile.model_construct(contacts=targets["contacts"], rules=rules)

    def to_rules(self) -> Rules:
        parsed = self.rule_file()
        contacts_days = max(1, duration_us(parsed.contacts.window) // MICROS_PER_DAY)
        entry_windows = [duration_us(r.window) for r in parsed.rules if isinstance(r, KnownEntryRule) and r.enabled]
        fields_days = max(entry_windows) // MICROS_PER_DAY if entry_windows else self.re_entry.window_days
        return Rules(
            repeat_contact=RepeatContactRules(
                contacts_days,
                duration_us(parsed.contacts.transfer_grace) // 60_000_000,
                self.repeat_contact.alert_cooldown_minutes,
                self.repeat_contact.max_evidence,
            ),
            re_entry=ReEntryRules(max(1, fields_days), self.re_entry.alert_threshold, self.re_entry.max_evidence),
            vip_tiers=frozenset(self.vip_tiers),
            allowed_lateness_days=self.allowed_lateness_days,
            max_events_per_customer=self.max_events_per_customer,
            friction=tuple(parsed.rules),
        )


# Published on purpose (hence the noqa), so accepted only on the local stack
# (Settings.check_fingerprint_secret).
DEV_FINGERPRINT_SECRET = "cem-pipeline-dev-secret-change-me"  # noqa: S105


class PrivacySettings(Section):
    # Salt of the identifier fingerprints. Change it for production: with the default an
    # attacker who knows an email can test whether it is in the identity index.
    fingerprint_secret: SecretStr = SecretStr(DEV_FINGERPRINT_SECRET)

    @property
    def dev_secret(self) -> bool:
        """The fingerprint secret is the published development default."""
        return self.fingerprint_secret.get_secret_value() == DEV_FINGERPRINT_SECRET


class _YamlSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source (below the environment: `CEM_...` wins), with cem's
    rules: a config file named but missing is an error, the default one may be absent, and a
    YAML error says where without quoting the line (it may hold a password)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.exists() and path != DEFAULT_CONFIG:
            raise ConfigError(f"config file not found: {path}")
        try:
            super().__init__(settings_cls, yaml_file=path)
        except yaml.YAMLError as e:
            raise yaml_error(path, e) from None
        if not isinstance(self.yaml_data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CEM_", env_nested_delimiter="__", extra="forbid", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    worker: WorkerSettings = WorkerSettings()
    state: StateSettings = StateSettings()
    rules: RulesSettings = RulesSettings()
    privacy: PrivacySettings = PrivacySettings()
    collector: CollectorSettings = CollectorSettings()  # `cem collect` (pipeline/sources/)
    adapt: AdaptSettings = AdaptSettings()  # `cem adapt` (pipeline/sources/)

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
    def state_dir(self) -> Path:
        """Where the worker's RocksDB databases live."""
        return self.state.dir if self.state.dir is not None else self.worker.data_dir / "state"

    @property
    def secret(self) -> bytes:
        return self.privacy.fingerprint_secret.get_secret_value().encode()

    @property
    def remote_hosts(self) -> list[str]:
        """The Kafka and ClickHouse hosts that are not this machine (loopback)."""
        hosts = [_host_of(server) for server in self.kafka.bootstrap_servers.split(",")]
        return [h for h in dict.fromkeys([*hosts, self.clickhouse.host]) if not _loopback(h)]

    def check_fingerprint_secret(self) -> None:
        """Refuse the development fingerprint secret outside the local stack: whoever knows it
        (it is published) can test any email or phone against the identity index and the
        receipts. The local stack (Kafka and ClickHouse on loopback) may use it."""
        if self.privacy.dev_secret and self.remote_hosts:
            raise ConfigError(
                "privacy.fingerprint_secret is the development default, and Kafka or ClickHouse is not on this "
                f"machine ({', '.join(self.remote_hosts)}): set your own secret "
                "(CEM_PRIVACY__FINGERPRINT_SECRET, e.g. from `openssl rand -hex 32`)"
            )

    def redacted(self) -> dict[str, Any]:
        """The effective config with secrets hidden (`cem config check`)."""
        out = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        if self.privacy.dev_secret:
            out["privacy"]["fingerprint_secret"] += " (the development default)"
        return out


def _host_of(server: str) -> str:
    """The host of `host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    server = server.strip()
    if server.startswith("["):
        return server[1:].partition("]")[0]
    if server.count(":") == 1:
        return server.partition(":")[0]
    return server


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Keys whose values are never printed: passwords, secrets, tokens, keys, credentials, and
# URLs (webhook URLs and DSNs carry tokens and passwords).
def load_settings(**overrides: Any) -> Settings:
    """Load and validate; raise ConfigError naming each bad key."""
    try:
        settings = Settings(**overrides)
        settings.rules_obj  # noqa: B018  (the rule file is checked at start-up, with the rest)
        return settings
    except ValidationError as e:
        raise describe_errors(e) from None
    except SettingsError as e:  # a CEM_* variable for a list or a section that is not JSON
        found = re.search(r'field "(\w+)"', str(e))
        section = found.group(1) if found else "?"
        raise ConfigError(
            f"invalid configuration:\n  {section}: a CEM_{section.upper()}__... variable is not valid JSON "
            "(lists and sections set from the environment are written in JSON)"
        ) from None
