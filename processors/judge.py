"""Per-customer state and the judgement of one touchpoint.

Order independence by recomputation (see docs/architecture.md): a customer's events of the
last `window + allowed lateness` are kept; a new event is inserted at its event-time
position and the detectors are replayed over the kept events. A new event can only change
the verdicts of events at or after its own position (every rule looks back, never forward),
so only those are compared with what was published before:
- timeline rows whose flags changed are emitted again with a higher revision;
- alerts that appear are emitted `open`; alerts that disappear are emitted `retracted`.

`judge(state, touch, rules, now_us) -> (state, Judgement)` is pure: the caller passes the clock.
"""

from __future__ import annotations

import functools
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.model import AlertDraft, Rules, Touch
from processors.summary import summarize
from processors.templates import NO_ROOT, NO_VERDICT, contacts_step, pack_states, unpack_states
from processors.told_us import already_told_us

ALERT_NAMESPACE = uuid.UUID("6f1d8c52-2f43-4f0e-9a57-8e3cf1a0c2b1")
# between two events of the stored form's JSON array: never inside one (orjson escapes a
# newline in a string), so the oldest can be cut off by bytes (`CustomerState.cut_packed`)
EVENT_SEP = b",\n"


@functools.lru_cache(maxsize=65_536)  # replays draft the same alerts again; uuid5 is a SHA-1
def alert_id(kind: str, customer_id: str, subject: str, trigger_uid: str) -> str:
    """Deterministic: the same input gives the same id, across replays and workers."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{customer_id}|{subject}|{trigger_uid}"))


@dataclass(slots=True)
class Profile:
    version: int
    loyalty_tier: str
    known_fields: tuple[str, ...]
    fingerprints: tuple[str, ...] = ()


@dataclass(slots=True)
class Stored:
    touch: Touch
    friction: tuple[str, ...] = ()
    reentered: tuple[str, ...] = ()
    revision: int = 0
    contact: str = ""  # "" (not an assisted contact) | new | continuation
    chain: str = ""  # a contact's chain: the event id of its first contact ("" for other events)
    # The detectors' states after folding the kept events up to this one: the next event,
    # in order or not, continues from here instead of replaying the kept history, and a
    # replay stops where the states it computes meet these again. Valid however much
    # history was pruned, because the detectors only look one window back (at most 30
    # days, and the kept history covers window + lateness). Only the last event's are
    # stored (`CustomerState.stored`); a replay after decoding rebuilds the others. The
    # contacts fold's state first, then one per detector, in the order of `Rules.detectors`.
    after: tuple[Any, ...] | PlainStates | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, str, str]:
        """The touch's order key (made when asked: kept, it would cost a tuple per event)."""
        t = self.touch
        return (t.t, t.channel, t.event_id)


@dataclass(slots=True)
class Published:
    """An alert as last published; `body` holds the alert fields (see `alert_body`)."""

    alert_id: str
    order_key: tuple[int, str, str]
    status: str
    revision: int
    detected_at: int
    body: dict[str, Any]


@dataclass(slots=True)
class PlainStates:
    """Fold states as stored (templates.pack_states), not yet unpacked: an event that no rule
    looks at passes them on as they are, and they are stored again as they are."""

    plain: list[Any]


@dataclass(slots=True)
class Packed:
    """The kept events of a state read back from its stored form (`CustomerState.stored`), or
    of a state sealed since it was read (`stored(repack=True)`), still encoded. An event that
    comes in order after them (the common case) is judged from what is known of them here,
    without decoding them; they are decoded
    (`CustomerState.unpack`) when an event goes among them, an alert's context looks at them,
    or pruning cuts them. Decoding a long history for every event was most of the cost of
    keeping states on disk (docs/architecture.md)."""

    raw: bytes  # their JSON array, each event in `to_snapshot`'s form, one per line (separated by ",\n")
    count: int
    first: tuple[int, str, str]  # order keys of the first and of the last
    last: tuple[int, str, str]
    ids: list[str]  # their event ids (the duplicate check)
    states: Any  # the fold states after the last (templates.pack_states); None: not known
    tag: str  # the rules they were folded by (`Rules.tag`)
    base: Any  # the fold states the first was folded from (plain); 0: the first states; None: not known
    anons: dict[str, int]  # the anonymous-id fingerprints they carry, and on how many of them


