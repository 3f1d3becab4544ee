"""repeat_contact: the same customer contacting us again about the same matter (contract v1).

A fold over one customer's touchpoints in event-time order:
    detect(state, touch, rules, vip_tiers) -> (state, verdict)
Pure: no I/O and no clock; `judge` decides which events to feed and in what order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import TypeVar

from processors.model import MICROS_PER_DAY, MICROS_PER_MINUTE, OTHER_MATTER, AlertDraft, RepeatContactRules, Touch

T = TypeVar("T")


@dataclass(slots=True)  # a value (why not frozen: model.py)
class NewContact:
    t: int
    matter: str
    channel: str
    agent_id: str
    event_id: str


@dataclass(slots=True)  # a value (why not frozen: model.py)
class State:
    # (event id, time) of assisted contacts inside the window: a transfer leg names the contact it
    # continues. Window-bounded like everything here, so folding from any point earlier than
    # one window back gives the same verdicts (judge relies on it to skip replays).
    contacts: tuple[tuple[str, int], ...] = ()
    # end time and outcome of this customer's previous assisted contact (any matter)
    last_end: int | None = None
    last_outcome: str = ""
    # new contacts inside the window, oldest first (at most `max_evidence` per matter)
    recent: tuple[NewContact, ...] = ()
    # (matter, event time, severity) of the last alert per matter, while its cooldown runs
    last_alert: tuple[tuple[str, int, str], ...] = ()


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Verdict:
    repeat: bool = False
    continues: bool = False
    alert: AlertDraft | None = None
    capped: bool = False  # the matter's contacts reached `max_evidence`: the oldest was let go


#: the contacts kept for transfer legs to name, beyond the window's bound
MAX_CONTACTS = 200
_SEVERITY = {"medium": 1, "high": 2}


NO_VERDICT = Verdict()


def _from(items: tuple[T, ...], cut: int, time_of: Callable[[T], int]) -> tuple[T, ...]:
    """The items at or after `cut`. They are in event-time order (judge folds in that order),
    so only the oldest can fall out: no need to look at every one."""
    if not items or time_of(items[0]) >= cut:
        return items
    i = 1
    while i < len(items) and time_of(items[i]) < cut:
        i += 1
    return items[i:]


_new_contact_t: Callable[[NewContact], int] = attrgetter("t")
_contact_t: Callable[[tuple[str, int]], int] = itemgetter(1)  # (event id, time)


def continues_previous(state: State, touch: Touch, rules: RepeatContactRules) -> bool:
    """A transfer or consult leg is part of the contact it continues, not a new contact."""
    window = rules.window_days * MICROS_PER_DAY
    if touch.previous_contact_id and any(
        c == touch.previous_contact_id and t >= touch.t - window for c, t in state.contacts
    ):
        return True
    grace = rules.transfer_grace_minutes * MICROS_PER_MINUTE
    return state.last_outcome == "transferred" and state.last_end is not None and touch.t <= state.last_end + grace


def detect(state: State, touch: Touch, rules: RepeatContactRules, vip_tiers: frozenset[str]) -> tuple[State, Verdict]:
    if not touch.is_contact:
        return state, NO_VERDICT
    continues = continues_previous(state, touch, rules)
    cut = touch.t - rules.window_days * MICROS_PER_DAY
    recent = _from(state.recent, cut, _new_contact_t)
    # a cooldown that ended can hold back no later alert: dropped, so that equal histories
    # give equal states (judge stops a replay where the states meet again)
    cooldown = rules.alert_cooldown_minutes * MICROS_PER_MINUTE
    last_alert = tuple(a for a in state.last_alert if a[1] > touch.t - cooldown)
    state = State(
        contacts=(*_from(state.contacts, cut, _contact_t)[-MAX_CONTACTS + 1 :], (touch.event_id, touch.t)),
        last_end=touch.t + touch.duration_s * 1_000_000,
        last_outcome=touch.outcome,
        recent=recent,
        last_alert=last_alert,
    )
    if continues:
        return state, Verdict(continues=True)
    if not touch.matter or touch.matter == OTHER_MATTER:  # contacts without a named matter are not judged
        return state, NO_VERDICT
    this = NewContact(touch.t, touch.matter, touch.channel, touch.agent_id, touch.event_id)
    same = [c for c in recent if c.matter == touch.matter]
    capped = len(same) >= rules.max_evidence
    if capped:  # the matter's oldest contact makes room
        oldest = same.pop(0)
        recent = tuple(c for c in recent if c is not oldest)
    same.append(this)
    state = State(state.contacts, state.last_end, state.last_outcome, (*recent, this), last_alert)
    if len(same) < 2:
        return state, NO_VERDICT
    count = len(same)
    severity = "high" if count >= 3 or touch.loyalty_tier in vip_tiers else "medium"
    previous = next((a for a in last_alert if a[0] == touch.matter), None)
    if previous is not None and _SEVERITY[severity] <= _SEVERITY[previous[2]]:
        return state, Verdict(repeat=True, capped=capped)  # flagged; the matter's alert is cooling down
    state.last_alert = (*(a for a in last_alert if a[0] != touch.matter), (touch.matter, touch.t, severity))
    alert = AlertDraft(
        kind="repeat_contact",
        customer_id=touch.customer_id,
        subject=touch.matter,
        trigger_uid=touch.uid,
        trigger_event_id=touch.event_id,
        t=touch.t,
        severity=severity,
        count=count,
        window_days=rules.window_days,
        channels=tuple(sorted({c.channel for c in same})),
        distinct_agents=len({c.agent_id for c in same if c.agent_id}),
        places=(),
        known_in_crm=False,
        evidence=tuple(c.event_id for c in same),
        loyalty_tier=touch.loyalty_tier,
        first_t=same[0].t,
    )
    return state, Verdict(repeat=True, alert=alert, capped=capped)
