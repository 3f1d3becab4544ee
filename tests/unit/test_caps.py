"""Per-customer caps: a customer with thousands of events costs the judge a bounded state and
bounded alerts (a producer that defaults every customer id to "unknown" makes one)."""

from __future__ import annotations

from datetime import timedelta

from processors.judge import CustomerState, judge
from processors.model import RepeatContactRules, Rules
from tests.unit.test_rules import contact, entry


def names(rules: Rules) -> list[str]:
    return [d.name for d in rules.detectors]


def test_thousands_of_contacts_on_one_matter_keep_state_and_alerts_bounded() -> None:
    rules = Rules()
    state = CustomerState("C")
    opened, capped, evidence = 0, 0, 0
    for n in range(4000):  # one a minute, on one matter
        state, verdict = judge(state, contact(f"c{n}", timedelta(minutes=n), duration_s=10), rules, 0)
        capped += verdict.capped
        for a in verdict.alerts:
            opened += a.revision == 1
            evidence = max(evidence, len(a.body["evidence"]))
            assert a.body["count"] <= rules.repeat_contact.max_evidence
    assert len(state.events) <= rules.max_events_per_customer
    # one alert an hour per matter (the cooldown), plus the medium -> high step at the start
    assert opened <= 4000 // rules.repeat_contact.alert_cooldown_minutes + 2, opened
    assert evidence == rules.repeat_contact.max_evidence and capped > 0
    after = state.events[-1].after
    assert after is not None
    contacts, last = after[0], after[1 + names(rules).index("repeat_contact")]
    assert len(last.recent) <= rules.repeat_contact.max_evidence and len(contacts.contacts) <= 200


def test_a_field_entered_thousands_of_times_keeps_its_entries_bounded() -> None:
    rules = Rules()
    state = CustomerState("C")
    for n in range(1000):
        state, _ = judge(state, entry(f"w{n}", timedelta(minutes=n), f"web:form-{n % 5}", "passport_number"), rules, 0)
    after = state.events[-1].after
    assert after is not None
    last = after[1 + names(rules).index("re_entry")]
    assert len(last.entries) <= rules.re_entry.max_evidence


def test_the_cooldown_holds_back_a_matters_next_alert_unless_it_is_more_severe() -> None:
    rules = Rules(repeat_contact=RepeatContactRules(alert_cooldown_minutes=120))
    state = CustomerState("C")
    counts: list[int] = []
    flagged: list[bool] = []
    for n, minutes in enumerate((0, 30, 60, 90, 300)):
        state, verdict = judge(state, contact(f"c{n}", timedelta(minutes=minutes), duration_s=10), rules, 0)
        counts += [a.body["count"] for a in verdict.alerts]
        flagged.append(bool(verdict.rows and verdict.rows[-1].friction))
    # 2 (medium), 3 (high: more severe, so at once), 4 (high, cooling down), 5 (after the cooldown)
    assert counts == [2, 3, 5]
    assert flagged == [False, True, True, True, True]  # every repeat contact is flagged all the same
