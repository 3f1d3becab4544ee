"""`cem adapt` on the real broker, with a worker: Amazon Connect contact trace records shaped as
AWS documents them, and CloudEvents made by the `cloudevents` SDK in both Kafka modes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.http import to_binary as http_binary
from cloudevents.v1.http import to_structured as http_structured
from cloudevents.v1.kafka import to_binary, to_structured

from pipeline.kafka.admin import Record, producer, read_to_end, send_all, wait_until_processed
from tests.integration.collector_kit import WRITE_KEYS, collector_port, start_collector
from tests.integration.conftest import ROOT, Namespace

PHONE = "+351 912 345 678"
INSTANCE = "arn:aws:connect:eu-west-1:123456789012:instance/8f1b2d3c-0000-4000-8000-000000000001"


def ctr(
    contact: str,
    start: datetime,
    minutes: int,
    method: str,
    agent: str,
    queue: str,
    *,
    previous: str | None = None,
    next_contact: str | None = None,
    initial: str | None = None,
    updated_after_s: int = 60,
    channel: str = "VOICE",
) -> dict[str, Any]:
    """A contact trace record as in the Amazon Connect administrator guide's data model."""
    end = start + timedelta(minutes=minutes)

    def ts(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "AWSAccountId": "123456789012",
        "AWSContactTraceRecordFormatVersion": "2017-03-10",
        "Agent": {
            "ARN": f"{INSTANCE}/agent/{agent}",
            "AfterContactWorkDuration": 30,
            "AgentInteractionDuration": minutes * 60 - 40,
            "ConnectedToAgentTimestamp": ts(start + timedelta(seconds=40)),
            "CustomerHoldDuration": 0,
            "HierarchyGroups": None,
            "LongestHoldDuration": 0,
            "NumberOfHolds": 0,
            "RoutingProfile": {"ARN": f"{INSTANCE}/routing-profile/rp-1", "Name": "Basic Routing Profile"},
            "Username": f"user.{agent}",
        },
        "AgentConnectionAttempts": 1,
        "Attributes": {"matter": "baggage_allowance", "intent": "BaggageQuestion"},
        "Channel": channel,
        "ConnectedToSystemTimestamp": ts(start + timedelta(seconds=2)),
        "ContactId": contact,
        "CustomerEndpoint": {"Address": PHONE, "Type": "TELEPHONE_NUMBER"},
        "DisconnectReason": "CUSTOMER_DISCONNECT" if next_contact is None else "CONTACT_FLOW_DISCONNECT",
        "DisconnectTimestamp": ts(end),
        "InitialContactId": initial,
        "InitiationMethod": method,
        "InitiationTimestamp": ts(start),
        "InstanceARN": INSTANCE,
        "LastUpdateTimestamp": ts(end + timedelta(seconds=updated_after_s)),
        "MediaStreams": [{"Type": "AUDIO"}],
        "NextContactId": next_contact,
        "PreviousContactId": previous,
        "Queue": {
            "ARN": f"{INSTANCE}/queue/{queue}",
            "DequeueTimestamp": ts(start + timedelta(seconds=40)),
            "Duration": 38,
            "EnqueueTimestamp": ts(start + timedelta(seconds=2)),
            "Name": queue,
        },
        "Recording": None,
        "Recordings": None,
        "SystemEndpoint": {"Address": "+351210000000", "Type": "TELEPHONE_NUMBER"},
        "TransferCompletedTimestamp": None,
        "TransferredToEndpoint": None,
    }


def start_adapter(space: Namespace, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "adapt"],
        env={**space.env, "CEM_ADAPT__CONTACT_SETTLE_S": "2", "CEM_ADAPT__METRICS_PORT": str(metrics_port)},
        stdout=(space.tmp / "adapt.log").open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    space.procs.append(proc)
    return proc


