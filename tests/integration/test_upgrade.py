"""Upgrading from earlier releases, which read the channel topics (0.1) and the internal
topic (0.2) in faust's consumer group and kept the judge's state in a faust table: the new
groups start where the old group left each partition, so the backlog is neither skipped nor
read twice, and the judge starts from the state the table held."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from pipeline.admin import group_offsets, producer, wait_until_processed
from pipeline.admin import read_to_end as read_topic
from pipeline.rekey import partition_of
from processors.judge import CustomerState, judge
from processors.model import Rules, Touch
from processors.normalize import to_micros
from tests.integration.conftest import Namespace

CALL = {"occurred_at": "2026-03-02T10:00:00Z", "type": "call", "customer_id": "C-9", "reason": "refund_status",
        "agent_id": "A-1"}  # fmt: skip


def test_the_resolve_group_starts_where_fausts_group_left_the_channel_topics(space: Namespace) -> None:
    t, app_id = space.settings.kafka.topics, space.settings.worker.app_id
    prod = producer(space.settings)
    # web[0]: three messages the old release had processed (invalid on purpose: read again,
    # they would land in the dead-letter topic), then one it had not
    for i in range(3):
        prod.send(t.web, value=b"not json %d" % i, partition=0)
    prod.send(
        t.web,
        value=json.dumps({**CALL, "type": "form_submit", "form": "contact", "event_id": "w-new"}).encode(),
        partition=0,
    )
    # callcenter[1]: no offset in the old group either, so it is read from the start
    prod.send(t.callcenter, value=json.dumps({**CALL, "event_id": "c-new"}).encode(), partition=1)
    prod.flush()
    prod.close()
    old = KafkaConsumer(bootstrap_servers=space.settings.kafka.bootstrap_servers, group_id=app_id,
                        enable_auto_commit=False)  # fmt: skip
    old.commit({TopicPartition(t.web, 0): OffsetAndMetadata(3, "", -1)})
    old.close()

    space.start_worker()
    wait_until_processed(space.settings, timeout_s=120)

    assert read_topic(space.settings, t.deadletter) == []  # nothing read twice
    rows = space.ch().execute(f"SELECT event_id FROM {space.db}.timeline")
    assert sorted(r[0] for r in rows) == ["c-new", "w-new"]  # nothing skipped
    committed = group_offsets(space.settings, space.settings.worker.resolve_group)
    assert committed[TopicPartition(t.web, 0)].offset == 4
    assert "where the previous release left it" in space.worker_log()


def test_the_judge_takes_over_the_state_and_position_of_release_0_2(space: Namespace) -> None:
    """Release 0.2 judged in faust's group and kept each customer's state in a faust table.
    The judge group starts where faust's group left the internal topic, and a partition
    without a snapshot is loaded from that table's changelog: a contact judged by 0.2 and one
    it had not judged yet make a repeat contact, and nothing 0.2 judged is judged again."""
    s = space.settings
    t, app_id = s.kafka.topics, s.worker.app_id
    partition = partition_of("C-9", s.kafka.partitions)
    old = Touch("C-9", "call_center", "c-old", to_micros(datetime(2026, 3, 1, 10, tzinfo=UTC)), "call",
                matter="refund_status", place="call_center:general", agent_id="A-1", is_contact=True)  # fmt: skip
    state, _ = judge(CustomerState("C-9"), old, Rules(), 0)
    new = Touch("C-9", "call_center", "c-new", to_micros(datetime(2026, 3, 2, 10, tzinfo=UTC)), "call",
                      matter="refund_status", place="call_center:general", agent_id="A-1", is_contact=True)  # fmt: skip
    admin = KafkaAdminClient(bootstrap_servers=s.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(s.worker.legacy_changelog, s.kafka.partitions, 1,
                                  topic_configs={"cleanup.policy": "compact"})])  # fmt: skip
    admin.close()
    prod = producer(s)
    prod.send(s.worker.legacy_changelog, key=b"C-9", value=state.to_json(), partition=partition)
    # the internal topic as 0.2 wrote it: one pack it had judged, one it had not
    for touch in (old, new):  # the next day, same matter
        envelope = {"kind": "touches", "touches": [orjson.loads(orjson.dumps(touch))]}
        prod.send(t.by_customer, value=orjson.dumps(envelope), partition=partition)
    prod.flush()
    prod.close()
    faust_group = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap_servers, group_id=app_id, enable_auto_commit=False)
    faust_group.commit({TopicPartition(t.by_customer, partition): OffsetAndMetadata(1, "", -1)})
    faust_group.close()

    space.start_worker()
    wait_until_processed(s, timeout_s=120)

    rows = space.ch().execute(f"SELECT event_id, friction FROM {space.db}.timeline")
    assert rows == [("c-new", ["repeat_contact"])]  # c-old is held, not judged again
    assert group_offsets(s, s.worker.judge_group)[TopicPartition(t.by_customer, partition)].offset == 2
    log = space.worker_log()
    assert "the judge group starts at 1, where the previous release left it" in log
    assert "loaded from the state table changelog of release 0.2" in log
