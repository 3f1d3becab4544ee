"""Property: for any arrival order of the same events, the final timeline flags and the final
(open) alerts equal those of processing in event-time order (contract v1, "Order, lateness
and corrections"), provided no event is later than the allowed lateness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.judge import CustomerState, Profile, apply_profile, judge
from processors.model import ReEntryRules, RepeatContactRules, Rules
from processors.normalize import to_touch
from schemas.touchpoints import BookingEvent, ContactEvent, WebEvent

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MATTERS = ("baggage", "refund")
FIELDS = ("passport_number", "date_of_birth", "address")


@st.composite
def events(draw: st.DrawFn, span_minutes: int) -> list[tuple[str, Any]]:
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
                        type="passenger_details",
                        customer_id="C",
                        step=draw(st.sampled_from(("s1", "s2"))),
                        fields=fields,
                    ),
                )
            )
    return out


def final_outputs(evs: list[tuple[str, Any]], rules: Rules, known: tuple[str, ...]) -> tuple[Any, Any]:
    state = CustomerState("C")
    apply_profile(state, Profile(1, "gold" if "address" in known else "silver", known))
    rows: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    for channel, ev in evs:
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
