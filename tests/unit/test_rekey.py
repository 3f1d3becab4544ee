"""The re-key hop: packed items land on their customers' partitions, within the size cap."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.engine.rekey import pack, partition_of
from schemas.internal import ENVELOPE, PackEnvelope

customer_ids = st.text(min_size=1, max_size=20)


@given(st.lists(customer_ids, min_size=1, max_size=50), st.integers(1, 16))
def test_partition_is_the_one_kafkas_default_partitioner_gives_the_key(cids: list[str], n: int) -> None:
    partitions = list(range(n))
    for cid in cids:
        assert partition_of(cid, n) == DefaultPartitioner()(cid.encode(), partitions, partitions)


@given(st.lists(st.tuples(customer_ids, st.integers(0, 300)), max_size=200), st.integers(1, 8))
def test_packing_keeps_every_item_once_in_order_on_its_partition_and_under_the_cap(
    items: list[tuple[str, int]], n: int
) -> None:
    rows = [(cid, orjson.dumps([cid, i, "x" * size])) for i, (cid, size) in enumerate(items)]
    cap = 2_000
    messages = pack(rows, n, max_bytes=cap)
    seen: list[list[object]] = []
    for partition, value in messages:
        env = ENVELOPE.validate_json(value)
        assert isinstance(env, PackEnvelope) and env.items
        assert len(value) <= cap or len(env.items) == 1
        got = [item for item in env.items if isinstance(item, list)]
        assert len(got) == len(env.items)
        assert {partition_of(str(row[0]), n) for row in got} == {partition}
        seen.extend(got)
    assert sorted(int(str(row[1])) for row in seen) == list(range(len(items)))
    for partition in {p for p, _ in messages}:  # order within a partition is the input order
        seqs = [int(str(row[1])) for row in seen if partition_of(str(row[0]), n) == partition]
        assert seqs == sorted(seqs)
