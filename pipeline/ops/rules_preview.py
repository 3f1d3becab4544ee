"""`cem rules preview` / `backfill`: a rule of the rule file computed over `cem.timeline` in
ClickHouse, with SQL generated from the rule's definition (portable: ClickHouse 18.16 and
26.x alike; no window functions and no CTEs: per-customer arrays and lambdas instead).

The SQL finds, per customer, the events the rule flags, with the count, evidence and tier
each would alert with. Two things that depend on the alerts raised before (a sequential
fold, which 18.16's SQL cannot express) are then applied to those rows in Python, with the
rule's own detector: cooldowns, and severity. What the preview computes therefore equals
what the live judge flags over the same events (tests/unit/test_rules_preview.py), with
these documented limits (docs/rules.md):
- event times are whole seconds in the timeline (the judge sees microseconds);
- a sequence's pending first events are not capped at `max_evidence`, and a chain's
  distinct agents are counted over all its legs (the judge keeps the first and newest 50).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from processors.model import MICROS_PER_SECOND
from processors.rules import (
    CONDITION_FIELDS,
    ChainRule,
    Condition,
    KnownEntryRule,
    RepeatRule,
    SequenceRule,
    duration_us,
)
from processors.templates import Detector

_SEVERITY = {"medium": 1, "high": 2}


class Executor(Protocol):
    def execute(self, query: str, params: Any = None) -> Any: ...


@dataclass(frozen=True)
class Flag:
    customer_id: str
    event_id: str
    channel: str
    t: int  # seconds since the epoch


@dataclass(frozen=True)
class PreviewAlert:
    rule: str
    customer_id: str
    subject: str
    trigger: str
    trigger_channel: str
    t: int  # seconds
    severity: str
    count: int
    evidence: tuple[str, ...]
    channels: tuple[str, ...]
    distinct_agents: int
    places: tuple[str, ...] = ()
    known_in_crm: bool = False
    loyalty_tier: str = "none"
    first_t: int = 0


@dataclass
class Preview:
    rule: str
    flags: list[Flag] = field(default_factory=list)
    alerts: list[PreviewAlert] = field(default_factory=list)

    def by_day(self) -> list[tuple[date, int, int]]:
        """(day, flagged events, alerts) for every day with either."""
        flagged: dict[date, int] = defaultdict(int)
        alerted: dict[date, int] = defaultdict(int)
        for f in self.flags:
            flagged[_day(f.t)] += 1
        for a in self.alerts:
            alerted[_day(a.t)] += 1
        return [(d, flagged[d], alerted[d]) for d in sorted(set(flagged) | set(alerted))]


def _day(seconds: int) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


# --------------------------------------------------------------------------- SQL pieces


def _q(v: Any) -> str:
    s = str(v).lower() if isinstance(v, bool) else str(v)
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _column(name: str) -> str:
    col = CONDITION_FIELDS[name]
    return "toString(channel)" if col == "channel" else col


def condition_sql(conditions: list[Condition] | Condition | None) -> str:
    """The conditions of a rule (processors/rules.py) as a WHERE expression over cem.timeline."""
    if not conditions:
        return "1"
    listed = conditions if isinstance(conditions, list) else [conditions]
    alternatives = []
    for cond in listed:
        tests = []
        for name, want in cond.items():
            negate = isinstance(want, dict)
            raw = want["not"] if isinstance(want, dict) else want
            values = raw if isinstance(raw, list) else [raw]
            quoted = ", ".join(_q(v) for v in values)
            if name == "fields":
                test = f"hasAny(fields, [{quoted}])"
                tests.append(f"NOT {test}" if negate else test)
            else:
                tests.append(f"{_column(name)} {'NOT IN' if negate else 'IN'} ({quoted})")
        alternatives.append("(" + " AND ".join(tests) + ")")
    return "(" + " OR ".join(alternatives) + ")"


def _key_sql(key: str | None) -> str:
    return "if(matter = 'other', '', matter)" if key == "matter" else "''"


def _range(start: int | None, end: int | None, lookback_s: int) -> str:
    out = []
    if start is not None:
        out.append(f"occurred_at >= toDateTime({max(0, start - lookback_s)}, 'UTC')")
    if end is not None:
        out.append(f"occurred_at < toDateTime({end}, 'UTC')")
    return " AND ".join(out) or "1"


def _t(x: str) -> str:
    return f"tupleElement({x}, 1)"


_SORT = "x -> (tupleElement(x, 1), tupleElement(x, 2), tupleElement(x, 3))"


def repeat_sql(rule: RepeatRule, db: str, start: int | None = None, end: int | None = None) -> str:
    w = duration_us(rule.window) // MICROS_PER_SECOND
    cooldown = duration_us(rule.cooldown) // MICROS_PER_SECOND  # the look-back also holds the alerts cooling down
    key_ok = "matter NOT IN ('', 'other')" if rule.key == "matter" else "1"
    return f"""
