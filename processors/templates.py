"""The detectors of the rule templates (processors/rules.py), and the contacts fold they share.

Each detector is a fold over one customer's touchpoints in event-time order:
    detector.step(state, touch, role, root) -> (state, verdict)
where `role` and `root` come from the contacts fold (`contacts_step`): whether an assisted
contact is new or continues another one, and the first contact of its chain. Pure: no I/O
and no clock; `judge` decides which events to feed and in what order.

Every state is bounded by its rule's window (and its evidence cap), so folding from any
point earlier than one window back gives the same verdicts: `judge` relies on it to replay
only the kept history, and to stop a replay where the states meet again (hence every state
is a value with `==`, and expired entries are dropped, so equal histories give equal states).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, TypeVar

from processors.model import AlertDraft, Touch
from processors.rules import (
    ChainRule,
    KnownEntryRule,
    Predicate,
    RepeatRule,
    SequenceRule,
    compile_match,
    could_match,
    duration_us,
    key_of,
)

T = TypeVar("T")
_SEVERITY = {"medium": 1, "high": 2}
#: the contacts kept for transfer legs to name, beyond the window's bound
MAX_CONTACTS = 200
#: the events with fields the contacts fold keeps for alert contexts: as many as re-entry keeps
#: per field. Past that many in the window, a late form's replay stops before reaching every
#: later alert's context (as it did when re-entry's own state was the only one kept)
MAX_GIVEN = 50


def _from(items: tuple[T, ...], cut: int, time_of: Callable[[T], int]) -> tuple[T, ...]:
    """The items at or after `cut`. They are in event-time order (judge folds in that order),
    so only the oldest can fall out: no need to look at every one."""
    if not items or time_of(items[0]) >= cut:
        return items
    i = 1
    while i < len(items) and time_of(items[i]) < cut:
        i += 1
    return items[i:]


def _listed(match: Any) -> list[Any]:
    if not match:
        return []
    return list(match) if isinstance(match, list) else [match]


def _days(us: int) -> int:
    """A window in whole days, for the alert's `window_days` (24h is 1, 36h is 2)."""
    return max(1, -(-us // 86_400_000_000))


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Verdict:
    flagged: bool = False
    reentered: tuple[str, ...] = ()
    alerts: tuple[AlertDraft, ...] = ()
    capped: bool = False  # an evidence cap let the oldest entry go


NO_VERDICT = Verdict()
FLAGGED = Verdict(flagged=True)


# --------------------------------------------------------------------------- contacts


#: a contact chain's first contact: (event id, time, matter as a key, channel, agent id)
Root = tuple[str, int, str, str, str]
NO_ROOT: Root = ("", 0, "", "", "")  # of an event that is not a contact


@dataclass(slots=True)  # a value (why not frozen: model.py)
class ContactsState:
    # (event id, time, chain's first contact) of assisted contacts inside the window: a
    # transfer leg names the contact it continues
    contacts: tuple[tuple[str, int, Root], ...] = ()
    # end time, outcome and chain of this customer's previous assisted contact (any matter)
    last_end: int | None = None
    last_outcome: str = ""
    last_root: Root = NO_ROOT
    # (event id, time) of events with fields inside the fields' window: with `contacts`, what an
    # alert's "already told us" context is made of, so that a replay stops only where no later
    # alert's context can change, whatever rules the file holds
    given: tuple[tuple[str, int], ...] = ()


_contact_t: Callable[[tuple[str, int, Root]], int] = itemgetter(1)
_given_t: Callable[[tuple[str, int]], int] = itemgetter(1)


def contacts_step(
    state: ContactsState, touch: Touch, window_us: int, grace_us: int, fields_window_us: int
) -> tuple[ContactsState, str, Root]:
    """The contact role of the touch ("" | new | continuation) and its chain's first contact."""
    if touch.fields:
        given = (
            *_from(state.given, touch.t - fields_window_us, _given_t)[-MAX_GIVEN + 1 :],
            (touch.event_id, touch.t),
        )
        state = ContactsState(state.contacts, state.last_end, state.last_outcome, state.last_root, given)
    if not touch.is_contact:
        return state, "", NO_ROOT
    root: Root | None = None
    prev = touch.previous_contact_id
    if prev:
        oldest = touch.t - window_us
        for c, t, r in state.contacts:
            if c == prev and t >= oldest:
                root = r
                break
    if root is None and (
        state.last_outcome == "transferred" and state.last_end is not None and touch.t <= state.last_end + grace_us
    ):
        root = state.last_root
    role = "continuation" if root is not None else "new"
    if root is None:
        root = (touch.event_id, touch.t, key_of(touch, "matter"), touch.channel, touch.agent_id)
    cut = touch.t - window_us
    state = ContactsState(
        (*_from(state.contacts, cut, _contact_t)[-MAX_CONTACTS + 1 :], (touch.event_id, touch.t, root)),
        touch.t + touch.duration_s * 1_000_000,
        touch.outcome,
        root,
        state.given,
    )
    return state, role, root


# --------------------------------------------------------------------------- repeat


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Hit:
    t: int
    key: str
    channel: str
    agent_id: str
    event_id: str


@dataclass(slots=True)  # a value (why not frozen: model.py)
class RepeatState:
    # matching events inside the window, oldest first (at most `max_evidence` per key)
    recent: tuple[Hit, ...] = ()
    # (key, event time, severity) of the last alert per key, while its cooldown runs
    last_alert: tuple[tuple[str, int, str], ...] = ()


_hit_t: Callable[[Hit], int] = attrgetter("t")


class Detector:
    """What `judge` needs of every detector."""

    name: str
    version: int
    template: str
    summary: str
    first: Any
    window_us: int
    high_at: int | None
    vip_high: bool

    def __init__(self, rule: Any, vip_tiers: frozenset[str]) -> None:
        self.name, self.version, self.template, self.summary = rule.name, rule.version, rule.template, rule.summary
        self.high_at, self.vip_high, self.vip_tiers = rule.severity.high_at, rule.severity.vip == "high", vip_tiers

    def severity(self, count: int, tier: str) -> str:
        if (self.high_at is not None and count >= self.high_at) or (self.vip_high and tier in self.vip_tiers):
            return "high"
        return "medium"

    def step(self, state: Any, touch: Touch, role: str, root: Root) -> tuple[Any, Verdict]:
        raise NotImplementedError

    def could(self, channel: str, type_: str, is_contact: bool, has_fields: bool) -> bool:
        """Whether `step` can do anything with an event of this kind (False: it returns the
        state as it is, and no verdict)."""
        raise NotImplementedError

    def pack(self, state: Any) -> Any:
        """`state` as plain values (`pack_states`)."""
        raise NotImplementedError

    def unpack(self, plain: Any) -> Any:
        raise NotImplementedError


class Repeat(Detector):
    """Matching events of one key reaching `threshold` within the window: every event from the
    threshold on is flagged and raises an alert, unless the key's last alert (as severe or
    more) is within the cooldown. Contract v1's repeat contact is one: new contacts by matter."""

    def __init__(self, rule: RepeatRule, vip_tiers: frozenset[str]) -> None:
        super().__init__(rule, vip_tiers)
        self.match: Predicate | None = compile_match(rule.match or [])  # type: ignore[arg-type]
        self.key = rule.key
        self.window_us = duration_us(rule.window)
        self.window_days = _days(self.window_us)
        self.cooldown_us = duration_us(rule.cooldown)
        self.threshold, self.max_evidence = rule.threshold, rule.max_evidence
        self.first = RepeatState()
        self.conditions = rule.match

    def pack(self, state: RepeatState) -> list[Any]:
        return _pack_repeat(state)

    def unpack(self, plain: list[Any]) -> RepeatState:
        return _unpack_repeat(plain)

    def could(self, channel: str, type_: str, is_contact: bool, has_fields: bool) -> bool:
        return could_match(_listed(self.conditions), channel, type_, is_contact, has_fields)

    def step(self, state: RepeatState, touch: Touch, role: str, root: Root) -> tuple[RepeatState, Verdict]:
        if self.match is not None and not self.match(touch, role):
            return state, NO_VERDICT
        key = key_of(touch, self.key)
        if self.key is not None and not key:  # no key, no group: not judged
            return state, NO_VERDICT
        recent = _from(state.recent, touch.t - self.window_us, _hit_t)
        # a cooldown that ended can hold back no later alert: dropped, so that equal histories
        # give equal states
        last_alert = tuple(a for a in state.last_alert if a[1] > touch.t - self.cooldown_us)
        this = Hit(touch.t, key, touch.channel, touch.agent_id, touch.event_id)
        same = [c for c in recent if c.key == key]
        capped = len(same) >= self.max_evidence
        if capped:  # the key's oldest event makes room
            oldest = same.pop(0)
            recent = tuple(c for c in recent if c is not oldest)
        same.append(this)
        state = RepeatState((*recent, this), last_alert)
        if len(same) < self.threshold:
            return state, Verdict(capped=True) if capped else NO_VERDICT
        count = len(same)
        severity = self.severity(count, touch.loyalty_tier)
        previous = next((a for a in last_alert if a[0] == key), None)
        if previous is not None and _SEVERITY[severity] <= _SEVERITY[previous[2]]:
            return state, Verdict(flagged=True, capped=capped)  # flagged; the key's alert is cooling down
        if self.cooldown_us:
            state.last_alert = (*(a for a in last_alert if a[0] != key), (key, touch.t, severity))
        alert = AlertDraft(
            kind=self.name,
            customer_id=touch.customer_id,
            subject=key,
            trigger_uid=touch.uid,
            trigger_event_id=touch.event_id,
            t=touch.t,
            severity=severity,
            count=count,
            window_days=self.window_days,
            channels=tuple(sorted({c.channel for c in same})),
            distinct_agents=len({c.agent_id for c in same if c.agent_id}),
            places=(),
            known_in_crm=False,
            evidence=tuple(c.event_id for c in same),
            loyalty_tier=touch.loyalty_tier,
            first_t=same[0].t,
            key=self.key or "",
            rule_version=self.version,
            summary=self.summary,
        )
        return state, Verdict(flagged=True, alerts=(alert,), capped=capped)


# --------------------------------------------------------------------------- known_entry


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Entry:
    t: int
    field: str
    place: str
    event_id: str
    reentry: bool


@dataclass(slots=True)  # a value (why not frozen: model.py)
class EntryState:
    entries: tuple[Entry, ...] = ()  # inside the window, oldest first; at most `max_evidence` per field
    # field -> event time of the last alert; seeded from published alerts when history is pruned
    last_alert: tuple[tuple[str, int], ...] = ()


class KnownEntry(Detector):
    """An entry (field name at a place) is a re-entry when the CRM profile held at processing
    time lists the field, or the customer entered it at a different place within the window.
    When a field's re-entries inside the window reach the threshold an alert is raised; the
    next alert for that field comes no sooner than one window later (`seeded` carries that
    cooldown past the kept history)."""

    def __init__(self, rule: KnownEntryRule, vip_tiers: frozenset[str]) -> None:
        super().__init__(rule, vip_tiers)
        self.match = compile_match(rule.match or [])  # type: ignore[arg-type]
        self.only = frozenset(rule.fields) if rule.fields else None
        self.window_us = duration_us(rule.window)
        self.window_days = _days(self.window_us)
        self.threshold, self.max_evidence = rule.threshold, rule.max_evidence
        self.first = EntryState()
        self.conditions = rule.match

    def pack(self, state: EntryState) -> list[Any]:
        return _pack_entries(state)

    def unpack(self, plain: list[Any]) -> EntryState:
        return _unpack_entries(plain)

    def could(self, channel: str, type_: str, is_contact: bool, has_fields: bool) -> bool:
        return has_fields and could_match(_listed(self.conditions), channel, type_, is_contact, has_fields)

    def step(self, state: EntryState, touch: Touch, role: str, root: Root) -> tuple[EntryState, Verdict]:
        if not touch.fields or (self.match is not None and not self.match(touch, role)):
            return state, NO_VERDICT
        window = self.window_us
        entries = [e for e in state.entries if e.t >= touch.t - window]
        last_alert = {f: t for f, t in state.last_alert if t > touch.t - window}
        reentered: list[str] = []
        alerts: list[AlertDraft] = []
        capped = False
        only = self.only
        for name in dict.fromkeys(touch.fields):  # a field named twice in one event is one entry
            if only is not None and name not in only:
                continue
            known = name in touch.crm_known
            of_field = [e for e in entries if e.field == name]
            elsewhere = any(e.place != touch.place for e in of_field)
            is_reentry = known or elsewhere
            if len(of_field) >= self.max_evidence:  # the field's oldest entry makes room
                entries.remove(of_field[0])
                capped = True
            entries.append(Entry(touch.t, name, touch.place, touch.event_id, is_reentry))
            if not is_reentry:
                continue
            reentered.append(name)
            mine = [e for e in entries if e.field == name and e.reentry]
            previous = last_alert.get(name)
            if len(mine) < self.threshold or (previous is not None and touch.t < previous + window):
                continue
            last_alert[name] = touch.t
            alerts.append(
                AlertDraft(
                    kind=self.name,
                    customer_id=touch.customer_id,
                    subject=name,
                    trigger_uid=touch.uid,
                    trigger_event_id=touch.event_id,
                    t=touch.t,
                    severity=self.severity(len(mine), touch.loyalty_tier),
                    count=len(mine),
                    window_days=self.window_days,
                    channels=tuple(sorted({e.place.split(":", 1)[0] for e in mine})),
                    distinct_agents=0,
                    places=tuple(dict.fromkeys(e.place for e in mine)),
                    known_in_crm=known,
                    evidence=tuple(dict.fromkeys(e.event_id for e in mine)),
                    loyalty_tier=touch.loyalty_tier,
                    first_t=mine[0].t,
                    key="field",
                    rule_version=self.version,
                    summary=self.summary,
                )
            )
        state = EntryState(tuple(entries), tuple(sorted(last_alert.items())))
        if not reentered and not alerts:
            return state, Verdict(capped=True) if capped else NO_VERDICT
        return state, Verdict(flagged=bool(reentered), reentered=tuple(reentered), alerts=tuple(alerts), capped=capped)

    def seeded(self, state: EntryState, last_alert: dict[str, int], t: int) -> EntryState:
        """`state` with its cooldowns replaced by `last_alert` (field -> time of the last alert
        published before `t`): the kept history may no longer hold the events that raised them.
        Ended cooldowns are left out, as in `step`."""
        window = self.window_us
        return EntryState(state.entries, tuple(sorted((f, a) for f, a in last_alert.items() if a > t - window)))


# --------------------------------------------------------------------------- sequence


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Step:
    t: int
    key: str
    channel: str
    agent_id: str
    event_id: str


@dataclass(slots=True)  # a value (why not frozen: model.py)
class SequenceState:
    # events that matched `first` inside the window, not yet followed (nor cut off by `without`)
    pending: tuple[Step, ...] = ()
    last_alert: tuple[tuple[str, int, str], ...] = ()  # (key, time, severity) while the cooldown runs


_step_t: Callable[[Step], int] = attrgetter("t")


class Sequence(Detector):
    """An event matching `then` that follows, within the window, events matching `first` (with
    no event matching `without` in between) is flagged and raises an alert; it uses those
    first events up, so the next `then` needs a new `first`. With a key, first and then must
    share it (or, with `key_optional`, share it when both have one)."""

    def __init__(self, rule: SequenceRule, vip_tiers: frozenset[str]) -> None:
        super().__init__(rule, vip_tiers)
        self.first_m = compile_match(rule.first)  # type: ignore[arg-type]
        self.then_m = compile_match(rule.then)  # type: ignore[arg-type]
        self.without_m = compile_match(rule.without or [])  # type: ignore[arg-type]
        self.key, self.key_optional = rule.key, rule.key_optional
        self.window_us = duration_us(rule.window)
        self.window_days = _days(self.window_us)
        self.cooldown_us = duration_us(rule.cooldown)
        self.max_evidence = rule.max_evidence
        self.first = SequenceState()
        self.all_conditions = [_listed(rule.first), _listed(rule.then), _listed(rule.without)]

    def pack(self, state: SequenceState) -> list[Any]:
        return _pack_sequence(state)

    def unpack(self, plain: list[Any]) -> SequenceState:
        return _unpack_sequence(plain)

    def could(self, channel: str, type_: str, is_contact: bool, has_fields: bool) -> bool:
        return any(c and could_match(c, channel, type_, is_contact, has_fields) for c in self.all_conditions)

    def _same(self, a: str, b: str) -> bool:
        if self.key is None:
            return True
        if self.key_optional:
            return not a or not b or a == b
        return a != "" and a == b

    def step(self, state: SequenceState, touch: Touch, role: str, root: Root) -> tuple[SequenceState, Verdict]:
        is_first = self.first_m is not None and self.first_m(touch, role)
        if not is_first and not state.pending:
            return state, NO_VERDICT  # nothing pending to follow or cut off (the common case)
        is_then = self.then_m is not None and self.then_m(touch, role)
        is_without = self.without_m is not None and self.without_m(touch, role)
        if not (is_first or is_then or is_without):
            return state, NO_VERDICT
        key = key_of(touch, self.key)
        pending = _from(state.pending, touch.t - self.window_us, _step_t)
        last_alert = tuple(a for a in state.last_alert if a[1] > touch.t - self.cooldown_us)
        verdict = NO_VERDICT
        if is_then:
            used = [p for p in pending if self._same(p.key, key)]
            if used:
                pending = tuple(p for p in pending if not self._same(p.key, key))
                subject = key or next((p.key for p in reversed(used) if p.key), "")
                this = Step(touch.t, key, touch.channel, touch.agent_id, touch.event_id)
                legs = [*used, this]
                severity = self.severity(len(legs), touch.loyalty_tier)
                previous = next((a for a in last_alert if a[0] == subject), None)
                if previous is not None and _SEVERITY[severity] <= _SEVERITY[previous[2]]:
                    verdict = FLAGGED
                else:
                    if self.cooldown_us:
                        last_alert = (*(a for a in last_alert if a[0] != subject), (subject, touch.t, severity))
                    alert = AlertDraft(
                        kind=self.name, customer_id=touch.customer_id, subject=subject, trigger_uid=touch.uid,
                        trigger_event_id=touch.event_id, t=touch.t, severity=severity, count=len(legs),
                        window_days=self.window_days, channels=tuple(sorted({s.channel for s in legs})),
                        distinct_agents=len({s.agent_id for s in legs if s.agent_id}), places=(),
                        known_in_crm=False, evidence=tuple(s.event_id for s in legs),
                        loyalty_tier=touch.loyalty_tier, first_t=legs[0].t, key=self.key or "",
                        rule_version=self.version, summary=self.summary,
                    )  # fmt: skip
                    verdict = Verdict(flagged=True, alerts=(alert,))
        if is_without:
            pending = tuple(p for p in pending if not self._same(p.key, key))
        capped = False
        if is_first:
            if len(pending) >= self.max_evidence:
                pending, capped = pending[1:], True
            pending = (*pending, Step(touch.t, key, touch.channel, touch.agent_id, touch.event_id))
        if capped:
            verdict = Verdict(verdict.flagged, verdict.reentered, verdict.alerts, True)
        return SequenceState(pending, last_alert), verdict


# --------------------------------------------------------------------------- chain


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Link:
    root: str
    matter: str
    last_t: int
    first_t: int
    count: int  # legs so far (`legs` holds at most `max_evidence` of them)
    legs: tuple[tuple[str, str, str], ...]  # (event id, channel, agent id): the first leg and the newest
    alerted: bool = False


@dataclass(slots=True)  # a value (why not frozen: model.py)
class ChainState:
    chains: tuple[Link, ...] = ()  # chains whose last leg is inside the contacts' window


_link_t: Callable[[Link], int] = attrgetter("last_t")


class Chain(Detector):
    """A contact passed on: the legs of one contact's chain (the first contact and the legs
    that continue it) reaching `legs`, or `agents` distinct agents. Every leg from there on is
    flagged; the leg that reaches it raises the alert."""

    def __init__(self, rule: ChainRule, vip_tiers: frozenset[str], contacts_window_us: int) -> None:
        super().__init__(rule, vip_tiers)
        self.legs, self.agents, self.max_evidence = rule.legs, rule.agents, rule.max_evidence
        self.window_us = contacts_window_us
        self.window_days = _days(self.window_us)
        self.first = ChainState()

    def pack(self, state: ChainState) -> list[Any]:
        return _pack_chains(state)

    def unpack(self, plain: list[Any]) -> ChainState:
        return _unpack_chains(plain)

    def could(self, channel: str, type_: str, is_contact: bool, has_fields: bool) -> bool:
        return is_contact

    def _reached(self, legs: tuple[tuple[str, str, str], ...], count: int) -> bool:
        if self.legs is not None and count >= self.legs:
            return True
        return self.agents is not None and len({a for _, _, a in legs if a}) >= self.agents

    def step(self, state: ChainState, touch: Touch, role: str, root: Root) -> tuple[ChainState, Verdict]:
        # A chain is kept from its first continuation on: a contact nobody continued (most of
        # them) costs nothing here, and the contacts fold knows its first contact (`root`).
        if role != "continuation":
            return state, NO_VERDICT
        chains = _from(state.chains, touch.t - self.window_us, _link_t)
        leg = (touch.event_id, touch.channel, touch.agent_id)
        first_id = root[0]
        link = next((c for c in chains if c.root == first_id), None)
        if link is None:
            link = Link(first_id, root[2], root[1], root[1], 1, ((first_id, root[3], root[4]),))
        # a chain's legs count all of them; its evidence lists the first and the newest
        count = link.count + 1
        legs = (*link.legs, leg) if len(link.legs) < self.max_evidence else (link.legs[0], *link.legs[2:], leg)
        reached = self._reached(legs, count)
        updated = Link(link.root, link.matter, touch.t, link.first_t, count, legs, link.alerted or reached)
        rest = tuple(c for c in chains if c is not link)[-MAX_CONTACTS + 1 :]
        state = ChainState((*rest, updated))
        if not reached:
            return state, NO_VERDICT
        if link.alerted:
            return state, FLAGGED
        agents = len({a for _, _, a in legs if a})
        alert = AlertDraft(
            kind=self.name, customer_id=touch.customer_id, subject=link.matter, trigger_uid=touch.uid,
            trigger_event_id=touch.event_id, t=touch.t, severity=self.severity(count, touch.loyalty_tier),
            count=count, window_days=self.window_days, channels=tuple(sorted({c for _, c, _ in legs})),
            distinct_agents=agents, places=(), known_in_crm=False, evidence=tuple(e for e, _, _ in legs),
            loyalty_tier=touch.loyalty_tier, first_t=link.first_t, key="matter", rule_version=self.version,
            summary=self.summary,
        )  # fmt: skip
        return state, Verdict(flagged=True, alerts=(alert,))


# --------------------------------------------------------------------------- stored form
# The fold states after a customer's last kept event are stored with the customer, so that an
# event that comes in order is judged without decoding their history (processors/judge.py,
# `Packed`). Plain values for orjson (which writes tuples as arrays); read back, every tuple
# is a tuple again, since the detectors build on them.


def pack_states(states: tuple[Any, ...], detectors: tuple[Detector, ...]) -> list[Any]:
    """The contacts fold's state, then each detector's (0: a detector's first state)."""
    c = states[0]
    out: list[Any] = [[c.contacts, c.last_end, c.last_outcome, c.last_root, c.given]]
    for d, s in zip(detectors, states[1:], strict=True):
        out.append(0 if s is d.first else d.pack(s))
    return out


def unpack_states(plain: list[Any], detectors: tuple[Detector, ...]) -> tuple[Any, ...]:
    contacts, last_end, last_outcome, last_root, given = plain[0]
    c = ContactsState(
        tuple([(e, t, tuple(r)) for e, t, r in contacts]) if contacts else (),
        last_end, last_outcome, tuple(last_root), tuple(map(tuple, given)) if given else (),
    )  # fmt: skip
    return (c, *[d.first if p == 0 else d.unpack(p) for d, p in zip(detectors, plain[1:], strict=True)])


def _pack_hits(hits: tuple[Hit, ...] | tuple[Step, ...]) -> list[tuple[int, str, str, str, str]]:
    return [(h.t, h.key, h.channel, h.agent_id, h.event_id) for h in hits]


def _pack_repeat(state: RepeatState) -> list[Any]:
    return [_pack_hits(state.recent), state.last_alert]


def _unpack_repeat(p: list[Any]) -> RepeatState:
    return RepeatState(tuple([Hit(*h) for h in p[0]]), tuple(map(tuple, p[1])))


def _pack_entries(state: EntryState) -> list[Any]:
    return [[(e.t, e.field, e.place, e.event_id, e.reentry) for e in state.entries], state.last_alert]


def _unpack_entries(p: list[Any]) -> EntryState:
    return EntryState(tuple([Entry(*e) for e in p[0]]), tuple(map(tuple, p[1])))


def _pack_sequence(state: SequenceState) -> list[Any]:
    return [_pack_hits(state.pending), state.last_alert]


def _unpack_sequence(p: list[Any]) -> SequenceState:
    return SequenceState(tuple([Step(*h) for h in p[0]]), tuple(map(tuple, p[1])))


def _pack_chains(state: ChainState) -> list[Any]:
    return [(c.root, c.matter, c.last_t, c.first_t, c.count, c.legs, c.alerted) for c in state.chains]


def _unpack_chains(p: list[Any]) -> ChainState:
    return ChainState(
        tuple([Link(r, m, last, first, n, tuple(map(tuple, legs)), alerted)
               for r, m, last, first, n, legs, alerted in p])
    )  # fmt: skip
