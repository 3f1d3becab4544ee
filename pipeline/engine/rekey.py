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
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from pydantic import ValidationError

from processors.model import Touch
from schemas.internal import ITEM, EraseEnvelope, ProfileEnvelope

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


Item = Touch | ProfileEnvelope | EraseEnvelope


@dataclass
class BadItem:
    """An item of a pack that does not decode: parked alone, the others are judged."""

    raw: bytes
    error: str


def read_items(value: bytes | None) -> list[Item | BadItem]:
    """The items of a message of the internal topic, in order. A pack's touch rows are read
    without pydantic: they are most of the traffic."""
    data = orjson.loads(value or b"null")  # orjson.JSONDecodeError is a ValueError
    if not (isinstance(data, dict) and data.get("kind") == "pack"):
        raise ValueError("kind: a message of the internal topic is a pack")
    items = data.get("items")
    if not isinstance(items, list):
        raise ValueError("items: a pack holds a list of items")
    return [_item(item) for item in items]


def _item(item: Any) -> Item | BadItem:
    try:
        if isinstance(item, dict) and item.get("kind") in ("profile", "erase"):
            return ITEM.validate_python(item)
        return Touch.from_row(item)
    except (TypeError, ValueError, KeyError, ValidationError) as e:
        return BadItem(orjson.dumps(item), f"an item of the message: {e!r}"[:500])