SELECT customer_id, k, tupleElement(ev[j], 3) AS event_id, tupleElement(ev[j], 2) AS channel, {_t("ev[j]")} AS ts,
    greatest(arrayFirstIndex(x -> {_t("x")} >= ts - {w}, ev), j - {rule.max_evidence} + 1) AS lo,
    j - lo + 1 AS n,
    arrayMap(x -> tupleElement(x, 3), arraySlice(ev, lo, n)) AS evidence,
    arrayMap(x -> tupleElement(x, 2), arraySlice(ev, lo, n)) AS channels,
    arrayMap(x -> tupleElement(x, 4), arraySlice(ev, lo, n)) AS agents,
    tupleElement(ev[j], 5) AS tier, {_t("ev[lo]")} AS first_t
FROM
(
    SELECT customer_id, {_key_sql(rule.key)} AS k,
        arraySort({_SORT},
                  groupArray((toUInt32(occurred_at), toString(channel), event_id, agent_id, loyalty_tier))) AS ev
    FROM {db}.timeline
    WHERE {condition_sql(rule.match)} AND {key_ok} AND {_range(start, end, w + cooldown)}
    GROUP BY customer_id, k
) AS per_key
ARRAY JOIN arrayEnumerate(ev) AS j
WHERE n >= {rule.threshold}
ORDER BY customer_id, k, ts, channel, event_id"""


def known_entry_sql(rule: KnownEntryRule, db: str, start: int | None = None, end: int | None = None) -> str:
    w = duration_us(rule.window) // MICROS_PER_SECOND
    e = rule.max_evidence
    only = f" AND f IN ({', '.join(_q(f) for f in rule.fields)})" if rule.fields else ""
    first = f"arrayFirstIndex(x -> {_t('x')} >= {_t('es[j]')} - {w}, es)"
    # a re-entry: the CRM held the field, or one of the field's previous entries in the
    # window (the newest max_evidence of them) was at another place
    prev_lo = f"greatest({first}, j - {e})"
    reentry = (
        f"arrayMap(j -> toUInt8(tupleElement(es[j], 5) OR arrayExists(x -> tupleElement(x, 4) != "
        f"tupleElement(es[j], 4), arraySlice(es, {prev_lo}, j - {prev_lo}))), arrayEnumerate(es))"
    )
    return f"""
SELECT customer_id, f, tupleElement(es[j], 3) AS event_id, tupleElement(es[j], 2) AS channel, {_t("es[j]")} AS ts,
    greatest(arrayFirstIndex(x -> {_t("x")} >= ts - {w}, es), j - {e} + 1) AS lo,
    arrayFilter((x, r) -> r = 1, arraySlice(es, lo, j - lo + 1), arraySlice(re, lo, j - lo + 1)) AS mine,
    arrayMap(x -> tupleElement(x, 3), mine) AS evidence,
    arrayMap(x -> tupleElement(x, 4), mine) AS places,
    tupleElement(es[j], 5) AS known, tupleElement(es[j], 6) AS tier, {_t("mine[1]")} AS first_t
FROM
(
    SELECT customer_id, f, es, {reentry} AS re
    FROM
    (
        SELECT customer_id, f,
            arraySort({_SORT}, groupArray((toUInt32(occurred_at), toString(channel), event_id, place,
                                           has(crm_known, f), loyalty_tier))) AS es
        FROM {db}.timeline
        ARRAY JOIN fields AS f
        WHERE {condition_sql(rule.match)}{only} AND {_range(start, end, 2 * w)}
        GROUP BY customer_id, f
    ) AS per_field
) AS marked
ARRAY JOIN arrayEnumerate(es) AS j
WHERE re[j] = 1
ORDER BY customer_id, f, ts, channel, event_id"""


def _compat(rule: SequenceRule, a: str, b: str) -> str:
    if rule.key is None:
        return "1"
    if rule.key_optional:
        return f"({a} = '' OR {b} = '' OR {a} = {b})"
    return f"({a} != '' AND {a} = {b})"


def sequence_sql(rule: SequenceRule, db: str, start: int | None = None, end: int | None = None) -> str:
    w = duration_us(rule.window) // MICROS_PER_SECOND
    cooldown = duration_us(rule.cooldown) // MICROS_PER_SECOND
    a, b = condition_sql(rule.first), condition_sql(rule.then)
    c = condition_sql(rule.without) if rule.without else "0"

    def k(x: str) -> str:
        return f"tupleElement({x}, 4)"

    def flag(x: str, n: int) -> str:
        return f"tupleElement({x}, {n})"

    # a first event is still pending at the then-event j when it is inside the window and no
    # then- or without-event between them shared its key (each uses it up, or cuts it off)
    cut_off = (
        f"arrayExists(x -> ({flag('x', 6)} OR {flag('x', 7)}) AND {_compat(rule, k('ev[i]'), k('x'))}, "
        f"arraySlice(ev, i + 1, j - i - 1))"
    )
    # candidates: the events inside the window before j (found from its start, so a long history
    # costs each then-event only its window)
    lo = f"arrayFirstIndex(x -> {_t('x')} >= ts - {w}, ev)"
    used = (
        f"arrayFilter(i -> {flag('ev[i]', 5)} AND "
        f"{_compat(rule, k('ev[i]'), k('ev[j]'))} AND NOT {cut_off}, arraySlice(arrayEnumerate(ev), {lo}, j - {lo}))"
    )
    return f"""
