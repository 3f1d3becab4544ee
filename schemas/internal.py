"""Messages on the internal topic `cem.internal.by-customer`.

Stage A (resolve / ingest_profiles) writes them; stage B (judge) reads them. Both are ours,
so the models are strict. They carry fingerprints and field names only: no raw identifiers.

A message goes to the partition of its customer id under Kafka's default partitioner, the
partition the `customers` table's changelog uses for that customer. Profiles and erasures
are one message each, keyed by the customer id. Touchpoints travel as `TouchesEnvelope`s: all
of a resolve batch's touchpoints for one partition in one message, because the per-message
cost of a Faust stream, not the judging, bounded the judge stage.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TouchEnvelope(_Strict):
    """One touchpoint, keyed by its customer id. Written by earlier versions, and still judged,
    so that a worker upgraded with a backlog on the internal topic loses nothing."""

    kind: Literal["touch"] = "touch"
    customer_id: str
    touch: dict[str, object]  # processors.model.Touch.to_json()


class TouchesEnvelope(_Strict):
    """Several customers' touchpoints bound for one partition (no key)."""

    kind: Literal["touches"] = "touches"
    touches: list[dict[str, object]]  # Touch.to_json() each; its customer_id keys the state


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


Envelope = Annotated[TouchesEnvelope | TouchEnvelope | ProfileEnvelope | EraseEnvelope, Field(discriminator="kind")]
ENVELOPE = TypeAdapter(Envelope)
