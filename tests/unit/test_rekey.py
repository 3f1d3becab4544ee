"""The re-key hop: packed touchpoints land on their customers' partitions, within the size cap."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from pipeline.rekey import pack_touches, partition_of
from schemas.internal import ENVELOPE, TouchesEnvelope

customer_ids = st.text(min_size=1, max_size=20)


@given(st.lists(customer_ids, min_size=1, max_size=50), st.integers(1, 16))
def test_partition_is_the_one_kafkas_default_partitioner_gives_the_key(cids: list[str], n: int) -> None:
    partitions = list(range(n))
    for cid in cids:
        assert partition_of(cid, n) == DefaultPartitioner()(cid.encode(), partitions, partitions)


@given(st.lists(st.tuples(customer_ids, st.integers(0, 300)), max_size=200), st.integers(1, 8))
def test_packing_keeps_every_touch_once_in_order_on_its_partition_and_under_the_cap(
    items: list[tuple[str, int]], n: int
) -> None:
    touches = [(cid, orjson.dumps({"customer_id": cid, "seq": i, "pad": "x" * size}))
               for i, (cid, size) in enumerate(items)]  # fmt: skip
    cap = 2_000
    messages = pack_touches(touches, n, max_bytes=cap)
    seen: list[dict[str, object]] = []
    for partition, value in messages:
        env = ENVELOPE.validate_json(value)
        assert isinstance(env, TouchesEnvelope) and env.touches
        assert len(value) <= cap or len(env.touches) == 1
        assert {partition_of(str(t["customer_id"]), n) for t in env.touches} == {partition}
        seen.extend(env.touches)
    assert sorted(int(str(t["seq"])) for t in seen) == list(range(len(items)))
    for partition in {p for p, _ in messages}:  # order within a partition is the input order
        seqs = [int(str(t["seq"])) for t in seen if partition_of(str(t["customer_id"]), n) == partition]
        assert seqs == sorted(seqs)
