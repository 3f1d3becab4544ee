"""Friction alert: topic `cem.friction.alerts` (keyed by customer_id) and table `cem.friction_alerts`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: the name of the rule that raised the alert (config/rules.yaml): repeat_contact and re_entry
#: (contract v1), or any other rule of the rule file
AlertKind = str
Severity = Literal["medium", "high"]


class PreviousContact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str
    at: datetime
    channel: str
    matter: str
    agent_id: str
    outcome: str


class FieldGiven(BaseModel):
    """A personal-data field the customer already gave: its name and where, never its value."""

    model_config = ConfigDict(extra="forbid")

    field: str
    place: str
    times: int
    last_at: datetime


class AlertContext(BaseModel):
    """What the customer already told us, so the next agent does not ask again."""

    model_config = ConfigDict(extra="forbid")

    previous_contacts: list[PreviousContact] = []
    fields_given: list[FieldGiven] = []


class FrictionAlert(BaseModel):
    # We produce this message, so it is strict: a typo in our own code fails a test.
    model_config = ConfigDict(extra="forbid")

    alert_id: str
    status: Literal["open", "retracted"]
    kind: AlertKind
    customer_id: str
    severity: Severity
    occurred_at: datetime
    detected_at: datetime
    matter: str | None = None
    field: str | None = None
    count: int
    window_days: int
    channels: list[str]
    distinct_agents: int
    places: list[str]
    known_in_crm: bool
    evidence: list[str]
    loyalty_tier: str
    summary: str
    # the event whose arrival (in event-time order) crossed the threshold
    trigger_event_id: str
    trigger_channel: str
    context: AlertContext = AlertContext()
    # Which revision of this alert this is: grows by one each time the alert is re-published
    # (updated or retracted), so readers keep the highest.
    revision: int = 1
    # the version of the rule (config/rules.yaml) when it raised the alert
    rule_version: int = 1
    # written by `cem rules backfill` over the history, not by the live judge
    backfilled: bool = False
