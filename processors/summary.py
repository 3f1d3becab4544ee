"""One plain sentence an ops person can act on, per alert. Names and ids only, never values."""

from __future__ import annotations

from processors.model import MICROS_PER_DAY, AlertDraft
from processors.rules import RE_ENTRY_SUMMARY, REPEAT_CONTACT_SUMMARY

_TIER_WORD = {"none": "Customer", "": "Customer"}


def _who(tier: str, customer_id: str) -> str:
    word = _TIER_WORD.get(tier, f"{tier.capitalize()} member")
    return f"{word} {customer_id}"


def _span(days: float) -> str:
    if days < 1:
        return "within a day"
    whole = int(days) + (1 if days - int(days) > 0 else 0)
    return f"in {whole} day" + ("" if whole == 1 else "s")


def summarize(alert: AlertDraft, first_t: int) -> str:
    """The rule's sentence (`summary` in config/rules.yaml) with the alert's facts filled in."""
    template = alert.summary or (REPEAT_CONTACT_SUMMARY if alert.kind == "repeat_contact" else RE_ENTRY_SUMMARY)
    if alert.distinct_agents and alert.distinct_agents == alert.count:
        agents = ", each time with a different agent"
    elif alert.distinct_agents == 1:
        agents = ", with one agent"
    elif alert.distinct_agents:
        agents = f", with {alert.distinct_agents} different agents"
    else:
        agents = ""
    places = len(alert.places)
    return template.format(
        who=_who(alert.loyalty_tier, alert.customer_id),
        customer_id=alert.customer_id,
        tier=alert.loyalty_tier,
        count=alert.count,
        span=_span((alert.t - first_t) / MICROS_PER_DAY),
        subject=alert.subject or "no matter",
        channels=", ".join(alert.channels),
        agents=agents,
        distinct_agents=alert.distinct_agents,
        places=f"in {places} place" + ("" if places == 1 else "s"),
        crm=", although our CRM already holds it" if alert.known_in_crm else "",
        window_days=alert.window_days,
        rule=alert.kind,
    )
