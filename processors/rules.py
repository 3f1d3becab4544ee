"""Friction rules as configuration: the rule file's model (`config/rules.yaml`), its
validation, and its compilation into the detectors `judge` folds (processors/templates.py).

A rule is an instance of one of four templates:
- `repeat`: matching events of one customer, grouped by a key, within a window, reaching a count;
- `known_entry`: entries of personal-data fields the CRM holds or the customer gave elsewhere before;
- `sequence`: an event matching `first` followed by one matching `then` within a window,
  optionally with the same key, optionally without one matching `without` in between;
- `chain`: one contact's continuation chain (transfers, consults) reaching N legs or N agents.

Pure: the caller reads the file; `parse_rule_file(data, source)` validates what it holds and
raises `RuleFileError` with one sentence per problem, each naming the rule and the key.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from processors.model import MICROS_PER_DAY, MICROS_PER_MINUTE, OTHER_MATTER, Touch

#: the touchpoint fields a condition can test, and what the timeline calls them (for the SQL
#: preview); `contact` is the contact role (new | continuation | "" for other events)
CONDITION_FIELDS = {
    "channel": "channel",
    "type": "type",
    "matter": "matter",
    "place": "place",
    "agent_id": "agent_id",
    "loyalty_tier": "loyalty_tier",
    "contact": "contact",
    "outcome": "outcome",
    "fields": "fields",  # any of the names given is among the fields entered
}
#: the keys a rule can group by: the contact's matter, or none
KEYS = ("matter",)
_DURATION = re.compile(r"^\s*(\d+)\s*(m|h|d)\s*$")
_UNIT_US = {"m": MICROS_PER_MINUTE, "h": 60 * MICROS_PER_MINUTE, "d": MICROS_PER_DAY}
#: the placeholders an alert's sentence can use (processors/summary.py fills them)
SUMMARY_PLACEHOLDERS = frozenset(
    {"who", "customer_id", "tier", "count", "span", "subject", "channels", "agents", "distinct_agents", "places",
     "crm", "window_days", "rule"}
)  # fmt: skip

Scalar = str | int | bool
Condition = dict[str, Scalar | list[Scalar] | dict[str, Scalar | list[Scalar]]]


class RuleFileError(ValueError):
    """The rule file is not valid; the message names the rule and the key."""


def duration_us(text: str) -> int:
    m = _DURATION.match(text)
    if m is None:
        raise ValueError("not a duration like 90m, 24h or 7d")
    return int(m.group(1)) * _UNIT_US[m.group(2)]


Duration = Annotated[str, Field(description="90m, 24h, 7d")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeverityRule(_Strict):
    """`medium`, unless the count reaches `high_at`, or the customer's tier is a VIP tier
    (`rules.vip_tiers` in config/cem.yaml) and `vip` says `high`."""

    high_at: int | None = Field(None, ge=2)
    vip: Literal["high", "medium"] = "high"


def _check_conditions(value: Condition | list[Condition] | None) -> list[Condition]:
    if value is None:
        return []
    conditions = value if isinstance(value, list) else [value]
    for cond in conditions:
        if not isinstance(cond, dict):
            raise ValueError("a condition is a mapping of touchpoint field to value(s)")
        for name, want in cond.items():
            if name not in CONDITION_FIELDS:
                raise ValueError(f"unknown touchpoint field {name!r} (known: {', '.join(CONDITION_FIELDS)})")
            if isinstance(want, dict) and set(want) != {"not"}:
                raise ValueError(f"{name}: a mapping here can only be {{not: ...}}")
    return conditions


class _Rule(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    version: int = Field(1, ge=1)
    enabled: bool = True
    description: str = ""
    severity: SeverityRule = SeverityRule()
    summary: str

    @field_validator("summary")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as e:
            raise ValueError(f"not a valid sentence template ({e})") from None
        unknown = names - SUMMARY_PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}} (known: {', '.join(sorted(SUMMARY_PLACEHOLDERS))})"
            )
        return v

    def window_us(self) -> int:
        raise NotImplementedError


class RepeatRule(_Rule):
    template: Literal["repeat"]
    match: Condition | list[Condition] | None = None
    key: Literal["matter"] | None = None
    window: Duration
    threshold: int = Field(ge=2, le=1000)
    cooldown: Duration = "0m"
    max_evidence: int = Field(50, ge=2, le=1000)

    _c = field_validator("match")(_check_conditions)

    @field_validator("window", "cooldown")
    @classmethod
    def _duration(cls, v: str) -> str:
        duration_us(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RepeatRule:
        if self.max_evidence < self.threshold:
            raise ValueError("max_evidence: must be at least the threshold")
        if duration_us(self.cooldown) > duration_us(self.window):
            raise ValueError("cooldown: must not be longer than the window")
        return self

    def window_us(self) -> int:
        return duration_us(self.window)


class KnownEntryRule(_Rule):
    template: Literal["known_entry"]
    match: Condition | list[Condition] | None = None
    fields: list[str] | None = None  # only these fields (default: every field of the vocabulary)
    window: Duration
    threshold: int = Field(ge=1, le=1000)
    max_evidence: int = Field(50, ge=2, le=1000)

    _c = field_validator("match")(_check_conditions)

    @field_validator("window")
    @classmethod
    def _duration(cls, v: str) -> str:
        duration_us(v)
        return v

    def window_us(self) -> int:
        return duration_us(self.window)


class SequenceRule(_Rule):
    template: Literal["sequence"]
    first: Condition | list[Condition]
    then: Condition | list[Condition]
    without: Condition | list[Condition] | None = None
    window: Duration
    key: Literal["matter"] | None = None
    # the same key only when both events have one (a web contact form without a reason, then a call)
    key_optional: bool = False
    cooldown: Duration = "0m"
    max_evidence: int = Field(20, ge=1, le=1000)

    _c = field_validator("first", "then", "without")(_check_conditions)

    @field_validator("window", "cooldown")
    @classmethod
    def _duration(cls, v: str) -> str:
        duration_us(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SequenceRule:
        if not self.first:
            raise ValueError("first: needs at least one condition")
        if not self.then:
            raise ValueError("then: needs at least one condition")
        if self.key_optional and self.key is None:
            raise ValueError("key_optional: needs a key")
        if duration_us(self.cooldown) > duration_us(self.window):
            raise ValueError("cooldown: must not be longer than the window")
        return self

    def window_us(self) -> int:
        return duration_us(self.window)


class ChainRule(_Rule):
    template: Literal["chain"]
    legs: int | None = Field(None, ge=2, le=1000)
    agents: int | None = Field(None, ge=2, le=1000)
    max_evidence: int = Field(50, ge=2, le=1000)

    @model_validator(mode="after")
    def _consistent(self) -> ChainRule:
        if self.legs is None and self.agents is None:
            raise ValueError("legs: give legs, agents or both")
        return self

    def window_us(self) -> int:
        return 0  # a chain lives as long as its legs continue one another (the contacts' window)


RuleSpec = Annotated[RepeatRule | KnownEntryRule | SequenceRule | ChainRule, Field(discriminator="template")]


class ContactsSpec(_Strict):
    """How contacts continue one another (contract v1): a leg naming an earlier contact in
    `previous_contact_id` within `window`, or starting within `transfer_grace` after a
    contact ended `transferred`, continues it."""

    window: Duration = "7d"
    transfer_grace: Duration = "15m"

    @field_validator("window", "transfer_grace")
    @classmethod
    def _duration(cls, v: str) -> str:
        duration_us(v)
        return v

    @field_validator("window")
    @classmethod
    def _days(cls, v: str) -> str:
        if duration_us(v) % MICROS_PER_DAY:
            raise ValueError("a whole number of days, like 7d")
        return v


class RuleFile(_Strict):
    contacts: ContactsSpec = ContactsSpec()
    rules: list[RuleSpec]

    @model_validator(mode="after")
    def _unique(self) -> RuleFile:
        seen: set[str] = set()
        for r in self.rules:
            if r.name in seen:
                raise ValueError(f"rule {r.name!r}: name: used by another rule")
            seen.add(r.name)
        return self


def parse_rule_file(data: Any, source: str = "rules") -> RuleFile:
    """The rule file's content, validated; `RuleFileError` names the rule and key of each problem."""
    if not isinstance(data, dict):
        raise RuleFileError(f"{source}: the top level must be a mapping with a `rules:` list.")
    try:
        return RuleFile.model_validate(data)
    except ValidationError as e:
        raise RuleFileError("\n".join(_sentences(e, data, source))) from None


