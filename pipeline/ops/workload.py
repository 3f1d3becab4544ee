"""A generated workload: customers across the three channels, with friction injected.

Deterministic for a seed, so a demo or benchmark run can be repeated. Lines have the shape of
`../shared/scenarios/airline_story.jsonl`: {"topic", "key", "value"}. Events fall in a fixed
period (March 2026) so results do not depend on the day the demo runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.settings import FIELD_VOCABULARY

START = datetime(2026, 3, 1, tzinfo=UTC)
MATTERS = ("baggage_allowance", "refund_status", "seat_selection", "flight_change", "lost_luggage", "miles_credit")
FORMS = ("checkin/passenger-details", "booking/contact", "profile/edit", "miles/claim")
STEPS = ("manage-booking/passenger", "checkin/apis", "payment/card")
QUEUES = ("general", "loyalty", "baggage", "refunds")
TIERS = ("none", "none", "none", "silver", "silver", "gold", "platinum")
TOPIC = {
    "web": "cem.touchpoints.web",
    "call_center": "cem.touchpoints.callcenter",
    "booking": "cem.touchpoints.booking",
}


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _phone(customer: str) -> str:
    return f"+44 7700 9{customer[2:]}"


def generate(customers: int = 2000, seed: int = 7, profile_share: float = 0.9) -> Iterator[dict[str, Any]]:
    """Yield profile lines first, then touchpoints in roughly time order."""
    rng = random.Random(seed)
    # Personal data values that real producers send (phones, passport numbers), drawn from
    # their own generator so adding them leaves every other choice, and so every result, as is.
    # The pipeline must drop them or keep only fingerprints (tests/integration/test_privacy.py).
    pii = random.Random(seed * 7919 + 1)
    ids = [f"G-{i:06d}" for i in range(customers)]
    profiled = {c for c in ids if rng.random() < profile_share}
    for c in ids:
        if c not in profiled:
            continue
        known = rng.sample(FIELD_VOCABULARY, rng.randint(2, 6))
        yield {
            "topic": "cem.crm.profiles",
            "key": c,
            "value": {
                "customer_id": c,
                "version": 1,
                "updated_at": "2026-02-01T00:00:00Z",
                "loyalty_tier": rng.choice(TIERS),
                "identifiers": {"email": f"{c.lower()}@example.org", "loyalty_id": f"LY{c[2:]}", "phone": _phone(c)},
                "known_fields": known,
            },
        }
    events: list[tuple[datetime, dict[str, Any]]] = []
    n = 0

    def add(channel: str, t: datetime, value: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        value = {"event_id": f"{channel[0]}-{n}", "occurred_at": _iso(t), **value}
        events.append((t, {"topic": TOPIC[channel], "key": None, "value": value}))

    for c in ids:
        t = START + timedelta(minutes=rng.randint(0, 20 * 24 * 60))
        who: dict[str, Any] = {"customer_id": c}
        if c in profiled and rng.random() < 0.15:  # web visitor identified by email only
            who = {"identifiers": {"email": f"{c.upper()}@Example.org", "anonymous_id": f"a-{c}"}}
        for _ in range(rng.randint(1, 4)):  # ordinary browsing and booking
            t += timedelta(minutes=rng.randint(5, 600))
            add("web", t, {"type": "page_view", "session_id": f"s-{c}", "page": "/", **who})
        if rng.random() < 0.5:
            t += timedelta(hours=rng.randint(1, 48))
            add("booking", t, {"type": "booking_created", "booking_ref": f"B{n:06d}", "step": "payment/card",
                               "fields": ["name", "payment_card"], **who})  # fmt: skip
        roll = rng.random()
        if roll < 0.25:  # injected repeat contacts: 2-4 contacts about one matter within days
            matter = rng.choice(MATTERS)
            for k in range(rng.randint(2, 4)):
                t += timedelta(hours=rng.randint(2, 40))
                if k and rng.random() < 0.3:
                    add("web", t, {"type": "contact_form", "reason": matter, "session_id": f"s-{c}", **who})
                else:
                    add("call_center", t, {"type": rng.choice(("call", "chat")), "reason": matter,
                                           "agent_id": f"A-{rng.randint(1, 40)}", "queue": rng.choice(QUEUES),
                                           "duration_s": rng.randint(60, 900), "outcome": "unresolved",
                                           "customer_id": c, "identifiers": {"phone": _phone(c)}})  # fmt: skip
        elif roll < 0.35:  # a transfer: two legs of one contact, not a repeat
            matter = rng.choice(MATTERS)
            t += timedelta(hours=rng.randint(1, 30))
            first = n + 1
            add("call_center", t, {"type": "call", "reason": matter, "agent_id": "A-1", "queue": "general",
                                   "duration_s": 300, "outcome": "transferred", "customer_id": c})  # fmt: skip
            add("call_center", t + timedelta(minutes=8), {"type": "call", "reason": matter, "agent_id": "A-2",
                "queue": "loyalty", "duration_s": 200, "outcome": "resolved", "customer_id": c,
                "previous_contact_id": f"c-{first}"})  # fmt: skip
        if rng.random() < 0.3:  # injected re-entry: the same fields asked again in several places
            fields = rng.sample(("passport_number", "date_of_birth", "address", "phone"), 2)
            for _ in range(rng.randint(2, 4)):
                t += timedelta(hours=rng.randint(1, 72))
                if rng.random() < 0.5:
                    add("web", t, {"type": "form_submit", "form": rng.choice(FORMS), "session_id": f"s-{c}",
                                   "fields": fields, **who})  # fmt: skip
                else:
                    add("booking", t, {"type": "passenger_details", "step": rng.choice(STEPS), "fields": fields,
                                       "booking_ref": f"B{n:06d}", **who,
                                       # an extra the contract does not know: values a producer should not send
                                       "passenger": {"passport_number": f"X{pii.randint(10**7, 10**8 - 1)}",
                                                     "phone": _phone(c)}})  # fmt: skip
    events.sort(key=lambda e: e[0])
    for _, line in events:
        yield line
