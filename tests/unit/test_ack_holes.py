"""The watchdog's test for a partition whose commits are blocked (pipeline/app.py ack_holes)."""

from __future__ import annotations

from intervaltree import IntervalTree  # type: ignore[import-untyped]  # faust keeps its offset gaps in one

from pipeline.app import ack_holes


def test_a_hole_of_two_at_the_committed_position_blocks_commits() -> None:
    # what tests/integration/test_faults.py met: committed 2599, acknowledged from 2601 on
    assert ack_holes({"web-2": 2599}, {"web-2": [2601, 2602, 4033]}, {}) == {"web-2": (2599, 2601)}


def test_nothing_is_blocked_while_acks_follow_the_committed_position() -> None:
    committed = {"a": 10, "b": 10, "c": 10, "d": None}
    acked = {"a": [10, 11, 12], "b": [11, 12], "c": [], "d": [5, 6]}
    # a: contiguous; b: one missing offset, which faust commits past; c: nothing pending;
    # d: never committed (faust starts from the first acknowledged offset)
    assert ack_holes(committed, acked, {}) == {}


def test_offsets_absent_from_the_log_are_not_a_hole() -> None:
    gaps = {"p": IntervalTree.from_tuples([(11, 15)])}  # 11-14 compacted away or markers
    assert ack_holes({"p": 10}, {"p": [15, 16]}, gaps) == {}
    assert ack_holes({"p": 10}, {"p": [15, 16]}, {"p": IntervalTree.from_tuples([(13, 15)])}) == {"p": (10, 13)}
