"""The benchmark workload: many customers with skewed activity, three channels, CRM profiles,
and friction injected with ground-truth labels.

The labels come from how the friction is injected, never from the detectors. The rest of
the traffic is kept free of friction (page views, searches, logins, bookings without
personal-data fields, and contacts whose matters never repeat), so the labels are the whole
truth. Near misses are injected as well, to test precision: the same matter again after the
window has passed, or a field entered at only three places.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

START = datetime(2026, 1, 1, tzinfo=UTC)
# A month of activity. The benchmark allows 30 days of lateness (bench/run.py): the topics are
# pre-produced and then read as fast as possible, and Kafka does not align topics by event
# time, so one channel can run weeks ahead of another while the backlog is read.
DAYS = 30
TOPIC = {
    "web": "cem.touchpoints.web",
    "call_center": "cem.touchpoints.callcenter",
    "booking": "cem.touchpoints.booking",
}
PROFILES = "cem.crm.profiles"
MATTERS = ("baggage_allowance", "refund_status", "seat_selection", "flight_change", "lost_luggage", "miles_credit")
REENTRY_FIELDS = ("passport_number", "date_of_birth", "address", "phone")
PLACES = (("web", "checkin/passenger-details"), ("web", "profile/edit"), ("booking", "checkin/apis"),
          ("booking", "manage-booking/passenger"))  # fmt: skip
TIERS = ("none", "none", "none", "silver", "silver", "gold", "platinum")
Label = tuple[str, str, str]  # (kind, customer_id, matter or field)


@dataclass
class Workload:
    profiles: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (topic, key, value)
    touchpoints: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    labels: set[Label] = field(default_factory=set)
    customers: int = 0
    event_ids: list[str] = field(default_factory=list)  # of the touchpoints, in order


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def generate(
    touchpoints: int, customers: int, seed: int = 11, friction_share: float = 0.05, prefix: str = "B"
) -> Workload:
    """About `touchpoints` touchpoints over `customers` customers (heavy-tailed activity).
    `prefix` starts every customer and event id, so that several workloads can share topics."""
    rng = random.Random(seed)
    out = Workload(customers=customers)
    ids = [f"{prefix}-{i:07d}" for i in range(customers)]
    # Heavy-tailed activity: most customers do a few things, a few do hundreds (capped).
    raw = [rng.paretovariate(1.4) for _ in ids]
    scale = touchpoints * (1 - 2.5 * friction_share) / sum(min(r, 100.0) for r in raw)
    counts = [max(1, min(300, round(r * scale))) for r in raw]
    period_us = DAYS * 86_400_000_000
    start_us = int(START.timestamp() * 1_000_000)
    events: list[tuple[int, str, dict[str, object]]] = []
    n = 0

    def add(channel: str, t_us: int, value: dict[str, object]) -> None:
        nonlocal n
        n += 1
        value["event_id"] = f"{prefix}{channel[0]}{n}"
        value["occurred_at"] = _iso(datetime.fromtimestamp(t_us / 1e6, UTC))
        events.append((t_us, channel, value))

    for i, c in enumerate(ids):
        profiled = rng.random() < 0.9
        if profiled:
            profile = {
                "customer_id": c, "version": 1, "updated_at": "2025-12-01T00:00:00Z", "loyalty_tier": rng.choice(TIERS),
                "identifiers": {"email": f"{c.lower()}@example.org", "loyalty_id": f"LY{c[2:]}",
                                "phone": f"+44 7700 {c[2:]}"},
                "known_fields": ["name", "email"],  # never the injected fields: labels stay exact
            }  # fmt: skip
            out.profiles.append((PROFILES, c.encode(), orjson.dumps(profile)))
        contacts = 0
        for _ in range(counts[i]):
            t = start_us + rng.randrange(period_us)
            roll = rng.random()
            if roll < 0.62:
                who: dict[str, object] = {"customer_id": c}
                if profiled and roll < 0.06:  # known by email only: exercises identity resolution
                    who = {"identifiers": {"email": f"{c.upper()}@Example.org", "anonymous_id": f"a-{c}"}}
                kind = ("page_view", "search", "login")[int(roll * 100) % 3]
                add("web", t, {"type": kind, "session_id": f"s-{c}", "page": "/", **who})
            elif roll < 0.82:
                add("booking", t, {"type": "booking_created", "booking_ref": f"R{n}", "customer_id": c})
            else:  # a contact whose matter this customer never raises again: no friction
                contacts += 1
                add("call_center", t, {"type": "call", "reason": f"enquiry_{contacts}",
                                       "agent_id": f"A-{rng.randint(1, 60)}", "queue": "general",
                                       "duration_s": rng.randint(60, 900), "outcome": "resolved",
                                       "customer_id": c})  # fmt: skip
        if rng.random() < friction_share:  # repeat contacts: 2-4 on one matter within 5 days
            matter = rng.choice(MATTERS)
            t = start_us + rng.randrange(period_us - 6 * 86_400_000_000)
            for _ in range(rng.randint(2, 4)):
                add("call_center", t, {"type": "call", "reason": matter, "agent_id": f"A-{rng.randint(1, 60)}",
                                       "queue": "general", "duration_s": 300, "outcome": "unresolved",
                                       "customer_id": c})  # fmt: skip
                t += rng.randint(2, 30) * 3_600_000_000
            out.labels.add(("repeat_contact", c, matter))
        elif rng.random() < friction_share:  # near miss: the same matter again 8+ days later
            matter = rng.choice(MATTERS)
            t = start_us + rng.randrange(period_us - 20 * 86_400_000_000)
            for _ in range(2):
                add("call_center", t, {"type": "chat", "reason": matter, "agent_id": "A-1", "queue": "general",
                                       "duration_s": 120, "outcome": "unresolved", "customer_id": c})  # fmt: skip
                t += rng.randint(8, 12) * 86_400_000_000
        if rng.random() < friction_share:  # re-entry: one field at 4 places within 20 days
            fld = rng.choice(REENTRY_FIELDS)
            places = 4 if rng.random() < 0.7 else 3  # 3 places: two re-entries, below the threshold
            t = start_us + rng.randrange(period_us - 21 * 86_400_000_000)
            for channel, place in rng.sample(PLACES, places):
                value: dict[str, object] = {"fields": [fld], "customer_id": c}
                if channel == "web":
                    value |= {"type": "form_submit", "form": place, "session_id": f"s-{c}"}
                else:
                    value |= {"type": "passenger_details", "step": place, "booking_ref": f"R{n}"}
                add(channel, t, value)
                t += rng.randint(1, 5) * 86_400_000_000
            if places == 4:
                out.labels.add(("re_entry", c, fld))
    events.sort(key=lambda e: e[0])
    for _, channel, value in events:
        out.touchpoints.append((TOPIC[channel], None, orjson.dumps(value)))
        out.event_ids.append(str(value["event_id"]))
    return out