class CustomerState:
    """A customer's profile, kept events (in event-time order) and published alerts."""

    __slots__ = (
        "customer_id", "profile", "_events", "max_t", "alerts", "seen", "ids_shared", "packed", "rules", "base",
    )  # fmt: skip

    def __init__(
        self, customer_id: str, profile: Profile | None = None, events: list[Stored] | None = None,
        max_t: int | None = None, alerts: dict[str, Published] | None = None,
    ) -> None:  # fmt: skip
        self.customer_id = customer_id
        self.profile = profile
        self._events: list[Stored] = [] if events is None else events  # after `packed`'s
        self.max_t = max_t
        self.alerts: dict[str, Published] = {} if alerts is None else alerts
        # event_id of the kept events, for the duplicate check; rebuilt when missing. The ids
        # alone, not (channel, event_id) pairs: the strings are the touches' own, so the set
        # costs no object per event (a pair cost 56 bytes per kept event: 8 % of the state).
        self.seen: set[str] | None = None
        # two kept events of different channels share an event_id: `seen` cannot tell which one
        # pruning removes, so pruning drops it to be rebuilt (rare: ids are unique per channel)
        self.ids_shared = False
        self.packed: Packed | None = None  # the oldest kept events, still encoded
        self.rules: Rules | None = None  # what made the events' fold states (`Stored.after`)
        # The fold states the first kept event was folded from (None: the first states). A
        # state read back replays its events from here, not from nothing: what pruned
        # events left in the detectors' states (a chain's first contact) is not lost.
        self.base: Tail | PlainStates | None = None

    @property
    def events(self) -> list[Stored]:
        """Every kept event, decoded."""
        if self.packed is not None:
            self.unpack()
        return self._events

    @events.setter
    def events(self, events: list[Stored]) -> None:
        self._events, self.packed, self.seen = events, None, None

    def has_events(self) -> bool:
        return self.packed is not None or bool(self._events)

    def first_key(self) -> tuple[int, str, str] | None:
        if self.packed is not None:
            return self.packed.first
        return self._events[0].key if self._events else None

    def unpack(self, rules: Rules | None = None) -> int:
        """Decode the packed events, in front of the others; returns how many. With the rules
        they were folded by, the last of them continues from its stored fold states."""
        packed = self.packed
        if packed is None:
            return 0
        self.packed = None
        older = [_stored(e) for e in orjson.loads(packed.raw)]
        self._events = older + self._events
        if rules is not None and packed.states is not None and packed.tag == rules.tag:
            self.base = None if not packed.base else PlainStates(packed.base)
            # each one's fold states, as the judge had them: a late event among them
            # continues from its predecessor's, and pruning keeps the base
            _replay(older, len(older), self, rules, None)
            older[-1].after = PlainStates(packed.states)
        return len(older)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        mine = (self.customer_id, self.profile, self.events, self.max_t, self.alerts)
        return mine == (other.customer_id, other.profile, other.events, other.max_t, other.alerts)

    __hash__ = None  # type: ignore[assignment]  # changes in place

    def __repr__(self) -> str:
        return (f"CustomerState({self.customer_id!r}, {self.profile!r}, events={self.events!r}, "
                f"max_t={self.max_t!r}, alerts={self.alerts!r})")  # fmt: skip

    # --- serialization ---
    def to_snapshot(self) -> list[Any]:
        """The state in the compact form snapshots keep (pipeline/engine/snapshots.py), for orjson:
        [customer_id, profile, max_t, events, alerts], each event as
        [touch row, friction, re-entered fields, revision, contact role, chain] (states written
        before chains were kept have no chain: it is then "", and the next replay sets it)."""
        return [self.customer_id, self.profile, self.max_t, [_row(s) for s in self.events], list(self.alerts.values())]

    def stored(self, repack: bool = False) -> tuple[list[Any], bytes]:
        """The stored form (pipeline/engine/state_store.py), in two parts: [customer_id, profile,
        max_t, alerts, [count, first key, last key, event ids, fold states after the last,
        rules tag, fold states before the first]], and the events' JSON array in
        `to_snapshot`'s form. Events still packed are not decoded: their bytes are kept, and
        the new ones' appended. With `repack`, a state read back then holds its events as that
        form, the new ones too: kept in memory across seals, it would otherwise encode every
        event decoded since it was read, again at each seal. A state whose events are all
        decoded keeps them (a late event went among them: folding them all again after each
        seal took a hot customer with late events twice the time per event)."""
        packed, events, rules = self.packed, self._events, self.rules
        body = EVENT_SEP.join([orjson.dumps(_row(s)) for s in events])
        ids = [s.touch.event_id for s in events]
        anons: dict[str, int] = {} if packed is None else dict(packed.anons)
        for s in events:
            if s.touch.anonymous:
                anons[s.touch.anonymous] = anons.get(s.touch.anonymous, 0) + 1
        count, states, tag, base = len(events), None, "", None
        first = last = None
        if events and rules is not None:
            first, last = events[0].key, events[-1].key
            states, tag = _plain(events[-1].after, rules), rules.tag
            base = _plain(self.base, rules) if self.base is not None else 0
        elif events:
            first, last = events[0].key, events[-1].key
        if packed is None:
            rows = b"[" + body + b"]"
        else:
            first, count, base = packed.first, packed.count + count, packed.base
            if events:
                rows, ids = packed.raw[:-1] + EVENT_SEP + body + b"]", packed.ids + ids
            else:
                rows, ids, last, states, tag = packed.raw, packed.ids, packed.last, packed.states, packed.tag
        if states is None:
            base = None
        known = [count, first, last, ids, states, tag, base, anons]
        if repack and packed is not None and events:
            assert first is not None and last is not None
            self.packed = Packed(rows, count, first, last, ids, states, tag, base, anons)
            self._events, self.base = [], None
        return [self.customer_id, self.profile, self.max_t, list(self.alerts.values()), known], rows

    @classmethod
    def from_stored(cls, head: list[Any], rows: bytes) -> CustomerState:
        customer_id, profile, max_t, alerts, (count, first, last, ids, states, tag, base, anons) = head
        state = cls(customer_id, _profile(profile), [], max_t, {a["alert_id"]: _published(a) for a in alerts})
        if count:
            first, last = (first[0], first[1], first[2]), (last[0], last[1], last[2])
            state.packed = Packed(rows, count, first, last, ids, states, tag, base, anons)
        return state

    def cut_packed(self, keep_from: int, over: int, rules: Rules) -> tuple[list[str], set[str]] | None:
        """Prune the oldest packed events, those before `keep_from` and at least `over` of
        them, decoding only those (folded from the base, which becomes the states after the
        last of them) and the first one kept; returns the ids of those let go and the
        anonymous ids no packed event carries any more. None: the last packed event would go
        too, or their states are not known (the caller decodes them all)."""
        packed = self.packed
        assert packed is not None
        if packed.base is None or packed.states is None or packed.tag != rules.tag:
            return None
        raw, pos = packed.raw, 1
        cut: list[Stored] = []
        while True:
            end = raw.find(EVENT_SEP, pos)
            if end < 0:
                return None
            e = orjson.loads(raw[pos:end])
            row = e[0]
            if row[_T] >= keep_from and len(cut) >= over:
                break  # the first one kept
            cut.append(_stored(e))
            pos = end + 2
        self.base = None if not packed.base else PlainStates(packed.base)
        _replay(cut, len(cut), self, rules, None)
        self.base = cut[-1].after
        packed.base = _plain(self.base, rules)
        packed.raw, packed.count, packed.ids = b"[" + raw[pos:], packed.count - len(cut), packed.ids[len(cut) :]
        packed.first = (row[_T], row[_CHANNEL], row[_ID])
        counts, unlinked = packed.anons, set()
        for s in cut:
            fp = s.touch.anonymous
            if fp:
                counts[fp] -= 1
                if not counts[fp]:
                    del counts[fp]
                    unlinked.add(fp)
        return [s.touch.event_id for s in cut], unlinked

    @classmethod
    def from_snapshot(cls, data: list[Any]) -> CustomerState:
        """A state from `to_snapshot`'s form, or from the stored form's whole JSON (six values)."""
        if len(data) == 6:
            customer_id, profile, max_t, alerts, _, events = data
        else:
            customer_id, profile, max_t, events, alerts = data
        return cls(
            customer_id, _profile(profile), [_stored(e) for e in events], max_t,
            {a["alert_id"]: _published(a) for a in alerts},
        )  # fmt: skip


