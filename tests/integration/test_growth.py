"""Nothing about one customer grows without bound: customers idle for longer than the kept
history are let go (an anonymous visitor whole), with their anonymous-id links."""

from __future__ import annotations

import json

import pytest

from pipeline.kafka.admin import Record, producer, send_all, wait_until_processed
from pipeline.kafka.admin import read_to_end as read_topic
from processors.identity import fingerprint
from tests.integration.conftest import Namespace
from tests.integration.test_faults import wait_until


def web(event_id: str, at: str, **who: object) -> bytes:
    return json.dumps({"event_id": event_id, "occurred_at": at, "type": "page_view", "page": "/", **who}).encode()


@pytest.mark.partitions(1)  # one partition: the newest event of anyone moves everyone's clock
def test_idle_customers_and_their_anonymous_links_are_let_go(space: Namespace) -> None:
    space.env["CEM_WORKER__IDLE_SWEEP_S"] = "0.5"
    worker = space.start_worker()
    t = space.settings.kafka.topics
    prod = producer(space.settings)
    login = web("w1", "2026-03-01T10:00:00Z", customer_id="C-1", identifiers={"anonymous_id": "dev-1"})
    send_all(prod, [
        Record(t.web, None, login),
        Record(t.web, None, web("w2", "2026-03-01T11:00:00Z", identifiers={"anonymous_id": "dev-2"})),
        Record(t.web, None, web("w3", "2026-03-02T11:00:00Z", customer_id="C-3")),
    ])  # fmt: skip
    wait_until_processed(space.settings, timeout_s=120)
    assert space.stats(worker)["customers"] == 3
    # 40 days on, someone else's event: the first three are idle past window + lateness (37 days)
    send_all(prod, [Record(t.web, None, web("w4", "2026-04-10T10:00:00Z", customer_id="C-4"))])
    prod.close()
    wait_until_processed(space.settings, timeout_s=120)
    wait_until(lambda: space.stats(worker)["customers"] == 1, 30, "the idle customers to be let go")
    assert space.stats(worker)["idle_customers_dropped"] == 3
    # the login's link from dev-1 to C-1 went with C-1's history
    link = fingerprint("anonymous_id", "dev-1", space.settings.secret).encode()
    values = [rec.value for rec in read_topic(space.settings, t.identity) if rec.key == link]
    assert values[0] == b"C-1" and values[-1] is None, values
    rows = space.ch().execute(f"SELECT event_id FROM {space.db}.timeline ORDER BY event_id")
    assert rows == [("w1",), ("w2",), ("w3",), ("w4",)]  # letting go of state deletes no row
