"""The normalized touchpoint the detectors see, and the rules they apply."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any

MICROS_PER_SECOND = 1_000_000
MICROS_PER_MINUTE = 60 * MICROS_PER_SECOND
MICROS_PER_DAY = 24 * 3600 * MICROS_PER_SECOND

#: web types that are assisted contacts (call-centre events always are)
WEB_CONTACT_TYPES = frozenset({"contact_form", "chat"})
#: the matter of a contact whose reason is not in the configured vocabulary: counted, never
#: judged as a repeat (two reasons we cannot name are not known to be the same matter)
OTHER_MATTER = "other"

# The values of the judging path (Touch, the detectors' states and verdicts, alert drafts)
# are plain slots dataclasses that no code changes after making them. They are not
# frozen because a frozen dataclass's __init__ sets every field through
# object.__setattr__: 1.4 us for a Touch against 0.15 us, and the judge makes several
# values per touchpoint.


@dataclass(slots=True)  # a value (why not frozen: above)
class Touch:
    """One touchpoint, resolved to a customer, with the CRM facts held when it was processed.

    Times are integer microseconds since the epoch (UTC): cheap to compare and serialize.
    No raw personal values: only field *names*.
    """

    customer_id: str
    channel: str
    event_id: str
    t: int
    type: str
    matter: str = ""
    place: str = ""
    agent_id: str = ""
    fields: tuple[str, ...] = ()
    is_contact: bool = False
    outcome: str = ""
    duration_s: int = 0
    previous_contact_id: str = ""
    # CRM profile as held when the event was processed ("as held when the event is processed")
    crm_known: tuple[str, ...] = ()
    loyalty_tier: str = "none"
    profile_version: int = 0
    resolved_by: str = "customer_id"
    # Kafka provenance of the original message
    topic: str = ""
    partition: int = -1
    offset: int = -1
    anonymous: str = ""  # fingerprint of the event's anonymous id: the customer's links, dropped with them

    @property
    def uid(self) -> str:
        """event_id is unique per channel, so (channel, event_id) identifies a touchpoint."""
        return f"{self.channel}/{self.event_id}"

    def with_profile(self, crm_known: tuple[str, ...], loyalty_tier: str, profile_version: int) -> Touch:
        """A copy stamped with CRM facts (spelled out: dataclasses.replace is 20x slower here)."""
        return Touch(
            self.customer_id, self.channel, self.event_id, self.t, self.type, self.matter, self.place,
            self.agent_id, self.fields, self.is_contact, self.outcome, self.duration_s, self.previous_contact_id,
            crm_known, loyalty_tier, profile_version, self.resolved_by, self.topic, self.partition, self.offset,
            self.anonymous,
        )  # fmt: skip

    @property
    def order_key(self) -> tuple[int, str, str]:
        # Ties in event time are broken by channel and id so every arrival order agrees.
        return (self.t, self.channel, self.event_id)

    def to_row(self) -> tuple[Any, ...]:
        """The fields in their declared order: how a touch travels between the stages and is
        kept in snapshots (half the bytes of a JSON object, and 4x faster to read back).
        Adding a field therefore changes those formats: add it last."""
        return (
            self.customer_id, self.channel, self.event_id, self.t, self.type, self.matter, self.place,
            self.agent_id, self.fields, self.is_contact, self.outcome, self.duration_s, self.previous_contact_id,
            self.crm_known, self.loyalty_tier, self.profile_version, self.resolved_by, self.topic, self.partition,
            self.offset, self.anonymous,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: list[Any]) -> Touch:
        """A touch from `to_row()` as decoded from JSON (arrays for its tuples)."""
        if not isinstance(row, list) or len(row) != ROW_LENGTH:
            raise ValueError(f"a touch row is a list of {ROW_LENGTH} values")
        touch = cls(*row)
        touch.fields, touch.crm_known = tuple(touch.fields), tuple(touch.crm_known)
        touch.intern()
        return touch

    def intern(self) -> None:
        """Share the strings that repeat across touches (a customer's id, a place, a topic):
        decoded from JSON each touch has its own copies, which cost the judge's memory about
        300 bytes per kept event."""
        intern = sys.intern
        self.customer_id, self.channel, self.type = intern(self.customer_id), intern(self.channel), intern(self.type)
        self.matter, self.place, self.agent_id = intern(self.matter), intern(self.place), intern(self.agent_id)
        self.outcome, self.loyalty_tier = intern(self.outcome), intern(self.loyalty_tier)
        self.resolved_by, self.topic = intern(self.resolved_by), intern(self.topic)


ROW_LENGTH = len(Touch.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RepeatContactRules:
    window_days: int = 7
    transfer_grace_minutes: int = 15
    # A matter's next alert comes no sooner than this after its last one (event time), unless
    # it is more severe: a customer calling every minute raises one alert an hour, not sixty.
    alert_cooldown_minutes: int = 60
    # the newest contacts counted and listed per matter: a count that reaches it means "at least"
    max_evidence: int = 50


@dataclass(frozen=True, slots=True)
class ReEntryRules:
    window_days: int = 30
    alert_threshold: int = 3
    max_evidence: int = 50  # the newest entries of a field counted and listed


@dataclass(frozen=True, slots=True)
class Rules:
    """What the judge applies. `friction` holds the rule file's rules (processors/rules.py);
    None: contract v1's two rules, with the parameters of `repeat_contact` and `re_entry`.
    `repeat_contact` also says how contacts continue one another (its window and transfer
    grace) and how far back an alert's context looks for contacts; `re_entry`, for fields."""

    repeat_contact: RepeatContactRules = field(default_factory=RepeatContactRules)
    re_entry: ReEntryRules = field(default_factory=ReEntryRules)
    vip_tiers: frozenset[str] = frozenset({"gold", "platinum"})
    allowed_lateness_days: int = 7
    # Events kept per customer beyond the horizon's pruning: the oldest go first. A producer
    # that defaults every customer id to "unknown" makes one customer of millions of events.
    max_events_per_customer: int = 2000
    friction: tuple[Any, ...] | None = None
    # the compiled detectors (processors/templates.py), made once
    detectors: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)
    #: how far behind the newest event a customer's events are kept for recomputation
    horizon_us: int = field(default=0, init=False, repr=False, compare=False)
    #: the indices of the detectors whose cooldowns are seeded from published alerts
    seeded: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    #: the contacts fold's state and each detector's before any event (values: shared)
    first: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)
    # (channel, type, is contact, has fields) -> the indices of the detectors such an event
    # can concern: most events (page views, searches) concern none, and skip them all
    by_kind: dict[tuple[str, str, bool, bool], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: names what the detectors' states depend on: states stored with another tag were folded
    #: by other rules, and are recomputed (processors/judge.py, `Packed`)
    tag: str = field(default="", init=False, repr=False, compare=False)

    def interested(self, touch: Touch) -> tuple[int, ...]:
        kind = (touch.channel, touch.type, touch.is_contact, bool(touch.fields))
        found = self.by_kind.get(kind)
        if found is None:
            found = self.by_kind[kind] = tuple(i for i, d in enumerate(self.detectors) if d.could(*kind))
        return found

    def __post_init__(self) -> None:
        from processors.rules import legacy_rules  # rules imports this module
        from processors.templates import Chain, ContactsState, KnownEntry, Repeat, Sequence

        rc, re = self.repeat_contact, self.re_entry
        specs = self.friction
        if specs is None:
            specs = tuple(legacy_rules(rc.window_days, rc.alert_cooldown_minutes, rc.max_evidence,
                                       re.window_days, re.alert_threshold, re.max_evidence))  # fmt: skip
        made: list[Any] = []
        for spec in specs:
            if not spec.enabled:
                continue
            if spec.template == "repeat":
                made.append(Repeat(spec, self.vip_tiers))
            elif spec.template == "known_entry":
                made.append(KnownEntry(spec, self.vip_tiers))
            elif spec.template == "sequence":
                made.append(Sequence(spec, self.vip_tiers))
            else:
                made.append(Chain(spec, self.vip_tiers, rc.window_days * MICROS_PER_DAY))
        object.__setattr__(self, "detectors", tuple(made))
        longest = max([rc.window_days * MICROS_PER_DAY, re.window_days * MICROS_PER_DAY] + [d.window_us for d in made])
        object.__setattr__(self, "horizon_us", longest + self.allowed_lateness_days * MICROS_PER_DAY)
        seeded = tuple(i for i, d in enumerate(made) if hasattr(d, "seeded"))
        object.__setattr__(self, "seeded", seeded)
        object.__setattr__(self, "first", (ContactsState(), *(d.first for d in made)))
        what = repr((rc, re, sorted(self.vip_tiers), [s.model_dump_json() for s in specs if s.enabled]))
        object.__setattr__(self, "tag", hashlib.blake2b(what.encode(), digest_size=8).hexdigest())


@dataclass(slots=True)  # a value (why not frozen: above)
class AlertDraft:
    """An alert as a detector sees it; `judge` turns it into a published FrictionAlert."""

    kind: str
    customer_id: str
    subject: str  # the matter (repeat_contact) or the field (re_entry)
    trigger_uid: str
    trigger_event_id: str
    t: int
    severity: str
    count: int
    window_days: int
    channels: tuple[str, ...]
    distinct_agents: int
    places: tuple[str, ...]
    known_in_crm: bool
    evidence: tuple[str, ...]
    loyalty_tier: str
    first_t: int = 0  # event time of the first evidence (0: `t`)
    key: str = ""  # what `subject` is: "matter", "field", or "" (the rule groups by nothing)
    rule_version: int = 1
    summary: str = ""  # the rule's sentence template (processors/summary.py)
