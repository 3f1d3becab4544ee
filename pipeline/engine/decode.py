"""Where an event enters: raw Kafka bytes -> validated message, or a dead-letter reason.

Never raises on input: every failure becomes a `Rejected` with a reason that names the
field, which the agent sends to the dead-letter topic together with the original bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from schemas.profile import ProfileSnapshot
from schemas.touchpoints import MODEL_BY_CHANNEL, Channel, Touchpoint


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # short machine-friendly class: invalid_json, invalid_field, too_large, ...
    field: str  # dotted path of the offending field ("" when the whole message is bad)
    detail: str  # one sentence for a person

    def describe(self) -> str:
        where = f" at {self.field}" if self.field else ""
        return f"{self.reason}{where}: {self.detail}"

    def headers(self, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
        """The dead-letter topic's headers for a message parked for this reason."""
        return [
            ("cem.error.reason", self.reason.encode()),
            ("cem.error.field", self.field.encode()),
            ("cem.error.detail", self.describe().encode()),
            ("cem.source.topic", topic.encode()),
            ("cem.source.partition", str(partition).encode()),
            ("cem.source.offset", str(offset).encode()),
            ("cem.error.at", datetime.now(UTC).isoformat().encode()),
        ]


def _from_validation(e: ValidationError) -> Rejected:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    msg = err["msg"]
    if err["type"] == "json_invalid":
        return Rejected("invalid_json", "", msg)
    if err["type"] == "model_type" and not loc:
        return Rejected("invalid_json", "", "the value is not a JSON object")
    if err["type"] == "missing":
        return Rejected("missing_field", loc, msg)
    if loc == "" and msg.startswith("Value error, "):
        # our model validators word their errors as "<field>: <why>"
        text = msg.removeprefix("Value error, ")
        field, _, why = text.partition(": ")
        return Rejected("invalid_field", field, why or text)
    return Rejected("invalid_field", loc, msg)


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], raw: bytes, max_bytes: int) -> M | Rejected:
    """Size, encoding and schema, in that order, each with its own reason."""
    if len(raw) > max_bytes:
        return Rejected("too_large", "", f"{len(raw)} bytes is over the limit of {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected("invalid_utf8", "", f"byte {e.start} is not valid UTF-8")
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        return _from_validation(e)


#: what ClickHouse's DateTime holds (seconds in a UInt32): a row outside it can never be written
DATETIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
DATETIME_MAX = datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)


def _unknown_name(names: list[str], vocabulary: frozenset[str], where: str) -> Rejected | None:
    for i, name in enumerate(names):
        if name not in vocabulary:
            # The reason travels to logs and metrics, so it quotes nothing: a producer's
            # mistake can put a value (a surname, an email) where a name belongs.
            return Rejected("invalid_field", f"{where}.{i}", "not in the field vocabulary (the value is not shown)")
    return None


def decode_touchpoint(
    channel: Channel,
    raw: bytes | None,
    *,
    vocabulary: frozenset[str],
    now: datetime,
    max_future: timedelta,
    max_bytes: int,
    max_past: timedelta | None = None,
) -> Touchpoint | Rejected:
    """A validated touchpoint, or why not. Its event time must lie between `now - max_past`
    and `now + max_future`, and inside what ClickHouse can store: a row outside would make
    every insert of its batch fail, for good."""
    if raw is None:
        return Rejected("empty_value", "", "a touchpoint message needs a JSON value")
    event = _parse(MODEL_BY_CHANNEL[channel], raw, max_bytes)
    if isinstance(event, Rejected):
        return event
    if bad := _unknown_name(event.fields or [], vocabulary, "fields"):
        return bad
    if event.occurred_at > min(now + max_future, DATETIME_MAX):
        return Rejected("invalid_field", "occurred_at", f"{event.occurred_at.isoformat()} is too far in the future")
    oldest = DATETIME_MIN if max_past is None else max(now - max_past, DATETIME_MIN)
    if event.occurred_at < oldest:
        return Rejected(
            "invalid_field", "occurred_at", f"{event.occurred_at.isoformat()} is older than {oldest.date().isoformat()}"
        )
    return event


def decode_profile(
    key: bytes | None, raw: bytes | None, *, vocabulary: frozenset[str], max_bytes: int
) -> ProfileSnapshot | str | Rejected:
    """A snapshot, or the customer id of a tombstone, or a rejection."""
    if raw is None:
        if not key:
            return Rejected("missing_key", "", "a tombstone needs the customer_id as its key")
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected("invalid_utf8", "key", "the key is not valid UTF-8")
    profile = _parse(ProfileSnapshot, raw, max_bytes)
    if isinstance(profile, Rejected):
        return profile
    if key is not None and key.decode("utf-8", "replace") != profile.customer_id:
        return Rejected("key_mismatch", "customer_id", "the message key must be the customer_id")
    return _unknown_name(profile.known_fields, vocabulary, "known_fields") or profile