_FIELDS = list(Touch.__dataclass_fields__)
_CHANNEL, _ID, _T = (_FIELDS.index(f) for f in ("channel", "event_id", "t"))


def _plain(states: Any, rules: Rules) -> Any:
    """Fold states in their stored form (None: not known)."""
    if type(states) is PlainStates:
        return states.plain
    return None if states is None else pack_states(states, rules.detectors)


def _row(s: Stored) -> tuple[Any, ...]:
    return (s.touch.to_row(), s.friction, s.reentered, s.revision, s.contact, s.chain)


def _stored(e: list[Any]) -> Stored:
    return Stored(Touch.from_row(e[0]), tuple(e[1]), tuple(e[2]), e[3], e[4], e[5] if len(e) > 5 else "")


def _profile(p: dict[str, Any] | None) -> Profile | None:
    if p is None:
        return None
    return Profile(p["version"], p["loyalty_tier"], tuple(p["known_fields"]), tuple(p["fingerprints"]))


def _published(a: dict[str, Any]) -> Published:
    k = a["order_key"]
    return Published(a["alert_id"], (k[0], k[1], k[2]), a["status"], a["revision"], a["detected_at"], a["body"])


@dataclass(slots=True)  # a value (why not frozen: model.py)
class RowVersion:
    """A timeline row to write: the touchpoint, its flags, and the row's revision."""

    touch: Touch
    friction: tuple[str, ...]
    reentered: tuple[str, ...]
    revision: int
    contact: str = ""
    chain: str = ""  # the event id of the first contact of a contact's chain


