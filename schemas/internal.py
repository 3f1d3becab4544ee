"""Messages on the internal topic `cem.internal.by-customer`: stage A (pipeline/engine/resolve.py)
writes them, stage B (pipeline/engine/judge_stage.py) reads them. Both are ours, so the models are strict.
They carry fingerprints and field names only: no raw identifiers.

Every message lands on the partition of its customer id under Kafka's default partitioner
(pipeline/engine/rekey.py), so one customer's messages are always read in order, by one worker. The
topic is also the log the judge's state is rebuilt from (pipeline/engine/snapshots.py): a snapshot of a
partition plus the messages after it give the state back.

Stage A sends `PackEnvelope`s: one per partition per resolve batch, holding the batch's
touchpoints, profile updates and erasures for that partition in the order they were read. A
touchpoint travels as a row (`processors.model.Touch.to_row`: its fields in declared order,
half the bytes of a JSON object); a profile update or an erasure as its own envelope.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfileEnvelope(_Strict):
    kind: Literal["profile"] = "profile"
    customer_id: str
    version: int
    loyalty_tier: str
    known_fields: list[str]
    fingerprints: list[str]  # HMAC fingerprints of the CRM identifiers, for the identity index


class EraseEnvelope(_Strict):
    """A CRM tombstone or `cem erase`: forget the customer everywhere, then write a receipt."""

    kind: Literal["erase"] = "erase"
    customer_id: str
    request_id: str  # `cem erase` sets it (header cem.erasure.request_id); else topic:partition:offset
    requested_by: str  # header cem.erasure.requested_by; "crm" for a plain tombstone
    requested_at: str  # ISO 8601, UTC


class PackEnvelope(_Strict):
    """A resolve batch's messages for one partition, in the order they were read (no key).
    An item is a touch row (a JSON array) or a profile or erase envelope (a JSON object)."""

    kind: Literal["pack"] = "pack"
    items: list[list[Any] | ProfileEnvelope | EraseEnvelope]


ENVELOPE = TypeAdapter(PackEnvelope)
#: a profile or erase item of a pack
ITEM = TypeAdapter(Annotated[ProfileEnvelope | EraseEnvelope, Field(discriminator="kind")])
