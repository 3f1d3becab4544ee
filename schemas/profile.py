"""CRM profile snapshot (topic `cem.crm.profiles`, compacted; a null value is a tombstone)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.touchpoints import NonEmpty


class ProfileIdentifiers(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    email: NonEmpty | None = None
    phone: NonEmpty | None = None
    loyalty_id: NonEmpty | None = None


class ProfileSnapshot(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    customer_id: NonEmpty
    version: int = Field(ge=0)
    updated_at: AwareDatetime
    loyalty_tier: NonEmpty = "none"
    identifiers: ProfileIdentifiers = ProfileIdentifiers()
    known_fields: list[NonEmpty] = []
