"""Property: for any arrival order of the same events, the final timeline flags and the final
(open) alerts equal those of processing in event-time order (contract v1, "Order, lateness
and corrections"), provided no event is later than the allowed lateness."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.engine.state_store import decode, encode
from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import ReEntryRules, RepeatContactRules, Rules
from processors.normalize import to_touch
from processors.rules import parse_rule_file
from processors.templates import pack_states, unpack_states
from schemas.touchpoints import BookingEvent, ContactEvent, WebEvent

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MATTERS = ("baggage", "refund")
FIELDS = ("passport_number", "date_of_birth", "address")


@st.composite
def events(
    draw: st.DrawFn, span_minutes: int, booking_types: tuple[str, ...] = ("passenger_details",)
) -> list[tuple[str, Any]]:
    n = draw(st.integers(1, 14))
    out: list[tuple[str, Any]] = []
    for i in range(n):
        at = T0 + timedelta(minutes=draw(st.integers(0, span_minutes)))
        kind = draw(st.sampled_from(("call", "web_contact", "form", "booking")))
        fields = draw(st.lists(st.sampled_from(FIELDS), max_size=2))
        if kind == "call":
            prev = draw(st.one_of(st.none(), st.integers(0, max(0, n - 1)).map(lambda j: f"e{j}")))
            out.append(
                (
                    "call_center",
                    ContactEvent(
                        event_id=f"e{i}",
                        occurred_at=at,
                        type="call",
                        customer_id="C",
                        reason=draw(st.sampled_from(MATTERS)),
                        agent_id=draw(st.sampled_from(("A1", "A2", "A3"))),
                        queue=draw(st.sampled_from(("q1", "q2"))),
                        duration_s=draw(st.integers(0, 1200)),
                        outcome=draw(st.sampled_from(("resolved", "unresolved", "transferred"))),
                        previous_contact_id=prev,
                        fields=fields,
                    ),
                )
            )
        elif kind == "web_contact":
            out.append(
                (
                    "web",
                    WebEvent(
                        event_id=f"e{i}",
                        occurred_at=at,
                        type=draw(st.sampled_from(("contact_form", "chat"))),
                        customer_id="C",
                        reason=draw(st.sampled_from((*MATTERS, None))),
                    ),
                )
            )
        elif kind == "form":
            form = draw(st.sampled_from(("f1", "f2")))
            out.append(
                (
                    "web",
                    WebEvent(
                        event_id=f"e{i}", occurred_at=at, type="form_submit", customer_id="C", form=form, fields=fields
                    ),
                )
            )
        else:
            out.append(
                (
                    "booking",
                    BookingEvent(
                        event_id=f"e{i}",
                        occurred_at=at,
                        type=draw(st.sampled_from(booking_types)),
                        customer_id="C",
                        step=draw(st.sampled_from(("s1", "s2"))),
                        fields=fields,
                    ),
                )
            )
    return out


def final_outputs(
    evs: list[tuple[str, Any]], rules: Rules, known: tuple[str, ...], stored: frozenset[int] = frozenset()
) -> tuple[Any, Any]:
    """`stored`: before which events the state is written to disk and read back (the worker's
    decoded cache let it go)."""
    state = CustomerState("C")
    apply_profile(state, Profile(1, "gold" if "address" in known else "silver", known))
    rows: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    for i, (channel, ev) in enumerate(evs):
        if i in stored:
            state = decode(encode(state))
        state, verdict = judge(state, to_touch(channel, ev, "C", "customer_id"), rules, now_us=0)
        for r in verdict.rows:
            rows[r.touch.uid] = (r.friction, r.reentered)
        for a in verdict.alerts:
            alerts[a.alert_id] = (a.status, a.body)
    return rows, {k: v[1] for k, v in alerts.items() if v[0] == "open"}


def in_event_time_order(evs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return sorted(evs, key=lambda ce: (ce[1].occurred_at, ce[0], ce[1].event_id))


SMALL = Rules(
    repeat_contact=RepeatContactRules(window_days=2, transfer_grace_minutes=15),
    re_entry=ReEntryRules(window_days=3, alert_threshold=2),
    allowed_lateness_days=365,  # every arrival order below is within the allowed lateness
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    evs=events(span_minutes=12 * 24 * 60),
    known=st.lists(st.sampled_from(FIELDS), max_size=2, unique=True),
    data=st.data(),
)
def test_any_arrival_order_gives_event_time_results(evs: list[tuple[str, Any]], known: list[str], data: Any) -> None:
    order = data.draw(st.permutations(evs))
    assert final_outputs(order, SMALL, tuple(known)) == final_outputs(in_event_time_order(evs), SMALL, tuple(known))


@settings(max_examples=150, deadline=None)
@given(evs=events(span_minutes=6 * 24 * 60), data=st.data())
def test_default_rules_within_default_lateness(evs: list[tuple[str, Any]], data: Any) -> None:
    # events spread over 6 days: every arrival order is within the default 7 days of lateness
    order = data.draw(st.permutations(evs))
    rules = Rules()
    assert final_outputs(order, rules, ("passport_number",)) == final_outputs(
        in_event_time_order(evs), rules, ("passport_number",)
    )


@settings(max_examples=100, deadline=None)
@given(evs=events(span_minutes=12 * 24 * 60), data=st.data())
def test_duplicates_change_nothing(evs: list[tuple[str, Any]], data: Any) -> None:
    doubled = data.draw(st.permutations(evs + evs))
    assert final_outputs(doubled, SMALL, ()) == final_outputs(in_event_time_order(evs), SMALL, ())


# --- any rule file: generated rules of every template -------------------------------------

VALUES: dict[str, tuple[str, ...]] = {
    "channel": ("web", "call_center", "booking"),
    "type": ("call", "contact_form", "chat", "form_submit", "passenger_details", "payment_failed", "booking_created"),
    "contact": ("new", "continuation"),
    "matter": MATTERS,
    "outcome": ("resolved", "unresolved", "transferred"),
    "fields": FIELDS,
    "place": ("web:f1", "web:f2", "booking:s1", "call_center:q1"),
}
BOOKING_TYPES = ("passenger_details", "payment_failed", "booking_created")


@st.composite
def condition(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=2, unique=True)):
        values = draw(st.lists(st.sampled_from(VALUES[name]), min_size=1, max_size=2, unique=True))
        want: Any = values[0] if len(values) == 1 else values
        out[name] = {"not": want} if draw(st.booleans()) and name != "fields" else want
    return out


def conditions(min_size: int = 0) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(condition(), min_size=min_size, max_size=2)


def window() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(1, 72).map(lambda h: f"{h}h"), st.integers(1, 3).map(lambda d: f"{d}d"))


@st.composite
def rule(draw: st.DrawFn, i: int) -> dict[str, Any]:
    template = draw(st.sampled_from(("repeat", "known_entry", "sequence", "chain")))
    base: dict[str, Any] = {"name": f"r{i}", "template": template, "summary": "{who}: {count} {subject}.",
                            "severity": {"high_at": draw(st.sampled_from((None, 3))), "vip": "high"}}  # fmt: skip
    cooldown = draw(st.sampled_from(("0m", "30m", "1h")))
    if template == "repeat":
        threshold = draw(st.integers(2, 3))
        return base | {"match": draw(conditions()), "key": draw(st.sampled_from((None, "matter"))),
                       "window": draw(window()), "threshold": threshold, "cooldown": cooldown,
                       "max_evidence": draw(st.integers(threshold, 4))}  # fmt: skip
    if template == "known_entry":
        return base | {"match": draw(conditions()), "window": draw(window()), "threshold": draw(st.integers(1, 3)),
                       "max_evidence": draw(st.integers(2, 4)),
                       "fields": draw(st.one_of(st.none(), st.lists(st.sampled_from(FIELDS), min_size=1,
                                                                    unique=True)))}  # fmt: skip
    if template == "sequence":
        key = draw(st.sampled_from((None, "matter")))
        return base | {"first": draw(conditions(1)), "then": draw(conditions(1)),
                       "without": draw(st.one_of(st.none(), conditions(1))), "window": draw(window()), "key": key,
                       "key_optional": key is not None and draw(st.booleans()), "cooldown": cooldown,
                       "max_evidence": draw(st.integers(1, 3))}  # fmt: skip
    legs = draw(st.sampled_from((None, 2, 3)))
    return base | {"legs": legs, "agents": 2 if legs is None else draw(st.sampled_from((None, 2, 3)))}


@st.composite
def rule_files(draw: st.DrawFn) -> Rules:
    n = draw(st.integers(1, 4))
    data = {"rules": [draw(rule(i)) for i in range(n)]}  # windows of 1h..3d: cooldowns (<= 1h) are valid
    return Rules(
        repeat_contact=RepeatContactRules(window_days=2, transfer_grace_minutes=15),
        re_entry=ReEntryRules(window_days=3),
        friction=tuple(parse_rule_file(data).rules),
        allowed_lateness_days=365,
    )


#: events, a generated rule file, the fields the CRM knows, and data for further draws
RULE_FILE_CASES = given(
    evs=events(span_minutes=6 * 24 * 60, booking_types=BOOKING_TYPES),
    rules=rule_files(),
    known=st.lists(st.sampled_from(FIELDS), max_size=2, unique=True),
    data=st.data(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@RULE_FILE_CASES
def test_any_rule_file_gives_event_time_results_in_any_arrival_order(
    evs: list[tuple[str, Any]], rules: Rules, known: list[str], data: Any
) -> None:
    """Late events rewrite flags and retract alerts, for every template and any parameters."""
    order = data.draw(st.permutations(evs))
    assert final_outputs(order, rules, tuple(known)) == final_outputs(in_event_time_order(evs), rules, tuple(known))


def test_an_alert_raised_again_after_its_retraction_has_the_context_of_now() -> None:
    """A late event can retract an alert, later events bring earlier contacts into its
    context, and a last late event raise it again: its context is that of event-time order,
    not the one it had before the retraction (found by the property test above)."""

    def call(i: int, at: datetime) -> tuple[str, Any]:
        ev = ContactEvent(event_id=f"e{i}", occurred_at=at, type="call", customer_id="C", reason="baggage",
                          agent_id="A1", queue="q1", outcome="resolved")  # fmt: skip
        return ("call_center", ev)

    evs = [
        call(0, T0 + timedelta(days=1, minutes=5)),
        ("web", WebEvent(event_id="e1", occurred_at=T0 + timedelta(days=1, hours=1, minutes=4), type="contact_form",
                         customer_id="C", reason="baggage")),  # fmt: skip
        call(2, T0 + timedelta(hours=8, minutes=51)),  # takes e0 from e1 (the e0 → e1 alert is retracted)
        call(3, T0),
        ("booking", BookingEvent(event_id="e4", occurred_at=T0 + timedelta(hours=9, minutes=2),
                                 type="passenger_details", customer_id="C", step="s1")),  # gives e0 back to e1
    ]  # fmt: skip
    rules = parse_rule_file({"rules": [{
        "name": "r0", "template": "sequence", "summary": "{who}: {count} {subject}.",
        "first": [{"channel": ["web", "call_center"]}], "then": [{"channel": "web"}, {"channel": {"not": "web"}}],
        "window": "18h", "cooldown": "1h", "max_evidence": 1,
    }]}).rules  # fmt: skip
    rule_file = dataclasses.replace(SMALL, friction=tuple(rules))
    _, arrived = final_outputs(evs, rule_file, ())
    _, in_time = final_outputs(in_event_time_order(evs), rule_file, ())
    e1 = next(a for a in arrived.values() if a["trigger"] == "e1")
    told = [c["event_id"] for c in e1["context"]["previous_contacts"]]
    assert told == ["e3", "e2", "e0"]
    assert arrived == in_time


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@RULE_FILE_CASES
def test_a_state_read_back_from_disk_continues_as_if_it_had_stayed_in_memory(
    evs: list[tuple[str, Any]], rules: Rules, known: list[str], data: Any
) -> None:
    """A state read back from the disk has lost what the judge keeps in memory only (each
    event's detector states, the ids seen): read back at any moments, in any arrival order,
    under any rules, it gives the results of a state never let go."""
    order = data.draw(st.permutations(evs))
    moments = frozenset(data.draw(st.lists(st.integers(0, len(evs)), unique=True)))
    assert final_outputs(order, rules, tuple(known), moments) == final_outputs(order, rules, tuple(known))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@RULE_FILE_CASES
def test_the_detectors_states_read_back_are_the_states_written(
    evs: list[tuple[str, Any]], rules: Rules, known: list[str], data: Any
) -> None:
    """The fold states stored with a customer (so that an event in order is judged without
    decoding their history) read back equal, tuples as tuples, after any event of any rules."""
    state = CustomerState("C")
    apply_profile(state, Profile(1, "gold", tuple(known)))
    for channel, ev in data.draw(st.permutations(evs)):
        state, _ = judge(state, to_touch(channel, ev, "C", "customer_id"), rules, now_us=0)
        for stored in state.events:
            if stored.after is not None:
                plain = orjson.loads(orjson.dumps(pack_states(stored.after, rules.detectors)))
                assert unpack_states(plain, rules.detectors) == stored.after


def verdicts(
    evs: list[tuple[str, Any]], anonymous: list[str], rules: Rules, known: tuple[str, ...], stored: frozenset[int]
) -> tuple[list[Any], CustomerState]:
    """Every judgement, and the state at the end; `stored` as in `final_outputs`. (Not whether
    a cap bit on the way: a replay that goes further than needed may meet one again.)"""
    state = CustomerState("C")
    apply_profile(state, Profile(1, "gold", known))
    out = []
    for i, ((channel, ev), anon) in enumerate(zip(evs, anonymous, strict=True)):
        if i in stored:
            state = decode(encode(state))
        touch = to_touch(channel, ev, "C", "customer_id")
        touch.anonymous = anon
        state, verdict = judge(state, touch, rules, now_us=0)
        out.append(dataclasses.replace(verdict, capped=False))
    return out, state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@RULE_FILE_CASES
def test_a_state_read_back_prunes_and_unlinks_as_one_kept_in_memory(
    evs: list[tuple[str, Any]], rules: Rules, known: list[str], data: Any
) -> None:
    """With pruning by the horizon and by the per-customer cap, anonymous ids let go,
    duplicates and events later than the allowed lateness, in any arrival order: a state read
    back at any moments gives every judgement of one never let go, and ends equal to it. (It
    replays its events from the fold states stored with it, so what pruned events left in
    the detectors' states, such as a chain's first contact, is not lost.)"""
    capped = data.draw(st.booleans())
    lateness = data.draw(st.integers(0, 2))
    rules = dataclasses.replace(
        rules, max_events_per_customer=data.draw(st.integers(1, 6)) if capped else 2000, allowed_lateness_days=lateness
    )
    sent = evs + evs[: data.draw(st.integers(0, 2))]  # a few sent twice
    order = data.draw(st.permutations(sent))
    anonymous = [data.draw(st.sampled_from(("", "a1", "a2"))) for _ in order]
    moments = frozenset(data.draw(st.lists(st.integers(0, len(order)), unique=True)))
    assert verdicts(order, anonymous, rules, tuple(known), moments) == verdicts(
        order, anonymous, rules, tuple(known), frozenset()
    )


def test_generated_rule_files_flag_and_alert() -> None:
    """The property above is not vacuous: generated rules of every template flag events and raise alerts."""
    seen: dict[str, int] = {}

    # deterministic, and events within a day: transfer chains need contacts minutes apart
    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(evs=events(span_minutes=24 * 60, booking_types=BOOKING_TYPES), rules=rule_files())
    def count(evs: list[tuple[str, Any]], rules: Rules) -> None:
        rows, alerts = final_outputs(in_event_time_order(evs), rules, ())
        templates = {d.name: d.template for d in rules.detectors}
        for friction, _ in rows.values():
            for name in friction:
                seen[templates[name]] = seen.get(templates[name], 0) + 1
        for body in alerts.values():
            seen[templates[body["kind"]] + " alert"] = seen.get(templates[body["kind"]] + " alert", 0) + 1

    count()
    for template in ("repeat", "known_entry", "sequence", "chain"):
        assert seen.get(template, 0) > 0 and seen.get(template + " alert", 0) > 0, seen
