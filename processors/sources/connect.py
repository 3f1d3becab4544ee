"""Amazon Connect contact trace records -> call-centre touchpoints, and the deduplication of
records Connect delivers at least once and updates after the contact. Pure: `cem adapt`
(`pipeline/sources/adapt.py`) reads the raw records and calls these."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from schemas.connect import ContactTraceRecord

ContactType = Literal["call", "chat", "email"]


class ConnectMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[str, ContactType] = {"VOICE": "call", "CHAT": "chat", "EMAIL": "email"}
    # initiation methods that make a contact continue its PreviousContactId (a callback or an
    # outbound call about the same matter is a new contact)
    continuation_methods: list[str] = ["TRANSFER", "QUEUE_TRANSFER"]
    # contact attributes (set by the contact flow) that give the touchpoint's fields
    matter_attribute: str = "matter"
    customer_id_attribute: str = "customer_id"
    loyalty_id_attribute: str = "loyalty_id"
    outcome_attribute: str = "outcome"
    fields_attribute: str = Field("fields", description="comma-separated names of personal-data fields asked for")


_OUTCOMES = ("resolved", "unresolved", "transferred", "callback_promised")


def map_record(ctr: ContactTraceRecord, mapping: ConnectMapping) -> Outcome:
    kind = mapping.channels.get(ctr.Channel.upper())
    if kind is None:
        return Ignored(f"channel {ctr.Channel} not mapped")
    attrs = ctr.Attributes or {}
    origin = {"event_id": "ContactId", "occurred_at": "InitiationTimestamp", "type": "Channel"}
    value: dict[str, Any] = {
        "event_id": ctr.ContactId,
        "occurred_at": ctr.InitiationTimestamp.isoformat(),
        "type": kind,
    }
    matter = attrs.get(mapping.matter_attribute)
    origin["reason"] = f"Attributes.{mapping.matter_attribute}"
    if matter:
        value["reason"] = matter
    if customer := attrs.get(mapping.customer_id_attribute):
        value["customer_id"], origin["customer_id"] = customer, f"Attributes.{mapping.customer_id_attribute}"
    identifiers: dict[str, str] = {}
    endpoint = ctr.CustomerEndpoint
    if endpoint and endpoint.Address and endpoint.Type in ("TELEPHONE_NUMBER", "EMAIL_ADDRESS"):
        kind_name = "phone" if endpoint.Type == "TELEPHONE_NUMBER" else "email"
        identifiers[kind_name], origin[f"identifiers.{kind_name}"] = endpoint.Address, "CustomerEndpoint.Address"
    if loyalty := attrs.get(mapping.loyalty_id_attribute):
        identifiers["loyalty_id"] = loyalty
        origin["identifiers.loyalty_id"] = f"Attributes.{mapping.loyalty_id_attribute}"
    if identifiers:
        value["identifiers"] = identifiers
    if ctr.Agent and ctr.Agent.ARN:
        # the agent's id from its ARN (.../agent/<id>), not the user name, which is often a person's name
        value["agent_id"], origin["agent_id"] = ctr.Agent.ARN.rsplit("/", 1)[-1], "Agent.ARN"
    if ctr.Queue and ctr.Queue.Name:
        value["queue"], origin["queue"] = ctr.Queue.Name, "Queue.Name"
    if ctr.DisconnectTimestamp is not None:
        seconds = int((ctr.DisconnectTimestamp - ctr.InitiationTimestamp).total_seconds())
        value["duration_s"], origin["duration_s"] = max(seconds, 0), "DisconnectTimestamp"
    if ctr.NextContactId:
        value["outcome"], origin["outcome"] = "transferred", "NextContactId"
    elif (outcome := attrs.get(mapping.outcome_attribute, "").lower()) in _OUTCOMES:
        value["outcome"], origin["outcome"] = outcome, f"Attributes.{mapping.outcome_attribute}"
    if ctr.PreviousContactId and ctr.InitiationMethod.upper() in mapping.continuation_methods:
        value["previous_contact_id"], origin["previous_contact_id"] = ctr.PreviousContactId, "PreviousContactId"
    if names := attrs.get(mapping.fields_attribute):
        value["fields"] = [n.strip() for n in names.split(",") if n.strip()]
        origin["fields"] = f"Attributes.{mapping.fields_attribute}"
    if "customer_id" not in value and not identifiers:
        return Invalid("CustomerEndpoint", "no customer: neither a customer id attribute nor a customer endpoint")
    return Mapped(value, ctr.ContactId, origin)


@dataclass(slots=True)
class Held:
    record: Any  # what the shell forwards once the contact settles (its mapped touchpoint)
    last_update: datetime
    since: datetime  # when the contact was first held (the shell's clock)
    position: tuple[int, int]  # (partition, offset) of the oldest raw record the contact needs


@dataclass(slots=True)
class ContactDedupe:
    """Connect delivers a contact's record at least once, and again after each update (after
    contact work, a transfer's next leg, a late attribute). The pipeline keeps the first
    touchpoint of an event_id, so a contact is held for `settle` after its first record and
    forwarded once, as its record with the greatest LastUpdateTimestamp. Contacts forwarded
    are remembered (at most `max_remembered`, oldest forgotten first) so that a record
    delivered again is dropped; at most `max_held` contacts wait, and past it the oldest goes
    out early. Both bounds are settings (`adapt.*`)."""

    settle: timedelta
    max_held: int
    max_remembered: int
    held: dict[str, Held] = field(default_factory=dict)
    done: OrderedDict[str, datetime] = field(default_factory=OrderedDict)
    duplicates: int = 0
    late_updates: int = 0  # a newer version arrived after the contact was forwarded: dropped

    def offer(
        self, contact_id: str, last_update: datetime, record: Any, now: datetime, position: tuple[int, int]
    ) -> list[Any]:
        """Take one record; returns the records forced out early by `max_held`."""
        if contact_id in self.done:
            if last_update > self.done[contact_id]:
                self.late_updates += 1
            else:
                self.duplicates += 1
            return []
        held = self.held.get(contact_id)
        if held is not None:
            self.duplicates += 1
            if last_update > held.last_update:
                held.record, held.last_update = record, last_update
            return []
        # `held` is in the order contacts were first seen (an update does not move one), so the
        # oldest is first (should the clock step back, a contact merely waits a little longer)
        self.held[contact_id] = Held(record, last_update, now, position)
        out = []
        while len(self.held) > self.max_held:
            out.append(self._release(next(iter(self.held))))
        return out

    def due(self, now: datetime) -> list[Any]:
        """The records of the contacts that have waited `settle`, oldest first."""
        out = []
        while self.held:
            oldest = next(iter(self.held))
            if now - self.held[oldest].since < self.settle:
                break
            out.append(self._release(oldest))
        return out

    def _release(self, contact_id: str) -> Any:
        held = self.held.pop(contact_id)
        self.done[contact_id] = held.last_update
        self.done.move_to_end(contact_id)
        while len(self.done) > self.max_remembered:
            self.done.popitem(last=False)
        return held.record

    def needed_from(self, partition: int) -> int | None:
        """The oldest offset of `partition` that a held contact still needs (None: none), so
        that offsets are committed only below it and a restart loses nothing."""
        offsets = [h.position[1] for h in self.held.values() if h.position[0] == partition]
        return min(offsets) if offsets else None
