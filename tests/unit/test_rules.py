"""The detection rules of contract v1, one edge at a time, through the pure judge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import Rules, Touch
from processors.normalize import to_micros

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)


def contact(
    eid: str, at: timedelta, matter: str = "baggage", *, outcome: str = "unresolved", prev: str = "", **kw: Any
) -> Touch:
    return Touch(
        customer_id="C",
        channel=kw.pop("channel", "call_center"),
        event_id=eid,
        t=to_micros(T0 + at),
        type="call",
        matter=matter,
        is_contact=True,
        outcome=outcome,
        duration_s=kw.pop("duration_s", 600),
        previous_contact_id=prev,
        agent_id=kw.pop("agent_id", f"A-{eid}"),
        place="call_center:q",
        **kw,
    )


def entry(eid: str, at: timedelta, place: str, *fields: str) -> Touch:
    return Touch(customer_id="C", channel="web", event_id=eid, t=to_micros(T0 + at), type="form_submit",
                 place=place, fields=fields)  # fmt: skip


def run(touches: list[Touch], tier: str = "silver", known: tuple[str, ...] = ()) -> tuple[Any, Any]:
    state = CustomerState("C")
    apply_profile(state, Profile(1, tier, known))
    rows: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    for t in touches:
        state, verdict = judge(state, t, Rules(), now_us=0)
        rows.update({r.touch.event_id: r.friction for r in verdict.rows})
        alerts.update({a.alert_id: {"status": a.status, **a.body} for a in verdict.alerts})
    return rows, [a for a in alerts.values() if a["status"] == "open"]


H = timedelta(hours=1)
D = timedelta(days=1)
M = timedelta(minutes=1)


def test_second_contact_within_seven_days_is_a_repeat_with_medium_severity() -> None:
    rows, alerts = run([contact("c1", 0 * D), contact("c2", 6 * D)])
    assert rows == {"c1": (), "c2": ("repeat_contact",)}
    assert [(a["count"], a["severity"], a["distinct_agents"], a["evidence"]) for a in alerts] == [
        (2, "medium", 2, ["c1", "c2"])
    ]


def test_window_is_seven_days_inclusive() -> None:
    assert run([contact("c1", 0 * D), contact("c2", 7 * D)])[0]["c2"] == ("repeat_contact",)
    assert run([contact("c1", 0 * D), contact("c2", 7 * D + timedelta(seconds=1))])[0]["c2"] == ()


def test_third_contact_is_high_and_vip_tiers_are_high_from_the_second() -> None:
    _, alerts = run([contact("c1", 0 * D), contact("c2", D), contact("c3", 2 * D)])
    assert sorted((a["count"], a["severity"]) for a in alerts) == [(2, "medium"), (3, "high")]
    _, alerts = run([contact("c1", 0 * D), contact("c2", D)], tier="platinum")
    assert [a["severity"] for a in alerts] == ["high"]


def test_other_matters_and_contacts_without_reason_are_not_repeats() -> None:
    rows, alerts = run([contact("c1", 0 * D), contact("c2", D, "refund"), contact("c3", 2 * D, "")])
    assert alerts == [] and set(rows.values()) == {()}


def test_transfer_within_fifteen_minutes_continues_the_contact() -> None:
    # c1 lasts 10 minutes and is transferred; c2 starts 15 minutes after it ended
    legs = [contact("c1", 0 * D, outcome="transferred"), contact("c2", 25 * M)]
    assert run(legs)[1] == []
    legs = [contact("c1", 0 * D, outcome="transferred"), contact("c2", 26 * M)]
    assert len(run(legs)[1]) == 1
    # not transferred: a call 5 minutes later is a new contact
    assert len(run([contact("c1", 0 * D, outcome="resolved"), contact("c2", 15 * M)])[1]) == 1


def test_previous_contact_id_continues_even_days_later() -> None:
    rows, alerts = run([contact("c1", 0 * D), contact("c2", 2 * D, prev="c1")])
    assert alerts == [] and rows["c2"] == ()
    # naming an unknown contact does not make a continuation
    assert len(run([contact("c1", 0 * D), contact("c2", 2 * D, prev="zz")])[1]) == 1


def test_continuation_arriving_late_retracts_the_alert() -> None:
    state = CustomerState("C")
    rules = Rules()
    c1, c2 = contact("c1", 0 * D, outcome="transferred"), contact("c2", 20 * M)
    state, first = judge(state, c2, rules, 0)
    state, _ = judge(state, contact("c0", -3 * D), rules, 0)  # an older contact on the matter
    assert [a.status for a in _.alerts] == ["open"]  # c2 now repeats c0
    state, late = judge(state, c1, rules, 0)  # c1 arrives: c2 continues it, c1 repeats c0
    statuses = sorted((a.body["trigger"], a.status) for a in late.alerts)
    assert statuses == [("c1", "open"), ("c2", "retracted")]
    assert [(r.touch.event_id, r.friction, r.revision) for r in late.rows] == [
        ("c1", ("repeat_contact",), 1),
        ("c2", (), 3),  # 1: unflagged, 2: repeat of c0, 3: continuation of c1
    ]


def test_written_state_follows_flags_changed_by_a_late_event() -> None:
    # a snapshot written after a late event holds the rewritten flags
    state, rules = CustomerState("C"), Rules()
    state, _ = judge(state, contact("c2", 2 * D), rules, 0)
    assert state.to_snapshot()[3][0][1] == ()  # no friction yet
    state, late = judge(state, contact("c1", 0 * D), rules, 0)  # c2 now repeats c1
    assert [(r.touch.event_id, r.revision) for r in late.rows] == [("c1", 1), ("c2", 2)]
    back = CustomerState.from_snapshot(orjson.loads(orjson.dumps(state.to_snapshot())))
    assert back == state
    assert [(s.touch.event_id, s.friction, s.revision) for s in back.events] == [
        ("c1", (), 1),
        ("c2", ("repeat_contact",), 2),
    ]


def test_re_entry_needs_crm_knowledge_or_another_place() -> None:
    rows, _ = run([entry("w1", 0 * D, "web:a", "address"), entry("w2", D, "web:a", "address")])
    assert rows == {"w1": (), "w2": ()}
    rows, _ = run([entry("w1", 0 * D, "web:a", "address"), entry("w2", D, "web:b", "address")])
    assert rows == {"w1": (), "w2": ("re_entry",)}
    rows, _ = run([entry("w1", 0 * D, "web:a", "address")], known=("address",))
    assert rows == {"w1": ("re_entry",)}


def test_re_entry_alert_at_three_then_cooldown_of_one_window() -> None:
    places = ["web:a", "web:b"]
    touches = [entry(f"w{i}", i * D, places[i % 2], "passport_number") for i in range(8)]
    rows, alerts = run(touches, known=("passport_number",))
    assert [(a["trigger"], a["count"], a["known_in_crm"], a["severity"]) for a in alerts] == [("w2", 3, True, "medium")]
    later = [*touches, entry("w40", 40 * D, "web:a", "passport_number")]
    later += [entry("w41", 41 * D, "web:b", "passport_number"), entry("w42", 42 * D, "web:a", "passport_number")]
    _, alerts = run(later, known=("passport_number",), tier="gold")
    assert [(a["trigger"], a["severity"]) for a in alerts] == [("w2", "high"), ("w42", "high")]


def test_events_later_than_allowed_lateness_are_counted_and_still_land() -> None:
    state = CustomerState("C")
    state, _ = judge(state, contact("c1", 20 * D), Rules(), 0)
    state, verdict = judge(state, contact("c0", 10 * D), Rules(), 0)
    assert verdict.late and [r.touch.event_id for r in verdict.rows] == ["c0"]


def test_old_events_are_pruned_beyond_the_horizon() -> None:
    state = CustomerState("C")
    for i in range(60):
        state, _ = judge(state, contact(f"c{i}", i * D, matter=f"m{i}"), Rules(), 0)
    assert len(state.events) == 38  # window 30 + lateness 7 days, both ends included
    assert CustomerState.from_snapshot(orjson.loads(orjson.dumps(state.to_snapshot()))) == state


def test_older_or_equal_profile_versions_are_ignored() -> None:
    state = CustomerState("C")
    state, ok = apply_profile(state, Profile(3, "gold", ("name",)))
    assert ok
    state, ok = apply_profile(state, Profile(3, "silver", ()))
    assert not ok and state.profile is not None and state.profile.loyalty_tier == "gold"
    state, ok = apply_profile(state, Profile(4, "silver", ()))
    assert ok and state.profile is not None and state.profile.loyalty_tier == "silver"


def test_summary_wording_for_agents() -> None:
    one_agent = [contact("c1", 0 * D, agent_id="A-1"), contact("c2", D, agent_id="A-1")]
    _, alerts = run(one_agent)
    assert (
        alerts[0]["summary"]
        == "Silver member C contacted us 2 times in 1 day about baggage (via call_center), with one agent."
    )
    _, alerts = run([contact("c1", 0 * D), contact("c2", 2 * H)], tier="none")
    assert alerts[0]["summary"].startswith("Customer C contacted us 2 times within a day")
    assert alerts[0]["summary"].endswith("each time with a different agent.")


def test_an_event_id_is_unique_per_channel_only_and_duplicates_are_caught_after_pruning() -> None:
    """The duplicate check keeps event ids without their channel: the same id on two
    channels is two touchpoints, and pruning one of them must not forget the other."""
    rules, now = Rules(), to_micros(T0 + 90 * D)
    web = entry("e1", 0 * D, "web:profile", "address")
    call = contact("e1", 20 * D)
    state = CustomerState("C")
    state, first = judge(state, web, rules, now)
    state, second = judge(state, call, rules, now)
    assert not first.duplicate and not second.duplicate and len(state.events) == 2
    assert judge(state, web, rules, now)[1].duplicate and judge(state, call, rules, now)[1].duplicate
    # past the horizon, the web event falls out of the kept history; the call does not
    horizon_days = rules.horizon_us // (86_400 * 1_000_000)
    state, _ = judge(state, contact("c9", (horizon_days + 5) * D), rules, now)
    assert [s.touch.event_id for s in state.events] == ["e1", "c9"]
    assert judge(state, call, rules, now)[1].duplicate
    state, again = judge(state, contact("e1", 20 * D, channel="web"), rules, now)
    assert not again.duplicate  # a web "e1" inside the kept history: a new touchpoint


def test_a_contacts_matter_is_a_name_of_the_vocabulary_or_other() -> None:
    """A reason is free text a customer or agent typed: only names of the vocabulary reach the
    timeline and the alerts, and `other` is never judged as a repeat."""
    from processors.normalize import matter_of

    vocabulary = frozenset({"baggage_allowance", "refund_status"})
    assert matter_of(" Baggage Allowance ", vocabulary) == "baggage_allowance"
    assert matter_of("refund-status", vocabulary) == "refund_status"
    assert matter_of("my email is ana@example.com, call me", vocabulary) == "other"
    rows, alerts = run([contact("c1", 0 * D, "other"), contact("c2", D, "other")])
    assert not alerts and not any(rows.values())
