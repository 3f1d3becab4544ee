"""Snowplow tracker protocol events -> web touchpoints. Pure: the collector parses the tp2
request, calls `map_event`, and runs the worker's decoder on the result.

* `pv` (page view) -> `page_view`, the page being the path of `url`;
* `se` (structured event) -> the type its action (`se_ac`) names, as Segment's track event
  names do; its label (`se_la`) is the form of a `form_submit`, the reason of a contact;
* `ue` (self-describing event) -> the type its schema (`vendor/name`) names; `form`, `reason`
  and `fields` come from its data. Snowplow's own `submit_form` gives its form id and, as
  entered fields, the names of its elements that are in the field vocabulary (a form has
  hidden inputs and buttons too): never their values.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.sources.common import Ignored, Invalid, Mapped, Outcome
from processors.sources.segment import DEFAULT_TRACK, WebType, event_key
from schemas.snowplow import SnowplowEvent

SUBMIT_FORM = "com.snowplowanalytics.snowplow/submit_form"


class SnowplowMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    page_view: WebType | None = "page_view"
    # structured events by action (`se_ac`), matched as Segment's event names are
    structured: dict[str, WebType] = Field(default_factory=lambda: dict(DEFAULT_TRACK), validate_default=True)
    # self-describing events by schema, `vendor/name` (any version)
    self_describing: dict[str, WebType] = {SUBMIT_FORM: "form_submit"}
    # keys of a self-describing event's data (first present wins)
    form: list[str] = ["formId", "form", "form_id"]
    reason: list[str] = ["reason", "topic", "subject"]
    fields: list[str] = ["fields", "entered_fields"]

    @field_validator("structured")
    @classmethod
    def _keys(cls, v: dict[str, WebType]) -> dict[str, WebType]:
        return {event_key(k): t for k, t in v.items()}


def _millis(ms: str | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat()


def _self_describing(ev: SnowplowEvent) -> tuple[str, dict[str, Any]] | Invalid:
    """(`vendor/name`, data) of a self-describing event's `ue_pr` or `ue_px`."""
    where = "ue_pr" if ev.ue_pr is not None else "ue_px"
    try:
        if ev.ue_pr is not None:
            envelope = json.loads(ev.ue_pr)
        elif ev.ue_px is not None:
            envelope = json.loads(base64.urlsafe_b64decode(ev.ue_px + "=" * (-len(ev.ue_px) % 4)))
        else:
            return Invalid("ue_pr", "a self-describing event needs ue_pr or ue_px")
    except (ValueError, binascii.Error):
        return Invalid(where, "not JSON (ue_px: base64-encoded JSON)")
    inner = envelope.get("data") if isinstance(envelope, dict) else None
    schema = inner.get("schema") if isinstance(inner, dict) else None
    data = inner.get("data") if isinstance(inner, dict) else None
    if not isinstance(schema, str) or not schema.startswith("iglu:") or not isinstance(data, dict):
        return Invalid(where, "expected {schema, data: {schema: iglu:..., data: {...}}}")
    parts = schema.removeprefix("iglu:").split("/")
    return "/".join(parts[:2]), data


def map_event(
    ev: SnowplowEvent, mapping: SnowplowMapping, vocabulary: frozenset[str], received_at: datetime
) -> Outcome:
    anonymous = ev.duid or ev.nuid
    if ev.uid is None and anonymous is None:
        return Invalid("uid", "uid, duid or nuid is required")
    value: dict[str, Any] = {"event_id": ev.eid}
    origin = {"event_id": "eid", "occurred_at": "ttm" if ev.ttm else "dtm", "type": "e"}
    if ev.e == "pv":
        kind = mapping.page_view
        if ev.url:
            value["page"], origin["page"] = urlsplit(ev.url).path or "/", "url"
    elif ev.e == "se":
        kind = mapping.structured.get(event_key(ev.se_ac or ""))
        origin["type"] = "se_ac"
        if ev.se_la and kind in ("form_submit", "contact_form", "chat"):
            field = "form" if kind == "form_submit" else "reason"
            value[field], origin[field] = ev.se_la, "se_la"
        origin.setdefault("form", "se_la")
    elif ev.e == "ue":
        found = _self_describing(ev)
        if isinstance(found, Invalid):
            return found
        name, data = found
        kind = mapping.self_describing.get(name)
        where = "ue_pr" if ev.ue_pr is not None else "ue_px"
        origin["type"] = where
        for field, names in (("form", mapping.form), ("reason", mapping.reason), ("fields", mapping.fields)):
            origin[field] = f"{where}.data.{names[0]}" if names else where
            for n in names:
                if data.get(n) is not None:
                    value[field], origin[field] = data[n], f"{where}.data.{n}"
                    break
        if name == SUBMIT_FORM and isinstance(data.get("elements"), list):
            names_in = [el.get("name") for el in data["elements"] if isinstance(el, dict)]
            value["fields"] = list(dict.fromkeys(n for n in names_in if isinstance(n, str) and n in vocabulary))
    else:
        kind = None
    if kind is None:
        return Ignored(f"event {ev.e} not mapped")
    value["type"] = kind
    try:
        value["occurred_at"] = _millis(ev.ttm or ev.dtm) or received_at.isoformat()
    except (ValueError, OverflowError):
        return Invalid(origin["occurred_at"], "not a time a calendar holds")
    if ev.uid is not None:
        value["customer_id"], origin["customer_id"] = ev.uid, "uid"
    if anonymous is not None:
        value["identifiers"] = {"anonymous_id": anonymous}
        origin["identifiers.anonymous_id"] = "duid" if ev.duid else "nuid"
    return Mapped(value, anonymous or ev.uid, origin)