def _rows(space: Namespace) -> dict[str, tuple[Any, ...]]:
    rows = space.ch().execute(
        f"SELECT event_id, customer_id, type, contact, friction, agent_id, place, resolved_by FROM {space.db}.timeline"
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def _wait_rows(space: Namespace, n: int, adapter: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while len(_rows(space)) < n:
        assert adapter.poll() is None, (space.tmp / "adapt.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{len(_rows(space))} rows of {n}"
        time.sleep(0.5)
    wait_until_processed(space.settings, timeout_s=60)


def test_connect_transfers_and_a_callback(space: Namespace) -> None:
    """A call transferred twice, then a callback days later on the same matter: one contact,
    one continuation chain (three legs and three agents: passed around, a rule of the default
    file), one repeat contact. Every record arrives twice, and two contacts also arrive in an
    older version (Connect updates records after the contact)."""
    space.start_worker()
    t = space.settings.kafka.topics
    profile = {
        "customer_id": "C-CC",
        "version": 1,
        "updated_at": "2026-01-01T00:00:00Z",
        "loyalty_tier": "silver",
        "identifiers": {"phone": "+351912345678"},  # compared by digits
        "known_fields": [],
    }
    prod = producer(space.settings)
    send_all(prod, [Record(t.profiles, b"C-CC", json.dumps(profile).encode())])
    wait_until_processed(space.settings, timeout_s=60)

    t0 = (datetime.now(UTC) - timedelta(days=6)).replace(microsecond=0)
    legs = [
        ctr("c-1", t0, 5, "INBOUND", "ag-1", "general", next_contact="c-2"),
        ctr("c-2", t0 + timedelta(minutes=5), 6, "TRANSFER", "ag-2", "loyalty", previous="c-1", next_contact="c-3",
            initial="c-1"),
        ctr("c-3", t0 + timedelta(minutes=11), 9, "QUEUE_TRANSFER", "ag-3", "baggage-desk", previous="c-2",
            initial="c-1"),
        ctr("c-4", t0 + timedelta(days=3), 4, "CALLBACK", "ag-4", "baggage-desk", previous="c-3"),
    ]  # fmt: skip
    old_c2 = ctr("c-2", t0 + timedelta(minutes=5), 6, "TRANSFER", "ag-old", "loyalty", previous="c-1",
                 next_contact="c-3", initial="c-1", updated_after_s=1)  # fmt: skip
    old_c3 = ctr("c-3", t0 + timedelta(minutes=11), 9, "QUEUE_TRANSFER", "ag-3", "general", previous="c-2",
                 initial="c-1", updated_after_s=1)  # fmt: skip
    task = ctr("t-1", t0, 1, "API", "ag-1", "general", channel="TASK")
    order = [old_c3, *legs, old_c2, *legs, task]
    records = [Record(t.connect_ctr, r["ContactId"].encode(), json.dumps(r).encode()) for r in order]
    records.append(Record(t.connect_ctr, b"bad", b'{"ContactId": "x", "Channel": "VOICE"}'))
    send_all(prod, records)
    prod.close()
    metrics_port = collector_port()
    adapter = start_adapter(space, metrics_port)
    _wait_rows(space, 4, adapter)

    assert _rows(space) == {
        "c-1": ("C-CC", "call", "new", [], "ag-1", "call_center:general", "phone"),
        "c-2": ("C-CC", "call", "continuation", [], "ag-2", "call_center:loyalty", "phone"),  # the newer record
        "c-3": ("C-CC", "call", "continuation", ["passed_around"], "ag-3", "call_center:baggage-desk", "phone"),
        "c-4": ("C-CC", "call", "new", ["repeat_contact"], "ag-4", "call_center:baggage-desk", "phone"),
    }
    alerts = space.ch().execute(
        f"SELECT kind, matter, count, severity, trigger_event_id, evidence FROM {space.db}.friction_alerts "
        "WHERE status = 'open'"
    )
    assert sorted(alerts) == [
        ("passed_around", "baggage_allowance", 3, "medium", "c-3", ["c-1", "c-2", "c-3"]),
        ("repeat_contact", "baggage_allowance", 2, "medium", "c-4", ["c-1", "c-4"]),
    ]
    # each contact went out once; the malformed record is a dead letter naming the field
    sent = [json.loads(r.value)["event_id"] for r in read_to_end(space.settings, t.callcenter)]
    assert sorted(sent) == ["c-1", "c-2", "c-3", "c-4"]
    [dead] = read_to_end(space.settings, t.deadletter)
    assert dict(dead.headers)["cem.error.field"] == b"InitiationMethod"
    # it goes back where it came from, without --force (a raw input topic of cem adapt)
    replayed = space.cem("dlq", "replay", check=False)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert [r.value for r in read_to_end(space.settings, t.connect_ctr)].count(dead.value) == 2
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:  # noqa: S310
        metrics = resp.read().decode()
    for line in (
        'cem_adapt_records_total{outcome="forwarded"} 4.0',  # four contacts
        'cem_adapt_records_total{outcome="deadletter:missing_field"}',  # the bad record (and its replay)
        'cem_adapt_records_total{outcome="ignored"} 1.0',  # the task
        "cem_adapt_records_delivered_again_total 6.0",
        "cem_adapt_contacts_held 0.0",
        "cem_adapt_contacts_remembered 4.0",
    ):
        assert line in metrics, metrics
    assert space.stop_worker(adapter) == 0
    log = (space.tmp / "adapt.log").read_text()
    assert "records delivered again 6, updates after forwarding 0" in log, log[-2000:]
    assert PHONE not in log


def test_cloudevents_in_both_kafka_modes(space: Namespace) -> None:
    space.start_worker()
    t = space.settings.kafka.topics
    t0 = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)

    def event(n: int, ce_type: str, data: dict[str, Any], **extra: str) -> CloudEvent:
        attributes = {
            "type": ce_type,
            "source": "/booking-engine/eu",
            "id": f"ce-{n}",
            "time": (t0 + timedelta(minutes=n)).isoformat(),
            "datacontenttype": "application/json",
            **extra,
        }
        return CloudEvent(attributes, data)

    events = [
        event(1, "com.airline.booking.created", {"customer_id": "C-B", "booking_ref": "X7K2LM", "amount": 420.5,
                                                 "currency": "EUR"}),
        event(2, "com.airline.checkin.started", {"customer_id": "C-B"}, subject="X7K2LM"),
        event(3, "com.airline.passenger.details.submitted",
              {"customer_id": "C-B", "step": "checkin/passenger", "fields": ["passport_number"]}),
        event(4, "com.airline.payment.failed", {"identifiers": {"email": "c.b@example.com"}, "booking_ref": "X7K2LM"}),
        event(5, "com.airline.loyalty.viewed", {"customer_id": "C-B"}),  # not a booking type: not forwarded
        event(6, "com.airline.booking.cancelled", {"booking_ref": "X7K2LM"}),  # no customer: a dead letter
    ]  # fmt: skip
    prod = producer(space.settings)
    for i, e in enumerate(events):  # binary and structured mode in turn
        message = to_binary(e) if i % 2 == 0 else to_structured(e)
        prod.send(t.cloudevents, message.value, headers=list(message.headers.items()))
    prod.send(t.cloudevents, b"not an event")
    prod.flush()
    prod.close()
    adapter = start_adapter(space)

    # over HTTP, to the collector, in both modes
    collector = start_collector(space)
    auth = (WRITE_KEYS["app"], "")
    for n, to_http in ((7, http_binary), (8, http_structured)):
        headers, body = to_http(event(n, "com.airline.checkin.completed", {"customer_id": "C-B"}))
        resp = requests.post(f"{collector.url}/cloudevents", data=body, headers=headers, auth=auth, timeout=10)
        assert resp.status_code == 200, resp.text
    headers, body = http_structured(event(9, "com.airline.checkin.completed", {"customer_id": "C-B"}))
    assert requests.post(f"{collector.url}/cloudevents", data=body, headers=headers, timeout=10).status_code == 401
    bad = requests.post(f"{collector.url}/cloudevents", data=b"{}", auth=auth, timeout=10)
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_cloudevent")
    headers, body = http_structured(event(10, "com.airline.booking.created", {"amount": 5}))  # no customer
    bad = requests.post(f"{collector.url}/cloudevents", data=body, headers=headers, auth=auth, timeout=10)
    assert (bad.status_code, bad.json()["field"]) == (400, "data.customer_id"), bad.text
    _wait_rows(space, 6, adapter)

    rows = {e: (c, typ, place, by) for e, (c, typ, _, _, _, place, by) in _rows(space).items()}
    assert {e: r[:2] for e, r in rows.items() if e != "ce-4"} == {
        "ce-1": ("C-B", "booking_created"),
        "ce-2": ("C-B", "checkin_started"),
        "ce-3": ("C-B", "passenger_details"),
        "ce-7": ("C-B", "checkin_completed"),
        "ce-8": ("C-B", "checkin_completed"),
    }
    assert rows["ce-4"][1] == "payment_failed" and rows["ce-4"][3] == "unresolved"
    assert rows["ce-3"][2] == "booking:checkin/passenger"
    dead = read_to_end(space.settings, t.deadletter)
    assert sorted(dict(d.headers)["cem.error.reason"] for d in dead) == [b"invalid_cloudevent", b"invalid_field"]


def test_a_contact_held_when_the_adapter_dies_is_forwarded_after_the_restart(space: Namespace) -> None:
    """Offsets stay below the records of held contacts: killed while it holds them (no chance
    to tidy up), the adapter forwards them after its restart, each once."""
    import signal

    from kafka.errors import KafkaError

    from pipeline.kafka.admin import end_offsets, group_offsets

    t = space.settings.kafka.topics
    t0 = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    first = [ctr(f"k-{i}", t0 + timedelta(hours=i), 3, "INBOUND", "ag-1", "general") for i in range(6)]
    prod = producer(space.settings)
    send_all(prod, [Record(t.connect_ctr, r["ContactId"].encode(), json.dumps(r).encode()) for r in first])
    prod.close()
    group = f"{space.settings.worker.app_id}-adapt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "adapt"],
        env={**space.env, "CEM_ADAPT__CONTACT_SETTLE_S": "3600", "CEM_ADAPT__METRICS_PORT": "0"},  # holds them
        stdout=(space.tmp / "adapt.log").open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    space.procs.append(proc)
    ends = end_offsets(space.settings, t.connect_ctr)

    def committed() -> dict[int, int]:
        try:
            return {tp.partition: o.offset for tp, o in group_offsets(space.settings, group).items()}
        except KafkaError:  # the group coordinator is still being elected
            return {}

    deadline = time.monotonic() + 60
    while not committed():  # it commits after every batch, also when it holds everything
        assert time.monotonic() < deadline, "the adapter committed nothing"
        time.sleep(0.5)
    time.sleep(3)
    starts = {p: 0 for p, end in ends.items() if end > 0}
    assert {p: committed().get(p, 0) for p in starts} == starts  # nothing past a held record
    assert read_to_end(space.settings, t.callcenter) == []
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    space.start_worker()
    adapter = start_adapter(space)
    _wait_rows(space, 6, adapter)
    assert sorted(_rows(space)) == [f"k-{i}" for i in range(6)]
    sent = [json.loads(r.value)["event_id"] for r in read_to_end(space.settings, t.callcenter)]
    assert sorted(sent) == [f"k-{i}" for i in range(6)]
