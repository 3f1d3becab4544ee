"""Messages of the Segment HTTP tracking API, which RudderStack's SDKs speak too
(`POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`).

The producers are not ours, so the models are tolerant of keys they do not know (an SDK adds
`context.library`, `integrations`, `sentAt`, `_metadata`...), and strict on the ones they
read: a wrong type is an error naming the field, never a coercion. Only what the mapping to
touchpoints needs is modelled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.touchpoints import EventId

#: documented limits of the Segment tracking API, which the SDKs enforce on their side too
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024

MessageType = Literal["track", "page", "screen", "identify", "alias", "group"]


def _id_text(value: Any) -> Any:
    """Segment accepts user ids as strings or numbers (`analytics.identify(42)`); the SDKs
    send numbers as they are. A number becomes its text; anything else is checked as a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _timestamp_text(value: Any) -> Any:
    """An ISO 8601 string only: a bare number would be read as Unix seconds by pydantic's lax
    mode, which Segment never sends and which would silently put an event in 1970."""
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an ISO 8601 timestamp string")


UserId = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=256)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), Field(strict=False)]
JsonObject = dict[str, Any]


class PageContext(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    path: str | None = None
    url: str | None = None


class Context(BaseModel):
    """`context`: what the SDK knows about where the message came from. `traits` holds the
    user's traits on any message type (analytics.js copies them there)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    traits: JsonObject | None = None
    page: PageContext | None = None


class SegmentMessage(BaseModel):
    """One message: the body of `/v1/track` and its kin, or one element of `/v1/batch`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: MessageType
    # Segment would invent one; we cannot: it is the touchpoint's event_id, which is what
    # makes a retried batch count once
    messageId: EventId  # the API's spelling, as are the names below
    timestamp: Timestamp | None = None
    userId: UserId | None = None
    anonymousId: UserId | None = None
    previousId: UserId | None = None  # alias
    event: Annotated[str, Field(min_length=1, max_length=256)] | None = None  # track
    name: Annotated[str, Field(max_length=256)] | None = None  # page, screen
    properties: JsonObject | None = None
    traits: JsonObject | None = None  # identify
    context: Context | None = None


class SegmentBatch(BaseModel):
    """The body of `/v1/batch`. A top-level `context` applies to every message that lacks one."""

    model_config = ConfigDict(extra="ignore", strict=True)

    batch: list[JsonObject] = Field(max_length=10_000)
    context: JsonObject | None = None