@dataclass(slots=True)  # a value (why not frozen: model.py)
class AlertVersion:
    alert_id: str
    status: str
    revision: int
    detected_at: int
    body: dict[str, Any]


@dataclass(slots=True)  # a value (why not frozen: model.py)
class Judgement:
    rows: tuple[RowVersion, ...] = ()
    alerts: tuple[AlertVersion, ...] = ()
    duplicate: bool = False
    late: bool = False
    capped: bool = False  # a per-customer cap let something go (Rules: max_events_per_customer, max_evidence)
    # anonymous-id fingerprints that no kept event of the customer carries any more: their
    # identity links can go (the next login makes them again)
    unlinked: tuple[str, ...] = ()


def apply_profile(state: CustomerState, profile: Profile) -> tuple[CustomerState, bool]:
    """Hold a newer profile version; an older or equal version is ignored (returns False)."""
    if state.profile is not None and profile.version <= state.profile.version:
        return state, False
    state.profile = profile
    return state, True


def attach_profile(state: CustomerState, touch: Touch) -> Touch:
    """Stamp the touch with the CRM facts held now, which the detectors use forever after."""
    p = state.profile
    if p is None:
        return touch.with_profile((), "none", 0)
    known = tuple(f for f in touch.fields if f in p.known_fields) if touch.fields else ()
    return touch.with_profile(known, p.loyalty_tier, p.version)


