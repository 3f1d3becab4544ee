"""Bad input becomes a rejection whose reason names the field; good input passes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.engine.decode import Rejected, decode_profile, decode_touchpoint
from pipeline.settings import FIELD_VOCABULARY
from schemas.profile import ProfileSnapshot

NOW = datetime(2026, 11, 22, tzinfo=UTC)
KW = {"vocabulary": frozenset(FIELD_VOCABULARY), "now": NOW, "max_future": timedelta(hours=24), "max_bytes": 4096}
CALL = {
    "event_id": "c-1",
    "occurred_at": "2026-03-02T10:20:00+01:00",
    "type": "call",
    "customer_id": "C-1",
    "reason": "baggage",
}


def call(**changes: object) -> bytes:
    value = {**CALL, **changes}
    return json.dumps({k: v for k, v in value.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b'{"event_id": ', "invalid_json", ""),
        (b"[1, 2]", "invalid_json", ""),
        (b"\xff\xfe{}", "invalid_utf8", ""),
        (call(event_id=...), "missing_field", "event_id"),
        (call(reason=...), "missing_field", "reason"),
        (call(event_id=""), "invalid_field", "event_id"),
        (call(event_id="x" * 129), "invalid_field", "event_id"),
        (call(duration_s="540"), "invalid_field", "duration_s"),
        (call(type="fax"), "invalid_field", "type"),
        (call(outcome="maybe"), "invalid_field", "outcome"),
        (call(occurred_at="2026-03-02T10:20:00"), "invalid_field", "occurred_at"),
        (call(occurred_at="yesterday"), "invalid_field", "occurred_at"),
        (call(occurred_at="2027-01-01T00:00:00Z"), "invalid_field", "occurred_at"),
        (call(customer_id=None), "invalid_field", "customer_id"),
        (call(customer_id=None, identifiers={}), "invalid_field", "customer_id"),
        (call(identifiers={"email": 5}), "invalid_field", "identifiers.email"),
        (call(fields=["dna"]), "invalid_field", "fields.0"),
        (call(fields="passport_number"), "invalid_field", "fields"),
        (call(agent_id="a" * 5000), "too_large", ""),
    ],
)
def test_rejections_name_the_field(raw: bytes, reason: str, field: str) -> None:
    result = decode_touchpoint("call_center", raw, **KW)  # type: ignore[arg-type]
    assert isinstance(result, Rejected), result
    assert (result.reason, result.field) == (reason, field)
    assert result.describe()


def test_form_submit_needs_a_form() -> None:
    raw = json.dumps(
        {"event_id": "w", "occurred_at": "2026-03-02T10:00:00Z", "type": "form_submit", "customer_id": "C"}
    )
    result = decode_touchpoint("web", raw.encode(), **KW)  # type: ignore[arg-type]
    assert isinstance(result, Rejected) and result.field == "form"


def test_empty_value_is_rejected() -> None:
    result = decode_touchpoint("booking", None, **KW)  # type: ignore[arg-type]
    assert isinstance(result, Rejected) and result.reason == "empty_value"


def test_valid_event_with_identifiers_only_and_extra_fields() -> None:
    raw = call(customer_id=None, identifiers={"email": "A@B.C"}, crm_campaign="x", fields=["name"])
    ev = decode_touchpoint("call_center", raw, **KW)  # type: ignore[arg-type]
    assert not isinstance(ev, Rejected)
    assert ev.identifiers is not None and ev.identifiers.email == "A@B.C"
    assert ev.occurred_at.utcoffset() == timedelta(hours=1)


def test_profiles_tombstones_and_key_mismatch() -> None:
    good = json.dumps(
        {"customer_id": "C-1", "version": 2, "updated_at": "2026-01-01T00:00:00Z", "known_fields": ["name"]}
    ).encode()
    kw = {"vocabulary": frozenset(FIELD_VOCABULARY), "max_bytes": 4096}
    assert isinstance(decode_profile(b"C-1", good, **kw), ProfileSnapshot)  # type: ignore[arg-type]
    assert decode_profile(b"C-1", None, **kw) == "C-1"  # type: ignore[arg-type]
    mismatch = decode_profile(b"C-2", good, **kw)  # type: ignore[arg-type]
    assert isinstance(mismatch, Rejected) and mismatch.field == "customer_id"
    missing_key = decode_profile(None, None, **kw)  # type: ignore[arg-type]
    assert isinstance(missing_key, Rejected) and missing_key.reason == "missing_key"
    bad_version = decode_profile(b"C-1", good.replace(b'"version": 2', b'"version": "2"'), **kw)  # type: ignore[arg-type]
    assert isinstance(bad_version, Rejected) and bad_version.field == "version"


@pytest.mark.parametrize(
    ("occurred_at", "max_past"),
    [
        ("1969-12-31T23:59:59Z", None),  # before DateTime's range: its row could never be written
        ("0001-01-01T00:00:00Z", None),
        ("2019-01-01T00:00:00Z", timedelta(days=1825)),  # older than the configured bound
        ("2999-01-01T00:00:00Z", timedelta(days=1825)),  # after DateTime's range, and the future bound
    ],
)
def test_event_times_outside_what_can_be_stored_are_rejected(occurred_at: str, max_past: timedelta | None) -> None:
    got = decode_touchpoint("call_center", call(occurred_at=occurred_at), **KW, max_past=max_past)
    assert isinstance(got, Rejected) and got.field == "occurred_at", got


def test_event_times_inside_the_bounds_pass() -> None:
    kw = {**KW, "max_future": timedelta(days=365 * 200)}
    assert not isinstance(decode_touchpoint("call_center", call(occurred_at="1970-01-01T00:00:00Z"), **kw), Rejected)
    got = decode_touchpoint("call_center", call(occurred_at="2106-02-08T00:00:00Z"), **kw)
    assert isinstance(got, Rejected) and got.field == "occurred_at"
    recent = call(occurred_at="2025-01-01T00:00:00Z")
    assert not isinstance(decode_touchpoint("call_center", recent, **KW, max_past=timedelta(days=1825)), Rejected)
