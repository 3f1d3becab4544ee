"""CloudEvents from a booking engine -> booking touchpoints. Pure: the shell parses the event
with the `cloudevents` SDK (Kafka binding in `cem adapt`, HTTP binding in `cem collect`) and
hands over its attributes and data."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from schemas.touchpoints import BookingType

#: CloudEvents `type` -> booking type. A type matches a name when it is the name or ends with
#: "." + the name, so `com.airline.booking.created` is `booking.created`.
DEFAULT_TYPES: dict[str, BookingType] = {
    "booking.created": "booking_created",
    "booking.changed": "booking_changed",
    "booking.updated": "booking_changed",
    "booking.cancelled": "booking_cancelled",
    "checkin.started": "checkin_started",
    "checkin.completed": "checkin_completed",
    "payment.failed": "payment_failed",
    "passenger.details.submitted": "passenger_details",
}

#: the touchpoint fields taken from `data` under the same names
DATA_FIELDS = ("customer_id", "identifiers", "fields", "booking_ref", "step", "amount", "currency")


class CloudEventsMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    types: dict[str, BookingType] = dict(DEFAULT_TYPES)

    @field_validator("types")
    @classmethod
    def _lower(cls, v: dict[str, BookingType]) -> dict[str, BookingType]:
        return {k.strip().lower(): t for k, t in v.items()}

    def type_of(self, ce_type: str) -> BookingType | None:
        name = ce_type.strip().lower()
        parts = name.split(".")
        for i in range(len(parts)):  # the longest matching suffix wins
            found = self.types.get(".".join(parts[i:]))
            if found is not None:
                return found
        return None


def map_event(attributes: dict[str, Any], data: Any, mapping: CloudEventsMapping) -> Outcome:
    """A CloudEvent (its context attributes and its data, a JSON object) as a booking touchpoint.
    `id` is the event_id, `time` the event time; `subject` stands in for a missing booking_ref."""
    ce_type = attributes.get("type")
    if not isinstance(ce_type, str):
        return Invalid("type", "a CloudEvent needs a type")
    kind = mapping.type_of(ce_type)
    if kind is None:
        return Ignored("type not mapped")
    if "time" not in attributes:
        return Invalid("time", "the event time is required (the pipeline's windows use it)")
    if not isinstance(data, dict):
        return Invalid("data", "data must be a JSON object")
    value: dict[str, Any] = {"event_id": attributes.get("id"), "occurred_at": attributes["time"], "type": kind}
    origin = {"event_id": "id", "occurred_at": "time", "type": "type"}
    for name in DATA_FIELDS:
        origin[name] = f"data.{name}"  # also when absent: a missing customer is named where it belongs
        if name in data:
            value[name] = data[name]
    subject = attributes.get("subject")
    if "booking_ref" not in value and isinstance(subject, str) and subject:
        value["booking_ref"], origin["booking_ref"] = subject, "subject"
    key = value.get("customer_id") or value.get("booking_ref")
    return Mapped(value, key if isinstance(key, str) else None, origin)
