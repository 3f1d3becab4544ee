"""Segment (and RudderStack) tracking messages -> web touchpoints. Pure: the collector
(`pipeline/sources/collector.py`) parses and validates the HTTP request, calls `map_message`,
and runs the worker's decoder on the result.

The defaults (`SegmentMapping`) follow Segment's spec'd event names; `config/sources.yaml`
documents them and is where a site names its own events and properties.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from schemas.segment import SegmentMessage

WebType = Literal["page_view", "form_submit", "login", "search", "contact_form", "chat"]

#: track events -> web types: Segment's spec'd names (ecommerce, B2B SaaS) and plain ones
DEFAULT_TRACK: dict[str, WebType] = {
    "Form Submitted": "form_submit",
    "Signed In": "login",
    "Logged In": "login",
    "Products Searched": "search",
    "Searched": "search",
    "Contact Form Submitted": "contact_form",
    "Chat Started": "chat",
    "Live Chat Conversation Started": "chat",
}

_SEPARATORS = re.compile(r"[\s_\-.]+")


@lru_cache(maxsize=4096)  # a site has a few dozen event names; a cache of them saves a regex a message
def event_key(name: str) -> str:
    """`Form Submitted`, `form_submitted` and `form-submitted` are one event name."""
    return _SEPARATORS.sub(" ", name.strip().lower())


class SegmentMapping(BaseModel):
    """Which messages become which web touchpoints, and where their fields come from.
    A type mapped to null is accepted and not forwarded (counted as ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track: dict[str, WebType] = Field(default_factory=lambda: dict(DEFAULT_TRACK), validate_default=True)
    other_track: WebType | None = Field(None, description="type of track events not listed in `track`")
    page: WebType | None = "page_view"
    screen: WebType | None = "page_view"
    # an identify or alias is the moment a visitor becomes known: it links the anonymous id
    identify: WebType | None = "login"
    alias: WebType | None = "login"
    group: WebType | None = None
    # property names, first present wins
    form: list[str] = ["form", "form_id", "formId", "form_name"]
    reason: list[str] = ["reason", "topic", "subject"]
    fields: list[str] = ["fields", "entered_fields"]
    session_id: list[str] = ["session_id", "sessionId"]
    # trait names (message `traits`, then `context.traits`), first present wins
    email: list[str] = ["email"]
    phone: list[str] = ["phone"]
    loyalty_id: list[str] = ["loyalty_id", "loyaltyId", "loyalty_number"]

    @field_validator("track")
    @classmethod
    def _keys(cls, v: dict[str, WebType]) -> dict[str, WebType]:
        return {event_key(k): t for k, t in v.items()}

    def type_of(self, msg: SegmentMessage) -> WebType | None:
        if msg.type == "track":
            return self.track.get(event_key(msg.event or ""), self.other_track)
        mapped: WebType | None = getattr(self, msg.type)
        return mapped


def _first(names: list[str], *sources: tuple[str, dict[str, Any] | None]) -> tuple[str, Any] | None:
    """(source path, value) of the first name present in the first source that has it."""
    for where, obj in sources:
        if not obj:
            continue
        for name in names:
            if name in obj and obj[name] is not None:
                return f"{where}.{name}", obj[name]
    return None


def map_message(msg: SegmentMessage, mapping: SegmentMapping, received_at: datetime) -> Outcome:
    """A Segment message as a web touchpoint. `received_at` stands in for a missing
    `timestamp`, as Segment's own API does."""
    if msg.type == "track" and not msg.event:
        return Invalid("event", "a track message needs its event name")
    kind = mapping.type_of(msg)
    if kind is None:
        return Ignored(f"{msg.type} not mapped" if msg.type != "track" else "track event not mapped")
    anonymous = msg.previousId if msg.type == "alias" else msg.anonymousId
    anonymous_from = "previousId" if msg.type == "alias" else "anonymousId"
    if msg.userId is None and anonymous is None:
        return Invalid("userId", f"userId or {anonymous_from} is required")

    value: dict[str, Any] = {
        "event_id": msg.messageId,
        "occurred_at": (msg.timestamp or received_at).isoformat(),
        "type": kind,
    }
    origin = {"event_id": "messageId", "occurred_at": "timestamp", "type": "event" if msg.type == "track" else "type"}
    if msg.userId is not None:
        value["customer_id"] = msg.userId
        origin["customer_id"] = "userId"

    identifiers: dict[str, Any] = {}
    if anonymous is not None:
        identifiers["anonymous_id"] = anonymous
        origin["identifiers.anonymous_id"] = anonymous_from
    context_traits = msg.context.traits if msg.context else None
    if msg.traits or context_traits:
        for kind_name, names in (
            ("email", mapping.email),
            ("phone", mapping.phone),
            ("loyalty_id", mapping.loyalty_id),
        ):
            found = _first(names, ("traits", msg.traits), ("context.traits", context_traits))
            if found is not None:
                origin[f"identifiers.{kind_name}"], identifiers[kind_name] = found
    if identifiers:
        value["identifiers"] = identifiers

    props = msg.properties
    for field, names in (
        ("form", mapping.form),
        ("reason", mapping.reason),
        ("fields", mapping.fields),
        ("session_id", mapping.session_id),
    ):
        # a field the touchpoint needs but lacks is named by the property the mapping looks at first
        origin[field] = f"properties.{names[0]}" if names else "properties"
        found = _first(names, ("properties", props)) if props else None
        if found is not None:
            origin[field], value[field] = found
    page = _first(["path"], ("properties", props if msg.type in ("page", "screen") else None))
    if page is None and msg.context and msg.context.page:
        page = _first(["path"], ("context.page", msg.context.page.model_dump()))
    if page is not None:
        origin["page"], value["page"] = page
    elif msg.type == "screen" and msg.name:
        origin["page"], value["page"] = "name", msg.name
    return Mapped(value, anonymous or msg.userId, origin)
