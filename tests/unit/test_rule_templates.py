"""The default file's new rules (failed_self_service, abandoned_booking, passed_around), one
edge at a time, through the pure judge with the default rule file."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import Touch
from processors.normalize import to_micros
from tests.scenario import DEFAULT_RULES
from tests.unit.test_rules import T0, contact

H = timedelta(hours=1)
M = timedelta(minutes=1)


def web(eid: str, at: timedelta, type_: str = "chat", matter: str = "") -> Touch:
    return Touch(customer_id="C", channel="web", event_id=eid, t=to_micros(T0 + at), type=type_, matter=matter,
                 is_contact=type_ in ("chat", "contact_form"), place=f"web:{type_}")  # fmt: skip


def booking(eid: str, at: timedelta, type_: str) -> Touch:
    return Touch(customer_id="C", channel="booking", event_id=eid, t=to_micros(T0 + at), type=type_,
                 place=f"booking:{type_}")  # fmt: skip


def run(touches: list[Touch], tier: str = "silver") -> tuple[dict[str, tuple[str, ...]], list[dict[str, Any]]]:
    state = CustomerState("C")
    apply_profile(state, Profile(1, tier, ()))
    rows: dict[str, tuple[str, ...]] = {}
    alerts: dict[str, dict[str, Any]] = {}
    for t in touches:
        state, verdict = judge(state, t, DEFAULT_RULES, now_us=0)
        rows.update({r.touch.event_id: r.friction for r in verdict.rows})
        alerts.update({a.alert_id: {"status": a.status, **a.body} for a in verdict.alerts})
    return rows, [a for a in alerts.values() if a["status"] == "open"]


def kinds(alerts: list[dict[str, Any]], kind: str) -> list[tuple[str, list[str]]]:
    return sorted((a["trigger"], a["evidence"]) for a in alerts if a["kind"] == kind)


def test_failed_self_service_a_chat_then_a_call_on_the_same_matter_within_a_day() -> None:
    rows, alerts = run([web("w1", 0 * H, "chat", "refund"), contact("c1", 3 * H, "refund")])
    assert rows["c1"] == ("repeat_contact", "failed_self_service")  # a repeat on the matter as well
    assert kinds(alerts, "failed_self_service") == [("c1", ["w1", "c1"])]
    [a] = [a for a in alerts if a["kind"] == "failed_self_service"]
    assert (a["matter"], a["severity"], a["rule_version"]) == ("refund", "medium", 1)
    assert a["summary"] == (
        "Silver member C tried our digital channels first and still had to call us within a day (about refund)."
    )
    # another matter, more than a day later, or an email: none
    assert not kinds(
        run([web("w1", 0 * H, "chat", "refund"), contact("c1", 3 * H, "baggage")])[1], "failed_self_service"
    )
    assert not kinds(
        run([web("w1", 0 * H, "chat", "refund"), contact("c1", 25 * H, "refund")])[1], "failed_self_service"
    )


def test_failed_self_service_a_failed_payment_has_no_matter_and_matches_any_call() -> None:
    _, alerts = run([booking("b1", 0 * H, "payment_failed"), contact("c1", 2 * H, "payment")], tier="gold")
    assert [(a["trigger"], a["severity"]) for a in alerts if a["kind"] == "failed_self_service"] == [("c1", "high")]


def test_abandoned_booking_details_then_a_contact_without_a_booking_in_between() -> None:
    rows, alerts = run([booking("b1", 0 * H, "passenger_details"), booking("b2", M, "payment_failed"),
                        web("w1", 5 * H, "chat", "payment")])  # fmt: skip
    assert rows["w1"] == ("abandoned_booking",)
    assert kinds(alerts, "abandoned_booking") == [("w1", ["b1", "b2", "w1"])]
    booked = [booking("b1", 0 * H, "passenger_details"), booking("b2", H, "booking_created"), web("w1", 5 * H, "chat")]
    assert not kinds(run(booked)[1], "abandoned_booking")


def test_abandoned_booking_a_late_booking_created_retracts_the_alert() -> None:
    state = CustomerState("C")
    rules = DEFAULT_RULES
    state, _ = judge(state, booking("b1", 0 * H, "passenger_details"), rules, 0)
    state, first = judge(state, web("w1", 5 * H, "chat"), rules, 0)
    assert [a.body["kind"] for a in first.alerts] == ["abandoned_booking"]
    state, late = judge(state, booking("b2", H, "booking_created"), rules, 0)
    assert [(a.body["kind"], a.status) for a in late.alerts] == [("abandoned_booking", "retracted")]
    assert [(r.touch.event_id, r.friction) for r in late.rows] == [("b2", ()), ("w1", ())]


def test_passed_around_a_contact_of_three_legs_and_three_agents() -> None:
    legs = [
        contact("c1", 0 * M, outcome="transferred", duration_s=60),
        contact("c2", 2 * M, outcome="transferred", prev="c1", duration_s=60),
        contact("c3", 4 * M, prev="c2"),
    ]
    rows, alerts = run(legs)
    assert (rows["c1"], rows["c2"], rows["c3"]) == ((), (), ("passed_around",))
    [a] = [a for a in alerts if a["kind"] == "passed_around"]
    assert (a["trigger"], a["evidence"], a["count"], a["distinct_agents"], a["matter"]) == (
        "c3",
        ["c1", "c2", "c3"],
        3,
        3,
        "baggage",
    )
    # legs arriving in any order give the same
    assert run([legs[2], legs[0], legs[1]]) == (rows, alerts)
    # two legs are not passed around, nor a new contact on the same matter
    assert not kinds(run(legs[:2])[1], "passed_around")
    assert not kinds(run([*legs[:2], contact("c3", 2 * H)])[1], "passed_around")


def test_a_snapshot_round_trips_the_chain_and_reads_states_written_before_it() -> None:
    import orjson

    legs = [
        contact("c1", 0 * M, outcome="transferred", duration_s=60),
        contact("c2", 2 * M, outcome="transferred", prev="c1", duration_s=60),
    ]
    state = CustomerState("C")
    for t in legs:
        state, _ = judge(state, t, DEFAULT_RULES, 0)
    assert [s.chain for s in state.events] == ["c1", "c1"]
    snap = orjson.loads(orjson.dumps(state.to_snapshot()))
    assert CustomerState.from_snapshot(snap) == state
    # a state written before chains were kept: events of five items
    old = [*snap[:3], [e[:5] for e in snap[3]], snap[4]]
    back = CustomerState.from_snapshot(old)
    assert [s.chain for s in back.events] == ["", ""]
    back, verdict = judge(back, contact("c3", 4 * M, prev="c2"), DEFAULT_RULES, 0)
    state, same = judge(state, contact("c3", 4 * M, prev="c2"), DEFAULT_RULES, 0)
    assert [r.friction for r in verdict.rows] == [r.friction for r in same.rows] == [("passed_around",)]
    assert [a.alert_id for a in verdict.alerts] == [a.alert_id for a in same.alerts]
