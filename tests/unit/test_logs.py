"""A Kafka client retrying in a loop writes a bounded log (pipeline/ops/logs.py)."""

from __future__ import annotations

import logging

import pytest

from pipeline.ops.logs import quiet_repeats


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_client_failing_in_a_loop_logs_once_per_interval_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("time.time", lambda: clock[0])  # LogRecord.created
    kept = Kept()
    client = logging.getLogger("aiokafka.client")
    other = logging.getLogger("aiokafka.consumer.fetcher")
    ours = logging.getLogger("cem.judge")
    for logger in (client, other, ours):
        logger.addHandler(kept)
    repeats = quiet_repeats(10.0)
    try:
        for i in range(3000):  # a broker away for 30 s, at 100 failures a second
            clock[0] = 1000.0 + i / 100
            client.error("Unable connect to node with id %s: %s", 1, f"[Errno 111] attempt {i}")
            if i % 1000 == 0:
                other.error("Failed fetch messages from %s", 1)
                ours.warning("commit failed (%s); retrying with the next batch", i)
        clock[0] = 1031.0
        client.error("Unable connect to node with id %s: %s", 1, "[Errno 111] last")
    finally:
        for logger in (client, other, ours):
            logger.removeHandler(kept)
            logger.removeFilter(repeats)
    connects = [line for line in kept.lines if line.startswith("Unable connect")]
    assert connects == [
        "Unable connect to node with id 1: [Errno 111] attempt 0",
        "Unable connect to node with id 1: [Errno 111] attempt 1000 (999 more like this in the last 10 s)",
        "Unable connect to node with id 1: [Errno 111] attempt 2000 (999 more like this in the last 10 s)",
        "Unable connect to node with id 1: [Errno 111] last (999 more like this in the last 11 s)",
    ]
    # another message of the client's is its own; the pipeline's own lines are never held back
    assert [line for line in kept.lines if line.startswith("Failed fetch")] == ["Failed fetch messages from 1"] * 3
    assert len([line for line in kept.lines if line.startswith("commit failed")]) == 3