def alert_body(draft: AlertDraft, first_t: int) -> dict[str, Any]:
    return {
        "kind": draft.kind,
        "customer_id": draft.customer_id,
        "severity": draft.severity,
        "t": draft.t,
        "matter": (draft.subject or None) if draft.key == "matter" else None,
        "field": draft.subject if draft.key == "field" else None,
        "count": draft.count,
        "window_days": draft.window_days,
        "channels": list(draft.channels),
        "distinct_agents": draft.distinct_agents,
        "places": list(draft.places),
        "known_in_crm": draft.known_in_crm,
        "evidence": list(draft.evidence),
        "loyalty_tier": draft.loyalty_tier,
        "trigger": draft.trigger_event_id,
        "trigger_channel": draft.trigger_uid.split("/", 1)[0],
        "summary": summarize(draft, first_t),
        "rule_version": draft.rule_version,
    }


Flags = tuple[tuple[str, ...], tuple[str, ...], str, str]  # friction, re-entered fields, contact role, chain


Tail = tuple[Any, ...]  # the contacts fold's state, then each detector's
#: the events before an alert's trigger that its "already told us" context looks at: the
#: context lists the last few contacts and fields given, and a long history must not make
#: every alert cost more
CONTEXT_EVENTS = 200
DUPLICATE = Judgement(duplicate=True)
NO_FLAGS: Flags = ((), (), "", "")
NO_ALERTS: list[AlertDraft] = []  # never appended to
NO_DRAFTS: dict[str, tuple[tuple[int, str, str], dict[str, Any]]] = {}  # never added to


def first_states(rules: Rules) -> Tail:
    """The states before any event."""
    return rules.first


def _key(stored: Stored) -> tuple[int, str, str]:
    return stored.key


def _passes(touch: Touch, state: CustomerState, rules: Rules, tail: Tail | PlainStates) -> bool:
    """Whether the states pass the event unchanged (`_replay` would do nothing else with it):
    no rule looks at it, and no cooldown is seeded before it."""
    if touch.is_contact or touch.fields:
        return False
    interested = rules.by_kind.get((touch.channel, touch.type, False, False))
    if interested is None:
        interested = rules.interested(touch)
    if interested:
        return False
    if rules.seeded:
        if state.alerts:
            return False
        for j in rules.seeded:
            if type(tail) is PlainStates:
                p = tail.plain[j + 1]
                if p != 0 and p[1]:  # the detector's cooldowns (`last_alert`)
                    return False
            elif tail[j + 1].last_alert:  # type: ignore[index]
                return False
    return True


def _seed(tail: Tail, state: CustomerState, rules: Rules, at: Stored) -> Tail:
    """Cooldowns of known-entry rules before `at` are what was published, not what the
    (possibly pruned) replay says: outputs before it cannot change. (Called only when there
    are alerts or cooldowns: with neither, seeding changes nothing.)"""
    todo = rules.seeded
    last: dict[str, dict[str, int]] = {}
    for a in state.alerts.values():
        if a.status == "open" and a.order_key < at.key and a.body["field"] is not None:
            of_kind = last.setdefault(a.body["kind"], {})
            f = a.body["field"]
            of_kind[f] = max(of_kind.get(f, a.order_key[0]), a.order_key[0])
    seeded = list(tail)
    for j in todo:
        d = rules.detectors[j]
        seeded[j + 1] = d.seeded(tail[j + 1], last.get(d.name, {}), at.touch.t)
    return tuple(seeded)


def _same_but_context(old: dict[str, Any], body: dict[str, Any]) -> bool:
    return len(old) == len(body) + 1 and all(old.get(k) == v for k, v in body.items())


