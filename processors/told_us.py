"""The "already told us" context of an alert: what the next agent should know so the customer
does not have to repeat themselves. Names, ids and times only; never personal values. Pure."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from processors.model import MICROS_PER_DAY, AlertDraft, Rules, Touch
from processors.normalize import from_micros

MAX_CONTACTS = 10
MAX_FIELDS = 20


@functools.lru_cache(maxsize=65_536)  # replays recompute contexts over the same events' times
def _at(us: int) -> str:
    return from_micros(us).isoformat().replace("+00:00", "Z")


def already_told_us(events: Sequence[Touch], trigger_index: int, draft: AlertDraft, rules: Rules) -> dict[str, Any]:
    """Previous contacts (on the alert's matter, for a rule keyed by matter; any matter in the
    contacts' window, otherwise) and the fields the customer already gave, where and when."""
    trigger = events[trigger_index]
    before = events[:trigger_index]
    contact_from = trigger.t - rules.repeat_contact.window_days * MICROS_PER_DAY
    fields_from = trigger.t - rules.re_entry.window_days * MICROS_PER_DAY
    earlier = [
        e
        for e in before
        if e.is_contact
        and e.t >= contact_from
        and (draft.key != "matter" or not draft.subject or e.matter == draft.subject)
    ][-MAX_CONTACTS:]
    contacts = [
        {"event_id": e.event_id, "at": _at(e.t), "channel": e.channel, "matter": e.matter, "agent_id": e.agent_id,
         "outcome": e.outcome}
        for e in earlier
    ]  # fmt: skip
    given: dict[tuple[str, str], dict[str, Any]] = {}
    for e in before:
        if e.t < fields_from:
            continue
        for name in e.fields:
            entry = given.setdefault((name, e.place), {"field": name, "place": e.place, "times": 0})
            entry["times"] += 1
            entry["last_at"] = e.t
    fields = sorted(given.values(), key=lambda g: (g["field"] != draft.subject, g["field"], g["place"]))[:MAX_FIELDS]
    for g in fields:
        g["last_at"] = _at(g["last_at"])
    return {"previous_contacts": contacts, "fields_given": fields}
