"""Contact trace records and CloudEvents as touchpoints, and the contact deduplication: pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import to_binary, to_structured

from pipeline.sources.adapt import cloudevent_of
from processors.sources.cloudevents import CloudEventsMapping, map_event
from processors.sources.common import Ignored, Invalid, Mapped
from processors.sources.connect import ConnectMapping, ContactDedupe, map_record
from schemas.connect import ContactTraceRecord
from schemas.touchpoints import BookingEvent, ContactEvent

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def record(**kw: Any) -> ContactTraceRecord:
    base: dict[str, Any] = {
        "ContactId": "c-2",
        "Channel": "VOICE",
        "InitiationMethod": "TRANSFER",
        "InitiationTimestamp": "2026-11-30T09:00:00Z",
        "DisconnectTimestamp": "2026-11-30T09:07:30Z",
        "LastUpdateTimestamp": "2026-11-30T09:09:00Z",
        "PreviousContactId": "c-1",
        "NextContactId": None,
        "Agent": {"ARN": "arn:aws:connect:eu-west-1:1:instance/i-1/agent/ag-9", "Username": "maria.costa"},
        "Queue": {"Name": "baggage-desk"},
        "CustomerEndpoint": {"Address": "+351912345678", "Type": "TELEPHONE_NUMBER"},
        "Attributes": {"matter": "baggage_allowance", "outcome": "Resolved", "fields": "loyalty_id, date_of_birth"},
    }
    return ContactTraceRecord.model_validate_json(orjson.dumps(base | kw))


def test_a_transfer_leg_continues_its_previous_contact() -> None:
    out = map_record(record(), ConnectMapping())
    assert isinstance(out, Mapped)
    event = ContactEvent.model_validate_json(orjson.dumps(out.value))
    assert (event.type, event.reason, event.previous_contact_id, event.agent_id, event.queue) == (
        "call",
        "baggage_allowance",
        "c-1",
        "ag-9",  # from the ARN: the user name is a person's name
        "baggage-desk",
    )
    assert (event.duration_s, event.outcome, event.fields) == (450, "resolved", ["loyalty_id", "date_of_birth"])
    assert event.identifiers is not None and event.identifiers.phone == "+351912345678"
    assert "maria.costa" not in orjson.dumps(out.value).decode()


def test_callbacks_are_new_contacts_and_next_contact_means_transferred() -> None:
    out = map_record(record(InitiationMethod="CALLBACK", NextContactId="c-3"), ConnectMapping())
    assert isinstance(out, Mapped)
    assert "previous_contact_id" not in out.value and out.value["outcome"] == "transferred"
    chat = map_record(record(Channel="CHAT", InitiationMethod="INBOUND"), ConnectMapping())
    assert isinstance(chat, Mapped) and chat.value["type"] == "chat"
    assert isinstance(map_record(record(Channel="TASK"), ConnectMapping()), Ignored)
    assert isinstance(map_record(record(CustomerEndpoint=None), ConnectMapping()), Invalid)
    custom = ConnectMapping(matter_attribute="topic", customer_id_attribute="crm")
    out = map_record(record(Attributes={"topic": "refund_status", "crm": "C-7"}, CustomerEndpoint=None), custom)
    assert isinstance(out, Mapped) and (out.value["reason"], out.value["customer_id"]) == ("refund_status", "C-7")


def test_a_contact_goes_out_once_as_its_newest_record() -> None:
    d = ContactDedupe(timedelta(seconds=30), max_held=100, max_remembered=100)
    assert d.offer("c-1", T0 + timedelta(minutes=1), "v1", T0, (0, 10)) == []
    assert d.offer("c-1", T0 + timedelta(minutes=5), "v3", T0, (0, 11)) == []
    assert d.offer("c-1", T0 + timedelta(minutes=2), "v2", T0, (0, 12)) == []  # older, arriving late
    assert d.needed_from(0) == 10 and d.needed_from(1) is None
    assert d.due(T0 + timedelta(seconds=29)) == []
    assert d.due(T0 + timedelta(seconds=30)) == ["v3"]
    assert d.needed_from(0) is None
    assert d.offer("c-1", T0 + timedelta(minutes=5), "v3", T0, (0, 13)) == []  # delivered again
    assert d.offer("c-1", T0 + timedelta(minutes=9), "v4", T0, (0, 14)) == []  # too late to change it
    assert (d.duplicates, d.late_updates) == (3, 1)


def test_contact_dedupe_is_bounded() -> None:
    d = ContactDedupe(timedelta(hours=1), max_held=2, max_remembered=3)
    out = []
    for i in range(6):
        out += d.offer(f"c-{i}", T0, f"v{i}", T0 + timedelta(seconds=i), (0, i))
    assert out == ["v0", "v1", "v2", "v3"] and len(d.held) == 2  # the oldest went out early
    assert list(d.done) == ["c-1", "c-2", "c-3"]  # the oldest forgotten first


def _event(**attrs: Any) -> CloudEvent:
    base = {"type": "com.airline.booking.created", "source": "/be", "id": "e-1", "time": "2026-11-30T09:00:00Z"}
    return CloudEvent(base | {"datacontenttype": "application/json"} | attrs, {"customer_id": "C-1", "amount": 12})


def test_cloudevents_map_by_type_suffix_in_both_kafka_modes() -> None:
    for message in (to_binary(_event(subject="X7K2LM")), to_structured(_event(subject="X7K2LM"))):
        attributes, data = cloudevent_of(dict(message.headers), None, message.value)
        out = map_event(attributes, data, CloudEventsMapping())
        assert isinstance(out, Mapped)
        event = BookingEvent.model_validate_json(orjson.dumps(out.value))
        assert (event.type, event.event_id, event.booking_ref, event.amount) == ("booking_created", "e-1", "X7K2LM", 12)
    mapping = CloudEventsMapping(types={"Reservation.Made": "booking_created"})
    assert mapping.type_of("org.example.reservation.made") == "booking_created"
    assert mapping.type_of("org.example.booking.created") is None
    assert isinstance(map_event({"type": "x.y", "time": "t"}, {}, CloudEventsMapping()), Ignored)
    assert map_event({"type": "booking.created", "time": "t"}, [1], CloudEventsMapping()) == Invalid(
        "data", "data must be a JSON object"
    )