def _replay(
    events: list[Stored], start: int, state: CustomerState, rules: Rules, tail: Tail | None
) -> tuple[list[Flags], dict[str, tuple[tuple[int, str, str], dict[str, Any]]], int, bool]:
    """Flags for events[start:stop + 1] and the alerts they trigger, `stop`, and whether a
    detector's cap bit on the way; records each event's fold states in `Stored.after`.
    Replays from the first kept event, or continues from `tail` (the states after
    events[:start]) when the caller has it.

    Stops early where the states after an event equal those recorded for it before the new
    event came: the fold from there on is the same function of the same inputs, so the
    verdicts of the events after it cannot change. (The "already told us" context of an alert
    only looks back as far as the detectors' windows, whose contents the states hold.) A late
    page view stops the replay at the next event; without this, every late event replayed
    the customer's whole kept history."""
    if tail is None:  # from the first kept event, from what it was folded from
        base = state.base
        if base is None:
            tail = first_states(rules)
        elif isinstance(base, PlainStates):
            tail = unpack_states(base.plain, rules.detectors)
        else:
            tail = base
        start_at = 0
    else:
        start_at = start
    states = tail
    flags: list[Flags] = []
    drafts: dict[str, tuple[tuple[int, str, str], dict[str, Any]]] = {}
    # (by_kind: rules.interested, without a call per event)
    detectors, by_kind, seeded = rules.detectors, rules.by_kind, rules.seeded
    contacts_window = rules.repeat_contact.window_days * 86_400_000_000
    grace = rules.repeat_contact.transfer_grace_minutes * 60_000_000
    fields_window = rules.re_entry.window_days * 86_400_000_000  # as far back as a context's fields go
    capped = False
    # whether the new event (events[start]) can be in the "already told us" context of the
    # alerts after it: a contact or an event with fields (the context looks only at those)
    # (start past the last event: only the fold, for `CustomerState.unpack`)
    context_changes = start < len(events) and (events[start].touch.is_contact or bool(events[start].touch.fields))
    for i in range(start_at, len(events)):
        stored = events[i]
        touch = stored.touch
        if i == start and seeded:
            if state.alerts:
                states = _seed(states, state, rules, stored)
            else:
                for j in seeded:
                    if states[j + 1].last_alert:
                        states = _seed(states, state, rules, stored)
                        break
        interested = by_kind.get((touch.channel, touch.type, touch.is_contact, bool(touch.fields)))
        if interested is None:
            interested = rules.interested(touch)
        if interested or touch.is_contact or touch.fields:
            if touch.is_contact or touch.fields:
                contacts, role, root = contacts_step(states[0], touch, contacts_window, grace, fields_window)
            else:  # the contacts fold has nothing to do with it
                contacts, role, root = states[0], "", NO_ROOT
            # a new tuple of states only when one changed (most steps change nothing)
            new_states: list[Any] | None = None
            if contacts is not states[0]:
                new_states = list(states)
                new_states[0] = contacts
            friction: list[str] = []
            reentered: tuple[str, ...] = ()
            alerts: list[AlertDraft] = []
            for j in interested:
                d = detectors[j]
                was = states[j + 1]
                st, v = d.step(was, touch, role, root)
                if st is not was:
                    if new_states is None:
                        new_states = list(states)
                    new_states[j + 1] = st
                if v is NO_VERDICT:
                    continue
                if v.flagged:
                    friction.append(d.name)
                    if v.reentered:
                        reentered = v.reentered if not reentered else tuple(dict.fromkeys((*reentered, *v.reentered)))
                if v.alerts:
                    alerts.extend(v.alerts)
                capped = capped or v.capped
            if new_states is not None:
                states = tuple(new_states)
            event_flags: Flags = (tuple(friction), reentered, role, root[0]) if friction or role else NO_FLAGS
        else:  # no rule looks at it: the states stay as they are
            alerts, event_flags = NO_ALERTS, NO_FLAGS
        before = stored.after
        stored.after = states
        if i < start:
            continue
        flags.append(event_flags)
        for draft in alerts:
            aid = alert_id(draft.kind, draft.customer_id, draft.subject, draft.trigger_uid)
            body = alert_body(draft, min(draft.first_t or draft.t, draft.t))
            old = state.alerts.get(aid) if i > start and not context_changes else None
            if old is not None and old.status == "open" and "context" in old.body and _same_but_context(old.body, body):
                # the new event is not in this alert's context: what it was still is (a replay
                # after a late event recomputes many alerts; their contexts are the costly part).
                # Not a retracted one's: late events may have come into its context since.
                body["context"] = old.body["context"]
            else:
                if state.packed is not None:  # in order after packed events: this one is the last
                    shift = state.unpack(rules)
                    events = state._events
                    i, start = i + shift, start + shift
                lo = max(0, i - CONTEXT_EVENTS)
                body["context"] = already_told_us([s.touch for s in events[lo : i + 1]], i - lo, draft, rules)
            drafts[aid] = (stored.key, body)
        if i > start and before is not None:
            if type(before) is PlainStates:
                before = unpack_states(before.plain, detectors)
            if before == states:
                return flags, drafts, i, capped
    return flags, drafts, len(events) - 1, capped


