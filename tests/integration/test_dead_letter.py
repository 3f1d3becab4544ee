"""Invalid messages go to the dead-letter topic with their reason; the worker carries on."""

from __future__ import annotations

import json
import stat

from kafka import KafkaConsumer, TopicPartition

from pipeline.kafka.admin import Record, end_offsets, producer, send_all, wait_until_processed
from pipeline.kafka.admin import read_to_end as read_topic
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


def test_input_that_can_never_be_written_does_not_stop_the_partition(space: Namespace) -> None:
    """An event time ClickHouse cannot store, a row the server's own checks refuse, and a
    message too large to copy whole to the dead-letter topic: each goes to the dead-letter
    topic with its reason, and everything around it is written and committed."""
    t = space.settings.kafka.topics
    # A check of the operator's, in the server: a block holding event "poison-1" is refused.
    space.ch().execute(
        f"ALTER TABLE {space.db}.timeline_versions ADD COLUMN refused UInt8 MATERIALIZED throwIf(event_id = 'poison-1')"
    )
    space.start_worker()
    pre_epoch = json.dumps({**VALID, "event_id": "old-1", "occurred_at": "1969-07-20T20:17:00Z"}).encode()
    poison = json.dumps({**VALID, "event_id": "poison-1", "occurred_at": "2026-03-02T11:00:00Z"}).encode()
    huge = b'{"event_id": "huge-1", "padding": "' + b"x" * 1_040_000 + b'"}'  # over 1 MB with its headers
    good = [json.dumps({**VALID, "event_id": f"ok-{i}", "occurred_at": f"2026-03-0{i}T10:00:00Z"}).encode()
            for i in (1, 2, 3)]  # fmt: skip
    prod = producer(space.settings)
    send_all(prod, [Record(t.callcenter, b"C-7", v) for v in (good[0], pre_epoch, poison, good[1], huge, good[2])])
    prod.close()
    wait_until_processed(space.settings, timeout_s=120)

    rows = space.ch().execute(f"SELECT event_id FROM {space.db}.timeline ORDER BY event_id")
    assert rows == [("ok-1",), ("ok-2",), ("ok-3",)]
    dead = {dict(rec.headers)["cem.error.reason"].decode(): rec for rec in read_topic(space.settings, t.deadletter)}
    assert set(dead) == {"invalid_field", "clickhouse_refused", "too_large"}, set(dead)
    assert dict(dead["invalid_field"].headers)["cem.error.field"] == b"occurred_at"
    refused = dict(dead["clickhouse_refused"].headers)
    assert refused["cem.error.field"] == b"timeline_versions" and b"395" in refused["cem.error.detail"]
    assert json.loads(dead["clickhouse_refused"].value)["event_id"] == "poison-1"
    assert refused["cem.source.topic"] == t.callcenter.encode()  # provenance of the original message
    too_large = dict(dead["too_large"].headers)
    assert int(too_large["cem.error.truncated"]) == len(huge) and len(dead["too_large"].value) < len(huge)
    assert space.stats()["clickhouse_rows_refused"] == 1


def test_dlq_commands_replay_to_the_channel_topics_only_and_export_for_the_owner_only(space: Namespace) -> None:
    """Dead letters as the worker writes them (headers naming the source); no worker needed."""
    s, t = space.settings, space.settings.kafka.topics

    letters = [
        (t.callcenter, "invalid_field", "duration_s: [/] not a [bold]number[/]", json.dumps(VALID).encode()),
        (t.profiles, "missing_field", "updated_at", b'{"customer_id": "C-7", "version": 2}'),
    ]
    prod = producer(s)
    for source, reason, detail, value in letters:
        headers = [("cem.error.reason", reason.encode()), ("cem.error.field", b""),
                   ("cem.error.detail", detail.encode()), ("cem.source.topic", source.encode()),
                   ("cem.source.partition", b"0"), ("cem.source.offset", b"0")]  # fmt: skip
        prod.send(t.deadletter, key=b"k", value=value, headers=headers)
    prod.flush()
    prod.close()

    def sizes() -> dict[str, int]:
        return {topic: sum(end_offsets(s, topic).values()) for topic in (t.callcenter, t.profiles, t.identity)}

    before = sizes()
    listed = space.cem("dlq", "list", check=False)
    assert listed.returncode == 0, listed.stderr
    assert "duration_s: [/] not a [bold]number[/]" in listed.stdout and "2 dead letter(s)" in listed.stdout

    export = space.tmp / "dlq.jsonl"
    assert space.cem("dlq", "export", str(export)).returncode == 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    assert len(export.read_text().splitlines()) == 2

    refused = space.cem("dlq", "replay", check=False)
    assert refused.returncode == 2 and f"{t.profiles} (1)" in " ".join(refused.stderr.split()), refused.stderr
    forged = space.tmp / "forged.jsonl"
    forged.write_text(json.dumps({"topic": t.identity, "key": "fp:email:x", "value": "C-7"}) + "\n")
    refused = space.cem("dlq", "replay", "--file", str(forged), check=False)
    assert refused.returncode == 2 and f"{t.identity} (1)" in " ".join(refused.stderr.split()), refused.stderr
    assert sizes() == before  # all or nothing: not even the channel letter went

    assert "replayed 1" in space.cem("dlq", "replay", "--reason", "invalid_field").stdout
    assert "replayed 2" in space.cem("dlq", "replay", "--force").stdout
    after = sizes()
    assert after[t.callcenter] == before[t.callcenter] + 2 and after[t.profiles] == before[t.profiles] + 1
    assert after[t.identity] == before[t.identity]
