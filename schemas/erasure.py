"""Erasure receipt: topic `cem.erasure.receipts` (keyed by request_id) and table
`cem.erasure_receipts`. Counts of what was removed, never content; the customer appears
only as `subject`, the keyed fingerprint of the customer id."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Removed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_state: int = Field(ge=0, le=1, description="the stream state of the customer (0: there was none)")
    identity_entries: int = Field(ge=0, description="identity index entries that pointed to the customer")
    timeline_rows: int = Field(ge=0, description="rows deleted from cem.timeline_versions (all revisions)")
    alert_rows: int = Field(ge=0, description="rows deleted from cem.friction_alert_versions (all revisions)")
    related_keys: int = Field(
        0, ge=0, description="anon: and unresolved: keys of the customer's identifiers whose rows were deleted too"
    )
    ledger_entries: int = Field(0, ge=0, description="records of the alert delivery ledger removed (tombstones)")
    dead_letters: int = Field(
        0,
        ge=0,
        description="dead letters holding the customer's id or identifiers: raw input, left to the "
        "dead-letter topic's retention (kafka.deadletter_retention_days)",
    )


class ErasureReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    subject: str = Field(description="HMAC fingerprint of the customer id (privacy.fingerprint_secret)")
    requested_by: str
    requested_at: datetime
    completed_at: datetime
    removed: Removed
    verified: bool = Field(description="no row of the customer was left in ClickHouse afterwards")


class ErasureJob(BaseModel):
    """Topic `cem.internal.erasures` (keyed by request_id): the judge has dropped the customer's
    state and identity entries; the eraser (`cem eraser`, with the ClickHouse eraser's
    credentials, which the worker does not hold) deletes their rows and writes the receipt."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    customer_id: str
    requested_by: str
    requested_at: datetime
    # fingerprints of the customer's identifiers (CRM profile, anonymous ids of their logins):
    # their anon:/unresolved: keys hold events from before the customer was known
    fingerprints: list[str]
    customer_state: int = Field(ge=0, le=1)
    identity_entries: int = Field(ge=0)
