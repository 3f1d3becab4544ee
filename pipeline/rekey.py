"""The hop between the stages: touchpoints re-keyed by customer, packed per partition.

Stage B's Faust stream costs about as much per message as the judging itself, so stage A
sends each batch's touchpoints as one `TouchesEnvelope` per partition instead of one message
per touchpoint. A message must land where a per-customer message would have: on the
partition of the customer id under Kafka's default partitioner (murmur2, as the Java
client and aiokafka compute it), which is also where the `customers` table's changelog
(`use_partitioner=True`) puts that customer's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from aiokafka.partitioner import murmur2

# Well under Kafka's default 1 MB message limit (broker `message.max.bytes`) and the
# producer's request size, and big enough that a batch of 2,000 needs only a few messages.
MAX_MESSAGE_BYTES = 256 * 1024

_HEAD, _TAIL = b'{"kind":"touches","touches":[', b"]}"


@lru_cache(maxsize=65_536)  # murmur2 is pure Python (a few us): active customers repeat
def partition_of(customer_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key `customer_id.encode()`."""
    h: int = murmur2(customer_id.encode())  # aiokafka is untyped
    return (h & 0x7FFFFFFF) % partitions


def pack_touches(
    touches: Iterable[tuple[str, bytes]], partitions: int, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """(customer id, Touch.to_json()) pairs -> (partition, TouchesEnvelope JSON)
    messages, each at most `max_bytes` unless one touchpoint alone is larger. Order within
    a partition is kept."""
    by_partition: dict[int, list[bytes]] = {}
    for customer_id, touch in touches:
        by_partition.setdefault(partition_of(customer_id, partitions), []).append(touch)
    out: list[tuple[int, bytes]] = []
    room = max_bytes - len(_HEAD) - len(_TAIL)
    for partition, items in by_partition.items():
        chunk: list[bytes] = []
        size = 0
        for item in items:
            if chunk and size + len(item) + 1 > room:
                out.append((partition, _HEAD + b",".join(chunk) + _TAIL))
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        out.append((partition, _HEAD + b",".join(chunk) + _TAIL))
    return out