def judge(state: CustomerState, touch: Touch, rules: Rules, now_us: int) -> tuple[CustomerState, Judgement]:
    state.rules = rules
    packed = state.packed
    if packed is not None and (packed.states is None or packed.tag != rules.tag):
        state.unpack(rules)  # their fold states are not known (or were made by other rules): replayed
        packed = None
    seen = state.seen
    if seen is None:
        seen = state.seen = {s.touch.event_id for s in state._events}
        count = len(state._events)
        if packed is not None:
            seen.update(packed.ids)
            count += packed.count
        state.ids_shared = len(seen) < count
    event_id = touch.event_id
    if event_id in seen:
        channel = touch.channel
        state.unpack(rules)
        if any(s.touch.event_id == event_id and s.touch.channel == channel for s in state._events):
            return state, DUPLICATE
        state.ids_shared = True
    else:
        seen.add(event_id)
    touch = attach_profile(state, touch)
    late = state.max_t is not None and touch.t < state.max_t - rules.allowed_lateness_days * 86_400_000_000
    new = Stored(touch)
    key = new.key
    packed, events = state.packed, state._events
    # alerts triggered by events older than these were left behind by pruning: never retracted
    kept_from = (state.first_key() or key) if state.alerts else key
    if events:
        last = events[-1].touch
        # the order key's comparison, without making the last one's
        in_order = last.t < touch.t or (last.t == touch.t and (last.channel, last.event_id) < key[1:])
    else:
        in_order = packed is None or packed.last < key
    if in_order:  # the common case
        start = len(events)
        events.append(new)
    else:  # keys are unique: (channel, event_id) is
        if packed is not None:
            state.unpack(rules)
            packed, events = None, state._events
        start = bisect_right(events, key, key=_key)
        events.insert(start, new)
    # continue from the detectors' states before it (None after decoding: a full replay)
    tail: Tail | PlainStates | None = events[start - 1].after if start else None
    if not start:
        if packed is None:
            tail = first_states(rules)
            state.base = None  # it is folded from the first states
        else:
            tail = PlainStates(packed.states)
    if tail is None and packed is not None:  # decoded with their fold states
        start += state.unpack(rules)
        events = state._events
        tail = events[start - 1].after
    if tail is not None and in_order and _passes(touch, state, rules, tail):
        new.after = tail  # as _replay would, without a call (and without unpacking them)
        flags, drafts, stop, capped = [NO_FLAGS], NO_DRAFTS, start, False
    else:
        if type(tail) is PlainStates:
            tail = unpack_states(tail.plain, rules.detectors)
        flags, drafts, stop, capped = _replay(events, start, state, rules, tail)  # type: ignore[arg-type]
    if events is not state._events:  # the packed events were decoded on the way (an alert's context)
        start += len(state._events) - len(events)
        events = state._events

    rows: list[RowVersion] = []
    for stored, (friction, reentered, contact, chain) in zip(events[start : stop + 1], flags, strict=True):
        if stored.revision == 0 or (friction, reentered, contact, chain) != (
            stored.friction,
            stored.reentered,
            stored.contact,
            stored.chain,
        ):
            stored.friction, stored.reentered, stored.contact, stored.chain = friction, reentered, contact, chain
            stored.revision += 1
            rows.append(RowVersion(stored.touch, friction, reentered, stored.revision, contact, chain))

    alerts: list[AlertVersion] = []
    for aid, (order_key, body) in drafts.items():
        old = state.alerts.get(aid)
        if old is not None and old.status == "open" and old.body == body:
            continue
        revision = 1 if old is None else old.revision + 1
        state.alerts[aid] = Published(aid, order_key, "open", revision, now_us, body)
        alerts.append(AlertVersion(aid, "open", revision, now_us, body))
    if state.alerts:
        last_key = events[stop].key  # alerts triggered after the replay's stop are unchanged
        for aid, old in state.alerts.items():
            if old.status == "open" and max(key, kept_from) <= old.order_key <= last_key and aid not in drafts:
                old.status, old.revision, old.detected_at = "retracted", old.revision + 1, now_us
                alerts.append(AlertVersion(aid, "retracted", old.revision, now_us, old.body))

    if state.max_t is None or touch.t > state.max_t:
        state.max_t = touch.t
    pruned, unlinked = _prune(state, rules)  # also an event older than the kept history, once judged
    return state, Judgement(tuple(rows), tuple(alerts), late=late, capped=capped or pruned, unlinked=unlinked)


