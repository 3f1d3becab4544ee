"""Read a whole topic back (all partitions, up to the end offsets at call time)."""

from __future__ import annotations

from typing import Any

from pipeline.admin import read_to_end
from pipeline.settings import Settings


def read_topic(settings: Settings, topic: str, timeout_s: float = 30) -> list[Any]:
    return read_to_end(settings, topic, timeout_s)
