"""Amazon Connect contact trace records (CTRs), as Connect exports them to Kinesis or
Firehose, one JSON record per contact and per update of it. Only what the mapping to
call-centre touchpoints reads is modelled; other keys are ignored (the format grows)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Text = Annotated[str, Field(min_length=1, max_length=1024)]


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class AgentInfo(_Tolerant):
    ARN: Text | None = None
    Username: Text | None = None


class QueueInfo(_Tolerant):
    ARN: Text | None = None
    Name: Text | None = None


class Endpoint(_Tolerant):
    Address: Text | None = None
    Type: Text | None = None  # TELEPHONE_NUMBER, EMAIL_ADDRESS, ...


class ContactTraceRecord(_Tolerant):
    ContactId: Annotated[str, Field(min_length=1, max_length=128)]
    Channel: Text  # VOICE, CHAT, TASK, EMAIL
    InitiationMethod: Text  # INBOUND, OUTBOUND, TRANSFER, QUEUE_TRANSFER, CALLBACK, API, ...
    InitiationTimestamp: AwareDatetime
    LastUpdateTimestamp: AwareDatetime
    DisconnectTimestamp: AwareDatetime | None = None
    PreviousContactId: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    NextContactId: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    Agent: AgentInfo | None = None
    Queue: QueueInfo | None = None
    CustomerEndpoint: Endpoint | None = None
    # contact attributes set by the contact flow: where the matter and the customer come from
    Attributes: dict[str, str] | None = None
