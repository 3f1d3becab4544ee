"""re_entry: a customer typing or saying personal data we already have (contract v1).

An entry (field name at a place) is a re-entry when the CRM profile held at processing time
lists the field, or the customer entered it at a different place within the window. When a
field's re-entries inside the window reach the threshold an alert is raised; the next alert
for that field comes no sooner than one window later.

A fold: detect(state, touch, rules, vip_tiers) -> (state, verdict). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from processors.model import MICROS_PER_DAY, AlertDraft, ReEntryRules, Touch


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Entry:
    t: int
    field: str
    place: str
    event_id: str
    reentry: bool


@dataclass(slots=True)  # a value (why not frozen: model.py)
class State:
    entries: tuple[Entry, ...] = ()  # inside the window, oldest first; at most `max_evidence` per field
    # field -> event time of the last alert; seeded from published alerts when history is pruned
    last_alert: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Verdict:
    reentered: tuple[str, ...] = ()
    alerts: tuple[AlertDraft, ...] = ()
    capped: bool = False  # a field's entries reached `max_evidence`: the oldest was let go


NO_VERDICT = Verdict()


def detect(state: State, touch: Touch, rules: ReEntryRules, vip_tiers: frozenset[str]) -> tuple[State, Verdict]:
    if not touch.fields:
        return state, NO_VERDICT
    window = rules.window_days * MICROS_PER_DAY
    entries = [e for e in state.entries if e.t >= touch.t - window]
    # a cooldown that ended before this event can hold back no later one: dropped, so that
    # equal histories give equal states (judge stops a replay where the states meet again)
    last_alert = {f: t for f, t in state.last_alert if t > touch.t - window}
    reentered: list[str] = []
    alerts: list[AlertDraft] = []
    capped = False
    for name in dict.fromkeys(touch.fields):  # a field named twice in one event is one entry
        known = name in touch.crm_known
        of_field = [e for e in entries if e.field == name]
        elsewhere = any(e.place != touch.place for e in of_field)
        is_reentry = known or elsewhere
        if len(of_field) >= rules.max_evidence:  # the field's oldest entry makes room
            entries.remove(of_field[0])
            capped = True
        entries.append(Entry(touch.t, name, touch.place, touch.event_id, is_reentry))
        if not is_reentry:
            continue
        reentered.append(name)
        mine = [e for e in entries if e.field == name and e.reentry]
        previous = last_alert.get(name)
        if len(mine) < rules.alert_threshold or (previous is not None and touch.t < previous + window):
            continue
        last_alert[name] = touch.t
        alerts.append(
            AlertDraft(
                kind="re_entry",
                customer_id=touch.customer_id,
                subject=name,
                trigger_uid=touch.uid,
                trigger_event_id=touch.event_id,
                t=touch.t,
                severity="high" if touch.loyalty_tier in vip_tiers else "medium",
                count=len(mine),
                window_days=rules.window_days,
                channels=tuple(sorted({e.place.split(":", 1)[0] for e in mine})),
                distinct_agents=0,
                places=tuple(dict.fromkeys(e.place for e in mine)),
                known_in_crm=known,
                evidence=tuple(dict.fromkeys(e.event_id for e in mine)),
                loyalty_tier=touch.loyalty_tier,
                first_t=mine[0].t,
            )
        )
    state = State(tuple(entries), tuple(sorted(last_alert.items())))
    return state, Verdict(reentered=tuple(reentered), alerts=tuple(alerts), capped=capped)


def seeded(state: State, last_alert: dict[str, int], t: int, rules: ReEntryRules) -> State:
    """`state` with its cooldowns replaced by `last_alert` (field -> time of the last alert
    published before `t`): judge takes them from what was published, since the kept history
    may no longer hold the events that raised them. Ended cooldowns are left out, as in `detect`."""
    window = rules.window_days * MICROS_PER_DAY
    return State(state.entries, tuple(sorted((f, a) for f, a in last_alert.items() if a > t - window)))
