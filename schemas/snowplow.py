"""Events of the Snowplow tracker protocol, POST form (`/com.snowplowanalytics.snowplow/tp2`):
a self-describing `payload_data` envelope whose `data` is a list of events, each a flat map of
short names to strings. Tolerant of names it does not read (there are dozens), strict on those
it does."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.touchpoints import EventId

Text = Annotated[str, Field(max_length=8192)]
Id = Annotated[str, Field(min_length=1, max_length=256)]
#: milliseconds since the epoch, as the trackers send them: a string of digits
Millis = Annotated[str, Field(pattern=r"^\d{1,15}$")]


class SnowplowEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    e: Annotated[str, Field(min_length=1, max_length=16)]  # pv, se, ue, pp, ...
    eid: EventId
    dtm: Millis | None = None  # when the device created it
    ttm: Millis | None = None  # the true time, when the application knows it
    uid: Id | None = None  # the business's user id
    duid: Id | None = None  # the tracker's cookie id (a domain user id)
    nuid: Id | None = None  # the collector's cookie id
    url: Text | None = None
    se_ca: Text | None = None  # structured event: category, action, label, property
    se_ac: Text | None = None
    se_la: Text | None = None
    se_pr: Text | None = None
    ue_pr: Text | None = None  # self-describing event, JSON
    ue_px: Annotated[str, Field(max_length=65536)] | None = None  # the same, base64url


class SnowplowPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    schema_: str = Field(alias="schema")
    data: list[dict[str, object]] = Field(max_length=10_000)