def links(events: list[Stored]) -> set[str]:
    """The anonymous-id fingerprints the events carry."""
    return {s.touch.anonymous for s in events if s.touch.anonymous}


def _prune(state: CustomerState, rules: Rules) -> tuple[bool, tuple[str, ...]]:
    """Drop what the horizon leaves behind, and the oldest events past the per-customer cap;
    returns whether the cap bit, and the anonymous ids no kept event carries any more."""
    assert state.max_t is not None
    keep_from = state.max_t - rules.horizon_us
    packed, events = state.packed, state._events
    count = len(events) + (packed.count if packed is not None else 0)
    over = count - rules.max_events_per_customer
    unlinked: tuple[str, ...] = ()
    first = state.first_key()
    if first is not None and (first[0] < keep_from or over > 0) and packed is not None:
        cut_off = state.cut_packed(keep_from, over, rules)
        if cut_off is None:  # every packed event goes: decoded, and pruned as below
            state.unpack(rules)
            events = state._events
        else:
            gone_ids, gone = cut_off
            seen = state.seen
            if state.ids_shared:
                state.seen = None
            elif seen is not None:
                seen.difference_update(gone_ids)
            if gone:
                unlinked = tuple(sorted(gone - links(events)))
            first = None
    if first is not None and (first[0] < keep_from or over > 0):
        cut = bisect_right(events, (keep_from, "", ""), key=_key)  # the first event at or after keep_from
        cut = max(cut, over)
        seen = state.seen
        if state.ids_shared:
            state.seen = None
        elif seen is not None:
            for s in events[:cut]:
                seen.discard(s.touch.event_id)
        gone = links(events[:cut])
        if cut:
            state.base = events[cut - 1].after  # what the first kept one was folded from
        del events[:cut]
        if gone:
            unlinked = tuple(sorted(gone - links(events)))
    # Alerts of events left behind can no longer change; the newest open alert of a field of
    # a known-entry rule still feeds its cooldown, one window beyond the kept events.
    first = state.first_key()
    if state.alerts and first is not None:
        alert_from = keep_from - rules.re_entry.window_days * 86_400_000_000
        cooling: dict[tuple[str, str], Published] = {}
        for a in state.alerts.values():
            f = a.body["field"]
            if a.order_key < first and f is not None and a.status == "open":
                k = (a.body["kind"], f)
                if k not in cooling or cooling[k].order_key < a.order_key:
                    cooling[k] = a
        stale = [
            aid
            for aid, a in state.alerts.items()
            if a.order_key < first and cooling.get((a.body["kind"], a.body["field"])) is not a
        ]
        for aid in stale:
            del state.alerts[aid]
        for aid in [aid for aid, a in state.alerts.items() if a.order_key[0] < alert_from]:
            del state.alerts[aid]
    return over > 0, unlinked
