"""From a validated channel message to the `Touch` the detectors see. Pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from processors.model import MICROS_PER_SECOND, OTHER_MATTER, WEB_CONTACT_TYPES, Touch
from schemas.touchpoints import BookingEvent, Channel, ContactEvent, Touchpoint, WebEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(ts: datetime) -> int:
    delta = ts - _EPOCH  # aware - aware: exact, independent of the host time zone
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us // MICROS_PER_SECOND, tz=UTC).replace(microsecond=us % MICROS_PER_SECOND)


_SEPARATORS = re.compile(r"[\s\-/.]+")


def matter_of(reason: str, vocabulary: frozenset[str] | None) -> str:
    """A contact's matter: its reason as a name of the vocabulary ("Baggage Allowance" ->
    baggage_allowance), or `other`. Free text never reaches the timeline or the alerts: a
    customer's own words can hold anything. No vocabulary: the reason lower-cased."""
    name = _SEPARATORS.sub("_", reason.strip().lower()).strip("_")
    if vocabulary is None:
        return reason.strip().lower()
    return name if name in vocabulary else OTHER_MATTER


def place_of(channel: Channel, event: Touchpoint) -> str:
    """Where an entry happens: channel + form / step / queue (falling back to the event type)."""
    detail: str | None
    if isinstance(event, WebEvent):
        detail = event.form
    elif isinstance(event, BookingEvent):
        detail = event.step
    else:
        detail = event.queue
    return f"{channel}:{detail or event.type}"


def to_touch(
    channel: Channel,
    event: Touchpoint,
    customer_id: str,
    resolved_by: str,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
    anonymous: str = "",
    matters: frozenset[str] | None = None,
) -> Touch:
    is_contact = isinstance(event, ContactEvent) or (isinstance(event, WebEvent) and event.type in WEB_CONTACT_TYPES)
    reason = getattr(event, "reason", None)
    return Touch(
        customer_id=customer_id,
        channel=channel,
        event_id=event.event_id,
        t=to_micros(event.occurred_at),
        type=event.type,
        matter=matter_of(reason, matters) if (is_contact and reason) else "",
        place=place_of(channel, event),
        agent_id=(event.agent_id or "") if isinstance(event, ContactEvent) else "",
        fields=tuple(dict.fromkeys(event.fields or ())),
        is_contact=is_contact,
        outcome=(event.outcome or "") if isinstance(event, ContactEvent) else "",
        duration_s=(event.duration_s or 0) if isinstance(event, ContactEvent) else 0,
        previous_contact_id=(event.previous_contact_id or "") if isinstance(event, ContactEvent) else "",
        resolved_by=resolved_by,
        topic=topic,
        partition=partition,
        offset=offset,
        anonymous=anonymous,
    )
