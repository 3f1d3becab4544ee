"""A random workload for rule parity (live judge vs. `cem rules preview` over the timeline):
customers whose events cluster in sessions minutes to hours apart, so that every template of
the rule file finds something: repeats, re-entries, sequences with and without the event in
between, transfer chains. Times are whole seconds, as the timeline keeps them.

`touchpoints(seed)` gives channel messages (JSON objects, as producers send them) and CRM
profiles; `touches(seed)` the same as the judge's `Touch`es, for tests without Kafka."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import Rules, Touch
from processors.normalize import matter_of, to_micros

T0 = datetime(2026, 4, 1, tzinfo=UTC)
MATTERS = ("baggage_allowance", "refund_status", "seat_selection")
FIELDS = ("passport_number", "date_of_birth", "address")
AGENTS = ("A-1", "A-2", "A-3", "A-4")
TIERS = ("none", "silver", "gold")
OUTCOMES = ("resolved", "unresolved", "transferred", "transferred")

#: extra rules for parity: every template again, with conditions, keys and cooldowns
EXTRA_RULES: list[dict[str, Any]] = [
    {"name": "repeat_any_contact", "template": "repeat", "match": {"contact": ["new", "continuation"]},
     "key": "matter", "window": "2d", "threshold": 3, "cooldown": "3h", "severity": {"high_at": 4},
     "summary": "{who} contacted us {count} times about {subject}."},
    {"name": "busy_on_the_web", "template": "repeat", "match": {"channel": "web", "type": {"not": ["page_view"]}},
     "window": "6h", "threshold": 4, "max_evidence": 5, "summary": "{who}: {count} web events {span}."},
    {"name": "passport_at_checkin", "template": "known_entry", "fields": ["passport_number"],
     "match": {"channel": ["web", "booking"]}, "window": "5d", "threshold": 2,
     "summary": "{who} gave {subject} {count} times."},
    {"name": "login_then_call", "template": "sequence", "first": {"channel": "web", "type": "login"},
     "then": {"channel": "call_center"}, "without": {"channel": "web", "type": "form_submit"}, "window": "3h",
     "key": None, "cooldown": "1h", "summary": "{who} logged in, then called {span}."},
    {"name": "chat_then_call_same_matter", "template": "sequence", "first": {"channel": "web", "type": "chat"},
     "then": {"contact": "new", "channel": "call_center"}, "window": "12h", "key": "matter",
     "summary": "{who} chatted then called about {subject}."},
    {"name": "two_agents", "template": "chain", "agents": 2, "summary": "{who} saw {distinct_agents} agents."},
]  # fmt: skip


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def generate(seed: int, customers: int = 30, prefix: str = "P") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(profiles, events): events as {"channel": ..., "value": {...}} in no particular order."""
    rng = random.Random(seed)
    profiles: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    n = 0
    for c in range(customers):
        cid = f"{prefix}-{c:03d}"
        profiles.append({"customer_id": cid, "version": 1, "updated_at": "2026-01-01T00:00:00Z",
                         "loyalty_tier": rng.choice(TIERS),
                         "known_fields": rng.sample(FIELDS, rng.randint(0, 1)) + ["name"]})  # fmt: skip
        contacts: list[str] = []
        for _ in range(rng.randint(1, 4)):  # sessions
            t = T0 + timedelta(seconds=rng.randrange(8 * 86400))
            for _ in range(rng.randint(2, 7)):
                t += timedelta(seconds=rng.choice((30, 120, 600, 1800, 3 * 3600, 8 * 3600)))
                n += 1
                eid = f"{prefix}{n}"
                base: dict[str, Any] = {"event_id": eid, "occurred_at": _iso(t), "customer_id": cid}
                roll = rng.random()
                if roll < 0.35:
                    type_ = rng.choice(("page_view", "login", "form_submit", "chat", "contact_form", "search"))
                    value = base | {"type": type_, "session_id": f"s{c}"}
                    if type_ == "form_submit":
                        value |= {"form": rng.choice(("checkin/passenger-details", "profile/edit")),
                                  "fields": rng.sample(FIELDS, rng.randint(1, 2))}  # fmt: skip
                    if type_ in ("chat", "contact_form"):
                        value["reason"] = rng.choice((*MATTERS, None))
                    events.append({"channel": "web", "value": value})
                elif roll < 0.55:
                    type_ = rng.choice(("passenger_details", "payment_failed", "booking_created"))
                    value = base | {"type": type_, "booking_ref": f"R{c}"}
                    if type_ == "passenger_details":
                        value |= {"step": rng.choice(("checkin/apis", "manage-booking/passenger")),
                                  "fields": rng.sample(FIELDS, rng.randint(1, 2))}  # fmt: skip
                    events.append({"channel": "booking", "value": value})
                else:
                    value = base | {"type": rng.choice(("call", "call", "chat", "email")),
                                    "reason": rng.choice(MATTERS), "agent_id": rng.choice(AGENTS),
                                    "queue": rng.choice(("general", "loyalty")),
                                    "duration_s": rng.choice((0, 60, 300)),
                                    "outcome": rng.choice(OUTCOMES)}  # fmt: skip
                    if contacts and rng.random() < 0.3:
                        value["previous_contact_id"] = rng.choice(contacts)
                    if rng.random() < 0.2:
                        value["fields"] = rng.sample(FIELDS, 1)
                    contacts.append(eid)
                    events.append({"channel": "call_center", "value": value})
    return profiles, events


def to_touch(channel: str, v: dict[str, Any]) -> Touch:
    """The Touch stage A makes of a message (processors.normalize.to_touch, without pydantic)."""
    is_contact = channel == "call_center" or v["type"] in ("chat", "contact_form")
    detail = v.get("form") if channel == "web" else v.get("step") if channel == "booking" else v.get("queue")
    reason = v.get("reason")
    return Touch(
        customer_id=v["customer_id"], channel=channel, event_id=v["event_id"],
        t=to_micros(datetime.fromisoformat(v["occurred_at"].replace("Z", "+00:00"))), type=v["type"],
        matter=matter_of(reason, None) if is_contact and reason else "", place=f"{channel}:{detail or v['type']}",
        agent_id=v.get("agent_id") or "", fields=tuple(dict.fromkeys(v.get("fields") or ())), is_contact=is_contact,
        outcome=v.get("outcome") or "", duration_s=v.get("duration_s") or 0,
        previous_contact_id=v.get("previous_contact_id") or "",
    )  # fmt: skip


def judge_all(profiles: list[dict[str, Any]], events: list[dict[str, Any]], rules: Rules) -> tuple[Any, Any]:
    """Every row version and alert version the judge writes, events taken in the given order."""
    states: dict[str, CustomerState] = {}
    for p in profiles:
        st = states.setdefault(p["customer_id"], CustomerState(p["customer_id"]))
        apply_profile(st, Profile(1, p["loyalty_tier"], tuple(p["known_fields"])))
    rows, alerts = [], []
    for e in events:
        touch = to_touch(e["channel"], e["value"])
        st = states.setdefault(touch.customer_id, CustomerState(touch.customer_id))
        _, verdict = judge(st, touch, rules, now_us=0)
        rows.extend(verdict.rows)
        alerts.extend(verdict.alerts)
    return rows, alerts