SELECT customer_id, tupleElement(ev[j], 3) AS event_id, tupleElement(ev[j], 2) AS channel, {_t("ev[j]")} AS ts,
    {used} AS used,
    arrayMap(i -> tupleElement(ev[i], 3), used) AS evidence,
    arrayMap(i -> tupleElement(ev[i], 2), used) AS channels,
    arrayMap(i -> tupleElement(ev[i], 8), used) AS agents,
    arrayMap(i -> {k("ev[i]")}, used) AS keys,
    {k("ev[j]")} AS k, tupleElement(ev[j], 8) AS agent, tupleElement(ev[j], 9) AS tier,
    {_t("ev[used[1]]")} AS first_t
FROM
(
    SELECT customer_id,
        arraySort({_SORT}, groupArray((toUInt32(occurred_at), toString(channel), event_id, {_key_sql(rule.key)},
                                       toUInt8({a}), toUInt8({b}), toUInt8({c}), agent_id, loyalty_tier))) AS ev
    FROM {db}.timeline
    WHERE ({a} OR {b} OR {c}) AND {_range(start, end, w + cooldown)}
    GROUP BY customer_id
) AS per_customer
ARRAY JOIN arrayEnumerate(ev) AS j
WHERE tupleElement(ev[j], 6) = 1 AND length(used) > 0
ORDER BY customer_id, ts, channel, event_id"""


def chain_sql(rule: ChainRule, db: str, contacts_window_s: int, start: int | None = None,
              end: int | None = None) -> str:  # fmt: skip
    legs = f"j >= {rule.legs}" if rule.legs is not None else "0"
    agents = (
        f"length(arrayDistinct(arrayFilter(a -> a != '', arrayMap(x -> tupleElement(x, 4), arraySlice(ev, 1, j))))) "
        f">= {rule.agents}"
        if rule.agents is not None
        else "0"
    )
    return f"""
SELECT customer_id, chain, tupleElement(ev[j], 3) AS event_id, tupleElement(ev[j], 2) AS channel,
    {_t("ev[j]")} AS ts, j AS n,
    arrayMap(x -> tupleElement(x, 3), arraySlice(ev, 1, j)) AS evidence,
    arrayMap(x -> tupleElement(x, 2), arraySlice(ev, 1, j)) AS channels,
    arrayMap(x -> tupleElement(x, 4), arraySlice(ev, 1, j)) AS agents,
    tupleElement(ev[1], 6) AS k, tupleElement(ev[j], 5) AS tier, {_t("ev[1]")} AS first_t
FROM
(
    SELECT customer_id, chain,
        arraySort({_SORT}, groupArray((toUInt32(occurred_at), toString(channel), event_id, agent_id, loyalty_tier,
                                       if(matter = 'other', '', matter)))) AS ev
    FROM {db}.timeline
    WHERE contact != '' AND chain != '' AND {_range(start, end, contacts_window_s)}
    GROUP BY customer_id, chain
) AS per_chain
ARRAY JOIN arrayEnumerate(ev) AS j
WHERE j >= 2 AND ({legs} OR {agents})
ORDER BY customer_id, ts, channel, event_id"""


def rule_sql(rule: Any, db: str, contacts_window_s: int, start: int | None = None, end: int | None = None) -> str:
    if isinstance(rule, RepeatRule):
        return repeat_sql(rule, db, start, end)
    if isinstance(rule, KnownEntryRule):
        return known_entry_sql(rule, db, start, end)
    if isinstance(rule, SequenceRule):
        return sequence_sql(rule, db, start, end)
    return chain_sql(rule, db, contacts_window_s, start, end)


# --------------------------------------------------------------------------- the rows, folded


def _cooling(last: dict[str, tuple[int, str]], subject: str, t: int, severity: str, cooldown_s: int) -> bool:
    """Whether the subject's last alert (within the cooldown, as severe or more) holds this one back."""
    previous = last.get(subject)
    return previous is not None and previous[0] > t - cooldown_s and _SEVERITY[severity] <= _SEVERITY[previous[1]]


