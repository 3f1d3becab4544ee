"""One plain sentence an ops person can act on, per alert. Names and ids only, never values."""

from __future__ import annotations

from processors.model import MICROS_PER_DAY, AlertDraft

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
    who = _who(alert.loyalty_tier, alert.customer_id)
    span = _span((alert.t - first_t) / MICROS_PER_DAY)
    if alert.kind == "repeat_contact":
        if alert.distinct_agents == alert.count:
            agents = ", each time with a different agent"
        elif alert.distinct_agents == 1:
            agents = ", with one agent"
        elif alert.distinct_agents:
            agents = f", with {alert.distinct_agents} different agents"
        else:
            agents = ""
        via = ", ".join(alert.channels)
        return f"{who} contacted us {alert.count} times {span} about {alert.subject} (via {via}){agents}."
    crm = ", although our CRM already holds it" if alert.known_in_crm else ""
    places = len(alert.places)
    where = f"in {places} place" + ("" if places == 1 else "s")
    return f"{who} had to enter {alert.subject} {alert.count} times {span}, {where}{crm}."