def _sentences(e: ValidationError, data: dict[str, Any], source: str) -> list[str]:
    out = []
    given = data.get("rules")
    rules: list[Any] = given if isinstance(given, list) else []
    for err in e.errors(include_url=False):
        loc = list(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = f"{source}:"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            i = loc[1]
            raw = rules[i] if i < len(rules) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            who = f"rule {name!r}" if isinstance(name, str) else f"rule #{i + 1}"
            rest = [str(p) for p in loc[2:]]
            if rest and rest[0] in ("repeat", "known_entry", "sequence", "chain"):
                rest = rest[1:]  # the discriminator's branch, not a key
            if not rest and ": " in msg and msg.split(": ", 1)[0].isidentifier():
                key, msg = msg.split(": ", 1)  # a whole-rule check names its key first
                rest = [key]
            if err["type"] == "union_tag_invalid" or (err["type"] == "union_tag_not_found"):
                rest, msg = ["template"], "must be one of repeat, known_entry, sequence, chain"
            key = ".".join(rest) or "(rule)"
            if err["type"] == "extra_forbidden":
                msg = "not a key of this template"
            out.append(f"{where} {who}, key {key!r}: {msg}.")
        else:
            key = ".".join(str(p) for p in loc) or "(file)"
            if key == "(file)" and msg.startswith("rule "):
                who, _, tail = msg.partition(": ")
                k, _, why = tail.partition(": ")
                out.append(f"{where} {who}, key {k!r}: {why}.")
            else:
                out.append(f"{where} key {key!r}: {msg}.")
    return out


# --------------------------------------------------------------------------- conditions


def _as_set(v: Scalar | list[Scalar]) -> frozenset[str]:
    values = v if isinstance(v, list) else [v]
    return frozenset(str(x).lower() if isinstance(x, bool) else str(x) for x in values)


#: the touch's value of a condition field, given the contact role
_GETTERS: dict[str, Callable[[Touch, str], str]] = {
    "channel": lambda t, role: t.channel,
    "type": lambda t, role: t.type,
    "matter": lambda t, role: t.matter,
    "place": lambda t, role: t.place,
    "agent_id": lambda t, role: t.agent_id,
    "loyalty_tier": lambda t, role: t.loyalty_tier,
    "contact": lambda t, role: role,
    "outcome": lambda t, role: t.outcome,
}

Predicate = Callable[[Touch, str], bool]


def _test(name: str, want: Any) -> Predicate:
    negate = isinstance(want, dict)
    values = _as_set(want["not"] if negate else want)
    if name == "fields":
        if negate:
            return lambda t, role: not any(f in values for f in t.fields)
        return lambda t, role: any(f in values for f in t.fields)
    get = _GETTERS[name]
    if negate:
        return lambda t, role: get(t, role) not in values
    if len(values) == 1:
        [one] = values
        return lambda t, role: get(t, role) == one
    return lambda t, role: get(t, role) in values


#: fields whose values are few (channels, types, contact roles): a condition on these alone is
#: decided once per combination and remembered
_FEW = frozenset({"channel", "type", "contact"})


def compile_match(conditions: Sequence[Condition]) -> Predicate | None:
    """Any of the conditions, each all of its tests; None: every event matches."""
    if not conditions:
        return None
    alternatives: list[Predicate] = []
    for cond in conditions:
        tests = [_test(n, w) for n, w in cond.items()]
        if len(tests) == 1:
            alternatives.append(tests[0])
        else:
            alternatives.append(lambda t, role, tests=tests: all(p(t, role) for p in tests))  # type: ignore[misc]
    one = alternatives[0] if len(alternatives) == 1 else (lambda t, role: any(p(t, role) for p in alternatives))
    if not all(set(cond) <= _FEW for cond in conditions):
        return one
    seen: dict[tuple[str, str, str], bool] = {}  # at most channels x types x 3 roles

    def remembered(t: Touch, role: str) -> bool:
        k = (t.channel, t.type, role)
        found = seen.get(k)
        if found is None:
            found = seen[k] = one(t, role)
        return found

    return remembered


def could_match(conditions: Sequence[Condition] | None, channel: str, type_: str, is_contact: bool,
                has_fields: bool) -> bool:  # fmt: skip
    """Whether an event of this channel and type can match any of the conditions: what the
    judge asks once per kind of event, so that a rule is not even called for the others."""
    if not conditions:
        return True
    for cond in conditions:
        ok = True
        for name, want in cond.items():
            if name in ("channel", "type"):
                value = channel if name == "channel" else type_
                values = _as_set(want["not"] if isinstance(want, dict) else want)
                ok = (value not in values) if isinstance(want, dict) else (value in values)
            elif name == "contact" and not isinstance(want, dict):
                ok = is_contact if "" not in _as_set(want) else True
            elif name == "fields" and not isinstance(want, dict):
                ok = has_fields
            if not ok:
                break
        if ok:
            return True
    return False


def key_of(touch: Touch, key: str | None) -> str:
    """The value a rule groups by; "" when the event has none. The matter `other` is a reason
    we cannot name: two of them are not known to be the same matter."""
    if key is None:
        return ""
    m = touch.matter
    return "" if m == OTHER_MATTER else m


# --------------------------------------------------------------------------- today's rules

REPEAT_CONTACT_SUMMARY = "{who} contacted us {count} times {span} about {subject} (via {channels}){agents}."
RE_ENTRY_SUMMARY = "{who} had to enter {subject} {count} times {span}, {places}{crm}."


def legacy_rules(
    repeat_window_days: int, cooldown_minutes: int, repeat_max_evidence: int,
    re_window_days: int, re_threshold: int, re_max_evidence: int,
) -> list[RepeatRule | KnownEntryRule]:  # fmt: skip
    """Contract v1's two rules with the given parameters: what config/rules.yaml holds by default."""
    return [
        RepeatRule(
            name="repeat_contact", template="repeat", match={"contact": "new"}, key="matter",
            window=f"{repeat_window_days}d", threshold=2, cooldown=f"{cooldown_minutes}m",
            max_evidence=repeat_max_evidence, severity=SeverityRule(high_at=3, vip="high"),
            summary=REPEAT_CONTACT_SUMMARY,
        ),
        KnownEntryRule(
            name="re_entry", template="known_entry", window=f"{re_window_days}d", threshold=re_threshold,
            max_evidence=re_max_evidence, severity=SeverityRule(vip="high"), summary=RE_ENTRY_SUMMARY,
        ),
    ]  # fmt: skip