def evaluate(rule: Any, detector: Detector, rows: list[tuple[Any, ...]]) -> Preview:
    """The preview of a rule from its SQL's rows (in their ORDER BY): flags, and the alerts
    left after cooldowns, with severities from the rule's own detector."""
    out = Preview(rule.name)
    name = rule.name
    if isinstance(rule, RepeatRule):
        cooldown = duration_us(rule.cooldown) // MICROS_PER_SECOND
        last: dict[tuple[str, str], tuple[int, str]] = {}
        for cid, k, eid, channel, ts, _lo, n, evidence, channels, agents, tier, first_t in rows:
            out.flags.append(Flag(cid, eid, channel, ts))
            severity = detector.severity(n, tier)
            held = last.get((cid, k))
            if cooldown and held is not None and held[0] > ts - cooldown and _SEVERITY[severity] <= _SEVERITY[held[1]]:
                continue
            if cooldown:
                last[(cid, k)] = (ts, severity)
            out.alerts.append(PreviewAlert(name, cid, k, eid, channel, ts, severity, n, tuple(evidence),
                                           tuple(sorted(set(channels))), len({a for a in agents if a}),
                                           loyalty_tier=tier, first_t=first_t))  # fmt: skip
    elif isinstance(rule, KnownEntryRule):
        window = duration_us(rule.window) // MICROS_PER_SECOND
        flagged: dict[tuple[str, str], Flag] = {}
        alerted: dict[tuple[str, str], int] = {}
        for cid, f, eid, channel, ts, _lo, _mine, evidence, places, known, tier, first_t in rows:
            flagged.setdefault((cid, eid), Flag(cid, eid, channel, ts))
            previous = alerted.get((cid, f))
            if len(evidence) < rule.threshold or (previous is not None and ts < previous + window):
                continue
            alerted[(cid, f)] = ts
            out.alerts.append(PreviewAlert(name, cid, f, eid, channel, ts, detector.severity(len(evidence), tier),
                                           len(evidence), tuple(dict.fromkeys(evidence)),
                                           tuple(sorted({p.split(":", 1)[0] for p in places})), 0,
                                           tuple(dict.fromkeys(places)), bool(known), tier, first_t))  # fmt: skip
        out.flags = sorted(flagged.values(), key=lambda x: (x.customer_id, x.t, x.channel, x.event_id))
    elif isinstance(rule, SequenceRule):
        cooldown = duration_us(rule.cooldown) // MICROS_PER_SECOND
        seq_last: dict[tuple[str, str], tuple[int, str]] = {}
        for cid, eid, channel, ts, _used, evidence, channels, agents, keys, k, agent, tier, first_t in rows:
            out.flags.append(Flag(cid, eid, channel, ts))
            subject = k or next((x for x in reversed(keys) if x), "")
            count = len(evidence) + 1
            severity = detector.severity(count, tier)
            held = seq_last.get((cid, subject))
            if cooldown and held is not None and held[0] > ts - cooldown and _SEVERITY[severity] <= _SEVERITY[held[1]]:
                continue
            if cooldown:
                seq_last[(cid, subject)] = (ts, severity)
            out.alerts.append(PreviewAlert(name, cid, subject, eid, channel, ts, severity, count,
                                           (*evidence, eid), tuple(sorted({*channels, channel})),
                                           len({a for a in (*agents, agent) if a}), loyalty_tier=tier,
                                           first_t=first_t))  # fmt: skip
    else:
        seen: set[tuple[str, str]] = set()
        for cid, chain, eid, channel, ts, n, evidence, channels, agents, k, tier, first_t in rows:
            out.flags.append(Flag(cid, eid, channel, ts))
            if (cid, chain) in seen:
                continue
            seen.add((cid, chain))
            out.alerts.append(PreviewAlert(name, cid, k, eid, channel, ts, detector.severity(n, tier), n,
                                           tuple(evidence), tuple(sorted(set(channels))),
                                           len({a for a in agents if a}), loyalty_tier=tier,
                                           first_t=first_t))  # fmt: skip
    return out


def preview(
    client: Executor, rule: Any, detector: Detector, db: str, contacts_window_s: int,
    start: datetime | None = None, end: datetime | None = None,
) -> Preview:  # fmt: skip
    """What the rule flags and alerts over cem.timeline, triggers between start and end."""
    s = int(start.timestamp()) if start is not None else None
    e = int(end.timestamp()) if end is not None else None
    rows = client.execute(rule_sql(rule, db, contacts_window_s, s, e))  # bounded by the client's max_execution_time
    result = evaluate(rule, detector, [tuple(r) for r in rows])
    if s is not None:  # the rows before `start` were the look-back
        result.flags = [f for f in result.flags if f.t >= s]
        result.alerts = [a for a in result.alerts if a.t >= s]
    return result
