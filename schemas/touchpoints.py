"""Touchpoint events from the three channel topics (contract v1, "Fields every touchpoint has")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

Channel = Literal["web", "call_center", "booking"]
CHANNELS: tuple[Channel, ...] = ("web", "call_center", "booking")

NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
EventId = Annotated[str, Field(min_length=1, max_length=128)]


class Identifiers(BaseModel):
    """What a channel knows about who the customer is. Raw values: never forwarded downstream."""

    model_config = ConfigDict(extra="ignore", strict=True)

    email: NonEmpty | None = None
    phone: NonEmpty | None = None
    loyalty_id: NonEmpty | None = None
    anonymous_id: NonEmpty | None = None

    def is_empty(self) -> bool:
        return not (self.email or self.phone or self.loyalty_id or self.anonymous_id)


class TouchpointBase(BaseModel):
    # Producers are not ours: unknown extra fields are tolerated (kept in model_extra and
    # dropped), but known fields are strict so a wrong type is an error, not a coercion.
    model_config = ConfigDict(extra="allow", strict=True)

    event_id: EventId
    occurred_at: AwareDatetime
    customer_id: NonEmpty | None = None
    identifiers: Identifiers | None = None
    fields: list[NonEmpty] | None = None

    @model_validator(mode="after")
    def _someone(self) -> TouchpointBase:
        if self.customer_id is None and (self.identifiers is None or self.identifiers.is_empty()):
            raise ValueError("customer_id: a touchpoint needs customer_id or at least one identifier")
        return self


class WebEvent(TouchpointBase):
    type: Literal["page_view", "form_submit", "login", "search", "contact_form", "chat"]
    session_id: NonEmpty | None = None
    page: str | None = None
    form: NonEmpty | None = None
    reason: NonEmpty | None = None

    @model_validator(mode="after")
    def _form_required(self) -> WebEvent:
        if self.type == "form_submit" and self.form is None:
            raise ValueError("form: required when type is form_submit")
        return self


class ContactEvent(TouchpointBase):
    type: Literal["call", "chat", "email"]
    reason: NonEmpty
    agent_id: NonEmpty | None = None
    queue: NonEmpty | None = None
    duration_s: Annotated[StrictInt, Field(ge=0, le=7 * 24 * 3600)] | None = None
    outcome: Literal["resolved", "unresolved", "transferred", "callback_promised"] | None = None
    previous_contact_id: EventId | None = None


BookingType = Literal[
    "booking_created",
    "booking_changed",
    "booking_cancelled",
    "checkin_started",
    "checkin_completed",
    "payment_failed",
    "passenger_details",
]


class BookingEvent(TouchpointBase):
    type: BookingType
    booking_ref: NonEmpty | None = None
    step: NonEmpty | None = None
    amount: StrictInt | StrictFloat | None = None
    currency: Annotated[str, Field(min_length=3, max_length=3)] | None = None


Touchpoint = WebEvent | ContactEvent | BookingEvent

MODEL_BY_CHANNEL: dict[Channel, type[WebEvent] | type[ContactEvent] | type[BookingEvent]] = {
    "web": WebEvent,
    "call_center": ContactEvent,
    "booking": BookingEvent,
}
