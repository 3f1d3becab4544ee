"""Invalid messages go to the dead-letter topic with their reason; the worker carries on."""

from __future__ import annotations

import json

from kafka import KafkaConsumer, TopicPartition

from pipeline.admin import Record, producer, send_all, wait_until_processed
from pipeline.admin import read_to_end as read_topic
from tests.integration.conftest import Namespace

VALID = {"event_id": "ok-1", "occurred_at": "2026-03-02T10:00:00Z", "type": "call", "customer_id": "C-7",
         "reason": "refund_status", "agent_id": "A-1"}  # fmt: skip


def test_invalid_messages_land_in_the_dead_letter_topic_with_their_reason(ns: Namespace) -> None:
    t = ns.settings.kafka.topics
    bad = [
        (t.web, b'{"event_id": "x1", "occurred_at": ', "invalid_json", ""),
        (t.callcenter, json.dumps({**VALID, "event_id": "x2", "duration_s": "long"}).encode(), "invalid_field",
         "duration_s"),
        (t.callcenter, json.dumps({k: v for k, v in VALID.items() if k != "reason"}).encode(), "missing_field",
         "reason"),
        (t.booking, json.dumps({"event_id": "x4", "occurred_at": "2026-03-02T10:00:00", "type": "booking_created",
                                "customer_id": "C-7"}).encode(), "invalid_field", "occurred_at"),
        (t.web, json.dumps({"event_id": "x5", "occurred_at": "2026-03-02T10:00:00Z", "type": "page_view"}).encode(),
         "invalid_field", "customer_id"),
        (t.web, b"\xc3\x28 not utf-8", "invalid_utf8", ""),
        (t.profiles, json.dumps({"customer_id": "C-7", "version": "one", "updated_at": "2026-01-01T00:00:00Z"})
         .encode(), "invalid_field", "version"),
    ]  # fmt: skip
    good = [
        Record(t.callcenter, None, json.dumps(VALID).encode()),
        Record(t.callcenter, None, json.dumps({**VALID, "event_id": "ok-2", "occurred_at": "2026-03-03T10:00:00Z"})
               .encode()),
    ]  # fmt: skip
    prod = producer(ns.settings)
    keyed = [Record(topic, b"C-7" if topic == t.profiles else b"k-%d" % i, raw) for i, (topic, raw, _, _) in
             enumerate(bad)]  # fmt: skip
    send_all(prod, [keyed[0], good[0], *keyed[1:], good[1]])
    prod.close()
    wait_until_processed(ns.settings, timeout_s=120)

    dead = read_topic(ns.settings, t.deadletter)
    assert len(dead) == len(bad)
    by_value = {rec.value: rec for rec in dead}
    for (topic, raw, reason, field), sent in zip(bad, keyed, strict=True):
        rec = by_value[raw]  # the original bytes, untouched
        headers = {k: v.decode() for k, v in rec.headers}
        assert (headers["cem.error.reason"], headers["cem.error.field"]) == (reason, field)
        assert headers["cem.source.topic"] == topic and rec.key == sent.key
        # the provenance points at the original message
        consumer = KafkaConsumer(bootstrap_servers=ns.settings.kafka.bootstrap_servers, enable_auto_commit=False)
        tp = TopicPartition(topic, int(headers["cem.source.partition"]))
        consumer.assign([tp])
        consumer.seek(tp, int(headers["cem.source.offset"]))
        [original] = next(iter(consumer.poll(timeout_ms=5000, max_records=1).values()))
        consumer.close()
        assert original.value == raw

    rows = ns.ch().execute(f"SELECT event_id, friction FROM {ns.db}.timeline ORDER BY event_id")
    assert rows == [("ok-1", []), ("ok-2", ["repeat_contact"])]
    assert ns.worker is not None and ns.worker.poll() is None  # never died
    assert sum(ns.stats()["deadletter"].values()) == len(bad)
