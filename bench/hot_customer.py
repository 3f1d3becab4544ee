"""(a4) The hottest customer: what one more event costs the judge when one customer has a long
history, as when a producer defaults every customer id to "unknown". A customer's contacts on
one matter and entries of one field arrive every few minutes, in order and a share of them
late; the judge's time per event is taken over the last events at each history size. With
the per-customer caps (rules.max_events_per_customer, max_evidence, the repeat-contact
alert cooldown) it stays flat; without them it grew with the history (46 s of judge CPU for
4,000 contacts).
"""

from __future__ import annotations

import random
import time
from typing import Any

from processors.judge import CustomerState, judge
from processors.model import MICROS_PER_MINUTE, Rules, Touch

START_US = 1_772_323_200_000_000  # 2026-03-01 UTC
SIZES = (1_000, 4_000, 16_000)
MEASURED = 500  # events timed at the end of each history


def _touch(n: int, rng: random.Random) -> Touch:
    t = START_US + n * 3 * MICROS_PER_MINUTE
    if rng.random() < 0.1:  # a late one, up to a day behind
        t -= rng.randrange(24 * 60) * MICROS_PER_MINUTE
    if n % 3:
        return Touch("unknown", "call_center", f"c{n}", t, "call", matter="refund_status", place="call_center:general",
                     agent_id=f"A-{n % 40}", is_contact=True, outcome="unresolved", duration_s=60)  # fmt: skip
    return Touch("unknown", "web", f"w{n}", t, "form_submit", place=f"web:form-{n % 5}", fields=("passport_number",))


def hot_customer(rules: Rules | None = None) -> dict[str, Any]:
    rules = rules or Rules()
    rng = random.Random(3)
    state = CustomerState("unknown")
    out: dict[str, Any] = {"us_per_event": {}, "alerts": 0, "events_kept": 0}
    n = 0
    for size in SIZES:
        while n < size - MEASURED:
            state, verdict = judge(state, _touch(n, rng), rules, 0)
            out["alerts"] += len(verdict.alerts)
            n += 1
        started = time.perf_counter()
        while n < size:
            state, verdict = judge(state, _touch(n, rng), rules, 0)
            out["alerts"] += len(verdict.alerts)
            n += 1
        out["us_per_event"][size] = round((time.perf_counter() - started) / MEASURED * 1e6, 1)
    out["events_kept"] = len(state.events)
    return out


if __name__ == "__main__":
    print(hot_customer())
