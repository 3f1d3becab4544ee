"""A labelled workload for the fault tests: customers identified in several ways, friction
injected with ground-truth labels, duplicates, and arrival out of event-time order.

Lines have the shape of `../shared/scenarios/airline_story.jsonl` ({"topic", "key", "value"}):
CRM profiles first, then the touchpoints in *arrival* order. Each touchpoint arrives up to
`disorder_days` after its event time (inside the allowed lateness), and a share of them
arrive twice. Touchpoints name their customer by `customer_id`, by email (any case, with an
anonymous id), by loyalty id, or by phone (any formatting), so identity resolution is on the
path of every result.

The labels come from how friction is injected, never from the detectors; everything else is
kept free of friction (page views, searches, bookings without personal-data fields, contacts
whose matters never repeat), with near misses for precision (the same matter again after the
window; a field entered at only three places).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.workload import MATTERS, PLACES, PROFILES, REENTRY_FIELDS, TOPIC

START = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 30
TIERS = ("none", "none", "silver", "gold", "platinum")
Label = tuple[str, str, str]  # (kind, customer_id, matter or field)


@dataclass
class Journeys:
    profiles: list[dict[str, Any]] = field(default_factory=list)
    touchpoints: list[dict[str, Any]] = field(default_factory=list)  # in arrival order, duplicates included
    labels: set[Label] = field(default_factory=set)
    identified_by: dict[str, int] = field(default_factory=dict)  # how touchpoints name their customer
    # CRM tombstones of customers with a profile and no touchpoint: erasures in the stream
    # that change no result (an erasure's deletions depend on when it comes)
    erasures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return self.profiles + self.touchpoints


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _digits(c: str) -> str:
    return f"{int(c[2:]):06d}"


def generate(
    customers: int = 3000,
    seed: int = 17,
    duplicate_share: float = 0.03,
    disorder_days: float = 3.0,
    background: tuple[int, int] = (2, 8),
    erasures: int = 0,
) -> Journeys:
    rng = random.Random(seed)
    out = Journeys()
    events: list[tuple[datetime, dict[str, Any]]] = []
    n = 0

    def add(channel: str, t: datetime, value: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        events.append((t, {"topic": TOPIC[channel], "key": None,
                           "value": {"event_id": f"{channel[0]}{n}", "occurred_at": _iso(t), **value}}))  # fmt: skip

    for i in range(customers):
        c = f"J-{i:06d}"
        d = _digits(c)
        profiled = rng.random() < 0.9
        if profiled:
            out.profiles.append({"topic": PROFILES, "key": c, "value": {
                "customer_id": c, "version": 1, "updated_at": "2026-02-01T00:00:00Z", "loyalty_tier": rng.choice(TIERS),
                "identifiers": {"email": f"{c.lower()}@example.org", "loyalty_id": f"LY{d}", "phone": f"+44 7700 {d}"},
                "known_fields": ["name", "email"],  # never an injected field: the labels stay exact
            }})  # fmt: skip
        kind = rng.choice(("customer_id", "email", "loyalty_id", "phone")) if profiled else "customer_id"
        who: dict[str, Any] = {
            "customer_id": {"customer_id": c},
            "email": {"identifiers": {"email": f"{c.upper()}@Example.ORG", "anonymous_id": f"anon-{c}"}},
            "loyalty_id": {"identifiers": {"loyalty_id": f"LY{d}"}},
            "phone": {"identifiers": {"phone": f"(+44) 7700-{d[:3]} {d[3:]}"}},
        }[kind]
        out.identified_by[kind] = out.identified_by.get(kind, 0) + 1
        contacts = 0
        for _ in range(rng.randint(*background)):  # friction-free background
            t = START + timedelta(minutes=rng.randrange(DAYS * 24 * 60))
            roll = rng.random()
            if roll < 0.6:
                add("web", t, {"type": rng.choice(("page_view", "search", "login")), "session_id": f"s-{c}",
                               "page": "/", **who})  # fmt: skip
            elif roll < 0.8:
                add("booking", t, {"type": "booking_created", "booking_ref": f"R{n}", **who})
            else:  # a matter this customer never raises again
                contacts += 1
                add("call_center", t, {"type": "call", "reason": f"enquiry_{contacts}",
                                       "agent_id": f"A-{rng.randint(1, 40)}", "queue": "general",
                                       "duration_s": rng.randint(60, 900), "outcome": "resolved", **who})  # fmt: skip
        roll = rng.random()
        if roll < 0.2:  # repeat contacts: 2-4 on one matter within 5 days, across channels
            matter = rng.choice(MATTERS)
            t = START + timedelta(minutes=rng.randrange((DAYS - 6) * 24 * 60))
            for k in range(rng.randint(2, 4)):
                if k and rng.random() < 0.3:
                    add("web", t, {"type": "contact_form", "reason": matter, "session_id": f"s-{c}", **who})
                else:
                    add("call_center", t, {"type": rng.choice(("call", "chat")), "reason": matter,
                                           "agent_id": f"A-{rng.randint(1, 40)}", "queue": "general", "duration_s": 300,
                                           "outcome": "unresolved", **who})  # fmt: skip
                t += timedelta(hours=rng.randint(2, 30))
            out.labels.add(("repeat_contact", c, matter))
        elif roll < 0.3:  # a transfer: two legs of one contact, not a repeat
            matter = rng.choice(MATTERS)
            t = START + timedelta(minutes=rng.randrange(DAYS * 24 * 60))
            first = f"c{n + 1}"
            add("call_center", t, {"type": "call", "reason": matter, "agent_id": "A-1", "queue": "general",
                                   "duration_s": 300, "outcome": "transferred", **who})  # fmt: skip
            add("call_center", t + timedelta(minutes=7), {"type": "call", "reason": matter, "agent_id": "A-2",
                "queue": "loyalty", "duration_s": 200, "outcome": "resolved", "previous_contact_id": first,
                **who})  # fmt: skip
        elif roll < 0.4:  # near miss: the same matter again 8-12 days later
            matter = rng.choice(MATTERS)
            t = START + timedelta(minutes=rng.randrange((DAYS - 13) * 24 * 60))
            for _ in range(2):
                add("call_center", t, {"type": "chat", "reason": matter, "agent_id": "A-3", "queue": "general",
                                       "duration_s": 120, "outcome": "unresolved", **who})  # fmt: skip
                t += timedelta(days=rng.randint(8, 12))
        if rng.random() < 0.25:  # re-entry: one field at 4 places within 20 days (3: below the threshold)
            fld = rng.choice(REENTRY_FIELDS)
            places = 4 if rng.random() < 0.7 else 3
            t = START + timedelta(minutes=rng.randrange((DAYS - 21) * 24 * 60))
            for channel, place in rng.sample(PLACES, places):
                value: dict[str, Any] = {"fields": [fld], **who}
                if channel == "web":
                    value |= {"type": "form_submit", "form": place, "session_id": f"s-{c}"}
                else:
                    value |= {"type": "passenger_details", "step": place, "booking_ref": f"R{n}"}
                add(channel, t, value)
                t += timedelta(days=rng.randint(1, 5), minutes=rng.randint(0, 600))
            if places == 4:
                out.labels.add(("re_entry", c, fld))
    for i in range(erasures):
        c = f"E-{i:06d}"
        out.profiles.append({"topic": PROFILES, "key": c, "value": {
            "customer_id": c, "version": 1, "updated_at": "2026-02-01T00:00:00Z", "loyalty_tier": "none",
            "identifiers": {"email": f"{c.lower()}@example.org"}, "known_fields": ["name"]}})  # fmt: skip
        out.erasures.append({"topic": PROFILES, "key": c, "value": None})
    # Arrival: event time plus up to `disorder_days`; a share of the touchpoints twice.
    spread = disorder_days * 86_400
    arrivals = [(t + timedelta(seconds=rng.uniform(0, spread)), k, line) for k, (t, line) in enumerate(events)]
    twice = [(t + timedelta(seconds=rng.uniform(0, spread)), len(events) + k, line)
             for k, (t, line) in enumerate(events) if rng.random() < duplicate_share]  # fmt: skip
    arrivals.extend(twice)
    arrivals.sort(key=lambda a: (a[0], a[1]))
    out.touchpoints = [line for _, _, line in arrivals]
    return out
