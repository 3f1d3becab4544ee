"""The hop between the stages: a resolve batch re-keyed by customer, packed per partition.

Stage A sends each batch's touchpoints, profile updates and erasures as one `PackEnvelope`
per partition instead of one message per item: every Kafka message costs the producer, the
broker and the consumer about as much as judging a touchpoint. A pack must land where a
per-customer message would have: on the partition of the customer id under Kafka's default
partitioner (murmur2, as the Java client and aiokafka compute it), the partition whose
snapshots hold that customer's state (pipeline/engine/snapshots.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from aiokafka.partitioner import murmur2

# Well under Kafka's default 1 MB message limit (broker `message.max.bytes`) and the
# producer's request size, and big enough that a batch of 2,000 needs only a few messages.
MAX_MESSAGE_BYTES = 256 * 1024

_HEAD, _TAIL = b'{"kind":"pack","items":[', b"]}"


@lru_cache(maxsize=65_536)  # murmur2 is pure Python (a few us): active customers repeat
def partition_of(customer_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key `customer_id.encode()`."""
    return partition_of_key(customer_id.encode(), partitions)


def partition_of_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message key."""
    h: int = murmur2(key)  # aiokafka is untyped
    return (h & 0x7FFFFFFF) % partitions


def pack(
    items: Iterable[tuple[str, bytes]], partitions: int, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """(customer id, one item as JSON) pairs -> (partition, PackEnvelope JSON) messages, each
    at most `max_bytes` unless one item alone is larger. Order within a partition is kept."""
    by_partition: dict[int, list[bytes]] = {}
    for customer_id, item in items:
        by_partition.setdefault(partition_of(customer_id, partitions), []).append(item)
    out: list[tuple[int, bytes]] = []
    room = max_bytes - len(_HEAD) - len(_TAIL)
    for partition, chunk_items in by_partition.items():
        chunk: list[bytes] = []
        size = 0
        for item in chunk_items:
            if chunk and size + len(item) + 1 > room:
                out.append((partition, _HEAD + b",".join(chunk) + _TAIL))
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        out.append((partition, _HEAD + b",".join(chunk) + _TAIL))
    return out
