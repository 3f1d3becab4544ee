"""A small dataset for the SQL kit: the airline story plus three customers with refund calls,
a cross-channel contact, re-entered addresses and a booking -> check-in funnel.

Rows are made by the pure core (the same code the worker runs), every version included, so
the kit is tested on what the pipeline really writes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pipeline.engine.rows import alert_row, timeline_row
from sinks.clickhouse.writer import ALERT_COLUMNS, TIMELINE_COLUMNS
from tests.scenario import load_lines, run_pure

W, CC, BK, CRM = "cem.touchpoints.web", "cem.touchpoints.callcenter", "cem.touchpoints.booking", "cem.crm.profiles"


def _profile(cid: str, tier: str, known: list[str]) -> dict[str, Any]:
    value = {"customer_id": cid, "version": 1, "updated_at": "2026-01-01T00:00:00Z", "loyalty_tier": tier,
             "known_fields": known}  # fmt: skip
    return {"topic": CRM, "key": cid, "value": value}


def _ev(topic: str, event_id: str, at: str, type_: str, cid: str, **extra: Any) -> dict[str, Any]:
    return {"topic": topic, "key": None,
            "value": {"event_id": event_id, "occurred_at": at, "type": type_, "customer_id": cid, **extra}}  # fmt: skip


EXTRA = [
    _profile("K-1", "silver", ["name", "email"]),
    _profile("K-2", "none", []),
    _profile("K-3", "none", []),
    _ev(BK, "kb1", "2026-03-09T08:00:00Z", "booking_created", "K-1", booking_ref="R1"),
    _ev(BK, "kb2", "2026-03-09T08:00:00Z", "booking_created", "K-2", booking_ref="R2"),
    _ev(BK, "kb3", "2026-03-09T08:00:00Z", "booking_created", "K-3", booking_ref="R3"),
    _ev(CC, "k1", "2026-03-10T09:00:00Z", "call", "K-1", reason="refund_status", agent_id="A-1", outcome="unresolved"),
    _ev(W, "kf1", "2026-03-11T09:00:00Z", "form_submit", "K-1", form="profile/edit", fields=["address"]),
    _ev(CC, "k2", "2026-03-12T09:00:00Z", "call", "K-1", reason="refund_status", agent_id="A-2", outcome="resolved"),
    _ev(W, "k3", "2026-03-16T09:00:00Z", "contact_form", "K-2", reason="refund_status"),
    _ev(BK, "kb4", "2026-03-20T07:00:00Z", "checkin_started", "K-1", step="checkin/apis", fields=["address"]),
    _ev(BK, "kb5", "2026-03-20T07:10:00Z", "checkin_completed", "K-1"),
    _ev(BK, "kb6", "2026-03-21T07:00:00Z", "checkin_started", "K-2"),
    _ev(CC, "k4", "2026-03-30T09:00:00Z", "call", "K-2", reason="refund_status", agent_id="A-1", outcome="resolved"),
]

#: What every kit query must return on this dataset, worked out by hand from the contract's
#: definitions (docs/analysts.md walks through them).
EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "repeat_rate_and_fcr_by_matter_week": [
        ("2026-03-02", "baggage_allowance", 4, 2, 0.5, 0.5, 0),
        ("2026-03-02", "seat_selection", 1, 0, 0.0, 1.0, 0),
        ("2026-03-09", "refund_status", 2, 1, 0.5, 0.5, 0),
        ("2026-03-16", "refund_status", 1, 0, 0.0, 1.0, 0),
        ("2026-03-30", "refund_status", 1, 0, 0.0, 1.0, 1),
    ],
    "one_contact_resolution": [
        ("baggage_allowance", 4, 0.5, 3, 0.6667),
        ("refund_status", 4, 0.75, 3, 0.6667),
        ("seat_selection", 1, 1.0, 1, 1.0),
    ],
    "re_entry_rate_by_field_and_place": [
        ("date_of_birth", "call_center:loyalty", 2, 2, 1.0),
        ("loyalty_id", "call_center:loyalty", 2, 2, 1.0),
        ("passport_number", "web:checkin/passenger-details", 2, 2, 1.0),
        ("address", "booking:checkin/apis", 1, 1, 1.0),
        ("date_of_birth", "web:checkin/passenger-details", 1, 1, 1.0),
        ("passport_number", "booking:manage-booking/passenger", 1, 1, 1.0),
        ("address", "web:profile/edit", 1, 0, 0.0),
    ],
    "top_customers_by_friction": [
        ("C-1042", "gold", 2, 5, 4, 4),
        ("K-1", "silver", 1, 1, 1, 0),
    ],
    "time_between_repeat_contacts": [
        ("baggage_allowance", 2, 34.96, 13.75, 56.17),
        ("refund_status", 1, 48.0, 48.0, 48.0),
    ],
    "agents_most_often_repeated": [
        ("A-12", 1, 1, 1.0),
        ("A-1", 2, 1, 0.5),
        ("A-7", 3, 1, 0.3333),
        ("A-2", 1, 0, 0.0),
    ],
    "booking_checkin_funnel": [(3, 2, 1, 0.3333)],
    # repeat contacts: c-2, w-2 (C-1042, alerts high: gold) and k2 (K-1, medium); re-entries:
    # C-1042's five flagged rows, K-1's kb4; the default file's other rules find nothing here
    "friction_by_rule": [
        ("repeat_contact", 3, 2, 3, 2, 0),
        ("re_entry", 6, 2, 2, 2, 0),
    ],
}


def dataset() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Timeline rows and alert rows (all versions) for the kit dataset."""
    result = run_pure(load_lines() + EXTRA)
    now = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    timeline = [timeline_row(r, now) for r in result.row_versions]
    alerts = [alert_row(a, ("test", 0, 0), now) for a in result.alert_versions]
    return timeline, alerts


def load(client: Any, db: str) -> None:
    timeline, alerts = dataset()
    client.execute(f"INSERT INTO {db}.timeline_versions ({', '.join(TIMELINE_COLUMNS)}) VALUES", timeline)
    client.execute(f"INSERT INTO {db}.friction_alert_versions ({', '.join(ALERT_COLUMNS)}) VALUES", alerts)


def normalize(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Dates as ISO strings and floats rounded, so both engines' answers compare equal."""
    out = []
    for row in rows:
        vals: list[Any] = []
        for v in row:
            if hasattr(v, "isoformat"):
                v = v.isoformat()[:10]
            elif isinstance(v, float):
                v = round(v, 2) if abs(v) >= 10 else round(v, 4)
            vals.append(v)
        out.append(tuple(vals))
    return out
