"""A Kafka client retrying in a loop writes a bounded log (pipeline/ops/logs.py)."""

from __future__ import annotations

import logging
import time

from pipeline.ops.logs import quiet_repeats


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_client_failing_in_a_loop_logs_once_per_interval_and_counts_the_rest() -> None:
    clock = [1000.0]
    kept = Kept()
    client = logging.getLogger("aiokafka.client")
    other = logging.getLogger("aiokafka.consumer.fetcher")
    ours = logging.getLogger("cem.judge")
    for logger in (client, other, ours):
        logger.addHandler(kept)
    repeats = quiet_repeats(10.0)
    repeats.clock = lambda: clock[0]
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
        repeats.remove()
        for logger in (client, other, ours):
            logger.removeHandler(kept)
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


def test_debug_output_is_never_held_back_and_every_client_logger_is_filtered() -> None:
    repeats = quiet_repeats(10.0)
    try:
        for name in ("aiokafka.admin.client", "aiokafka.conn", "kafka.conn"):
            assert repeats in logging.getLogger(name).filters, name
        record = logging.LogRecord("aiokafka.conn", logging.DEBUG, __file__, 1, "sent %s", (1,), None)
        assert all(repeats.filter(record) for _ in range(5))
        record = logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "refused %s", (1,), None)
        assert [repeats.filter(record) for _ in range(3)] == [True, False, False]
    finally:
        repeats.remove()
    assert not any(repeats in logging.getLogger(n).filters for n in list(logging.root.manager.loggerDict))


def test_the_count_of_a_burst_that_stops_is_written_once_its_interval_is_over() -> None:
    clock = [1000.0]
    kept = Kept()
    client = logging.getLogger("aiokafka.client")
    client.addHandler(kept)
    repeats = quiet_repeats(10.0)
    repeats.clock = lambda: clock[0]
    try:
        for i in range(50):  # a broker away for half a second, then back for good
            clock[0] = 1000.0 + i / 100
            client.error("Unable connect to node with id %s: %s", 1, f"attempt {i}")
        repeats.flush()
        assert kept.lines == ["Unable connect to node with id 1: attempt 0"]  # its interval is not over
        clock[0] = 1012.0
        repeats.flush()
        repeats.flush()  # written once
        clock[0] = 1013.0
        client.error("Unable connect to node with id %s: %s", 1, "again")  # a new burst: a new count
    finally:
        repeats.remove()
        client.removeHandler(kept)
    assert kept.lines == [
        "Unable connect to node with id 1: attempt 0",
        "Unable connect to node with id 1: attempt 49 (49 more like this in the last 12 s)",
        "Unable connect to node with id 1: again",
    ]


def test_a_thread_writes_the_counts_and_removing_the_filter_writes_those_left() -> None:
    kept = Kept()
    client = logging.getLogger("aiokafka.client")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for logger in (client, fetcher):
        logger.addHandler(kept)
    repeats = quiet_repeats(0.2)  # the real clock, and its thread
    try:
        for i in range(5):
            client.error("Unable connect to node with id %s: %s", 1, f"attempt {i}")
        deadline = time.monotonic() + 5
        while len(kept.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(kept.lines) == 2 and kept.lines[0] == "Unable connect to node with id 1: attempt 0"
        assert kept.lines[1].startswith("Unable connect to node with id 1: attempt 4 (4 more like this in the last")
        for i in range(3):
            fetcher.error("Failed fetch messages from %s", i)
    finally:
        repeats.remove()  # its interval is not over: written all the same
        for logger in (client, fetcher):
            logger.removeHandler(kept)
    assert kept.lines[2:] == [
        "Failed fetch messages from 0",
        "Failed fetch messages from 2 (2 more like this in the last 0 s)",
    ]
