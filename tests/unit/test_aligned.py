"""Stage A's records in timestamp order across partitions (pipeline/kafka/aligned.py)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.kafka.aligned import Aligner

WEB, BOOKING, CRM = TopicPartition("web", 0), TopicPartition("booking", 0), TopicPartition("crm", 0)
CHANNELS = frozenset({"web", "booking"})


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int


def recs(tp: TopicPartition, *timestamps: int, first: int = 0) -> list[Rec]:
    return [Rec(tp.topic, tp.partition, first + i, t) for i, t in enumerate(timestamps)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stamps(records: list[Rec]) -> list[tuple[str, int]]:
    return [(r.topic, r.timestamp) for r in records]


def test_partitions_at_their_end_are_merged_in_timestamp_order() -> None:
    a = Aligner(CHANNELS, max_idle_s=1.0, per_partition=100)
    assert a.add({WEB: recs(WEB, 1, 4, 5, 9), BOOKING: recs(BOOKING, 2, 3, 8)}) == []
    out = a.take(100, [WEB, BOOKING], lambda tp: False)
    assert stamps(out) == [("web", 1), ("booking", 2), ("booking", 3), ("web", 4), ("web", 5), ("booking", 8),
                           ("web", 9)]  # fmt: skip
    assert a.buffered() == 0


def test_a_partition_behind_its_end_holds_the_others_back_for_max_idle_at_most() -> None:
    clock = Clock()
    a = Aligner(CHANNELS, max_idle_s=0.5, per_partition=100, clock=clock)
    a.add({WEB: recs(WEB, 10, 11)})
    behind = {BOOKING}
    # booking has records on the broker that are not fetched: they may be older than web's
    assert a.take(100, [WEB, BOOKING], behind.__contains__) == []
    assert a.held_until == 100.5
    clock.now = 100.4
    assert a.take(100, [WEB, BOOKING], behind.__contains__) == []
    # they come, older than web's: they go first
    a.add({BOOKING: recs(BOOKING, 3, 12)})
    out = a.take(100, [WEB, BOOKING], behind.__contains__)
    # booking's last buffered one went: web's 12-or-later would have to wait for its next ones
    assert stamps(out) == [("booking", 3), ("web", 10), ("web", 11), ("booking", 12)]
    assert a.held_until == clock.now + 0.5
    # past max_idle, a partition that brings nothing is passed over until it does
    a.add({WEB: recs(WEB, 20, first=2)})
    clock.now += 0.6
    assert stamps(a.take(100, [WEB, BOOKING], behind.__contains__)) == [("web", 20)]
    assert a.held_until is None


def test_partitions_behind_at_once_wait_side_by_side_not_one_after_another() -> None:
    clock = Clock()
    a = Aligner(CHANNELS, max_idle_s=0.5, per_partition=100, clock=clock)
    other = TopicPartition("web", 1)
    a.add({WEB: recs(WEB, 10)})
    behind = {BOOKING, other}  # say their leader is away: nothing of them comes
    assert a.take(100, [WEB, BOOKING, other], behind.__contains__) == []
    assert a.held_until == 100.5
    clock.now = 100.5
    assert stamps(a.take(100, [WEB, BOOKING, other], behind.__contains__)) == [("web", 10)]
    # taken away and given back: waited for afresh
    a.drop([BOOKING])
    a.add({WEB: recs(WEB, 11, first=1)})
    assert a.take(100, [WEB, BOOKING, other], behind.__contains__) == []
    assert a.held_until == 101.0


def test_a_partition_emptied_while_behind_ends_the_batch_there() -> None:
    a = Aligner(CHANNELS, max_idle_s=5.0, per_partition=100, clock=Clock())
    a.add({WEB: recs(WEB, 1, 2, 3, 4), BOOKING: recs(BOOKING, 2)})
    behind = {BOOKING}
    assert stamps(a.take(100, [WEB, BOOKING], behind.__contains__)) == [("web", 1), ("web", 2), ("booking", 2)]
    assert a.buffered(WEB) == 2 and a.held_until is not None
    behind.clear()  # booking's end reached: nothing more to wait for
    assert stamps(a.take(100, [WEB, BOOKING], behind.__contains__)) == [("web", 3), ("web", 4)]


def test_no_wait_when_max_idle_is_zero_and_other_topics_pass_through() -> None:
    a = Aligner(CHANNELS, max_idle_s=0.0, per_partition=2)
    assert stamps(a.add({CRM: recs(CRM, 50), WEB: recs(WEB, 7, 8)})) == [("crm", 50)]
    assert not a.has_room(WEB) and a.has_room(BOOKING) and a.has_room(CRM)
    assert stamps(a.take(1, [WEB, BOOKING], lambda tp: True)) == [("web", 7)]
    assert a.has_room(WEB)
    a.drop([WEB])
    assert a.buffered() == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 50), max_size=30), min_size=1, max_size=5),
    st.lists(st.integers(1, 7), min_size=1, max_size=20),
    st.integers(1, 6),
)
def test_fetched_in_any_chunks_the_records_come_out_in_timestamp_order(
    partitions: list[list[int]], chunks: list[int], per_partition: int
) -> None:
    """Whatever sizes the fetches have, with no limit on waiting the output is every record,
    in timestamp order, each partition's in offset order."""
    tps = [TopicPartition("web", p) for p in range(len(partitions))]
    source = {tp: recs(tp, *sorted(ts)) for tp, ts in zip(tps, partitions, strict=True)}
    a = Aligner(CHANNELS, max_idle_s=float("inf"), per_partition=per_partition)
    out: list[Rec] = []
    turn = 0
    while any(source.values()) or a.buffered():
        size = chunks[turn % len(chunks)]
        turn += 1
        fetched = {}
        for tp in tps:
            if source[tp] and a.has_room(tp):
                fetched[tp], source[tp] = source[tp][:size], source[tp][size:]
        a.add(fetched)
        out += a.take(3, tps, lambda tp: bool(source[tp]))
        assert turn < 10_000
    assert [r.timestamp for r in out] == sorted(t for ts in partitions for t in ts)
    for tp in tps:
        offsets = [r.offset for r in out if r.partition == tp.partition]
        assert offsets == sorted(offsets)
