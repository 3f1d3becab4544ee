"""Upgrading from a release that read the channel topics in Faust's consumer group: the
resolve group (pipeline/source.py) starts where the old group left each partition, so the
backlog is neither skipped nor read twice."""

from __future__ import annotations

import json

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.admin import group_offsets, producer, wait_until_processed
from pipeline.admin import read_to_end as read_topic
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
