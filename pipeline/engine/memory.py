"""Garbage collection in a worker that holds millions of long-lived objects, and memory
given back to the system after bursts (`TRIM_EVERY_S`).

The judge keeps every customer's recent events in memory: a few objects per event, millions
in all, nearly all of them alive for weeks. Python's cyclic collector walks every tracked
object of a generation when it collects it, and these objects soon reach the oldest one, so
its collections walk them all again and again: a pause of a second per 1.4 million objects
here, which put the p99 event -> alert latency of a full benchmark run at 2.4 s.

So the worker freezes what it holds (`gc.freeze()`: the collector leaves frozen objects alone;
it costs nothing, whatever their number) after each ClickHouse insert and after a
partition's state is loaded. Freezing an object that later becomes cyclic garbage keeps it,
so the hot path makes none: the one source there was, clickhouse-driver's columns, has its
cycle made weak (sinks/clickhouse/client.py). The young generations are still collected as
usual between two freezes, for whatever else makes cycles; measured over a run of 190,000
touchpoints, the frozen garbage was a few connections to the stats page. Collecting the
young generations before each freeze cost pauses of 50-150 ms. What is frozen as garbage
all the same is kept until a whole collection: one every `worker.gc_full_every_s`
(`settle`) bounds it, at the cost of a pause of about a second per million objects held
(about a million in the core benchmark, `make bench`'s (a3)).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from typing import Any

log = logging.getLogger("cem.memory")

#: How often the worker gives memory freed since back to the system (glibc's malloc_trim).
#: glibc keeps what a burst freed (a batch's rows, a fetch's buffers) for reuse: measured after
#: 300,000 touchpoints, 76 of the 192 MiB of the main heap were free and still counted in the
#: worker's RSS. Trimming after an insert at most once a second took 2-3 ms a time, and the
#: run's peak RSS went from 416-432 MiB to 402-414 MiB, its RSS at the end to 375-391 MiB.
TRIM_EVERY_S = 1.0


def _libc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_trim = _libc_trim()
_trimmed_at = 0.0


_full_every_s = 3600.0
_full_at = time.monotonic()  # when the last whole collection was


def tune(full_every_s: float = _full_every_s) -> None:
    """Collect the young generation less often: most of what the worker makes is kept; and
    look at everything held for cyclic garbage every `full_every_s`."""
    global _full_every_s, _full_at
    gc.set_threshold(50_000, 50, 1000)
    _full_every_s, _full_at = full_every_s, time.monotonic()


_frozen_before = False


def settle() -> float:
    """Freeze everything the collector tracks now, and every `TRIM_EVERY_S` give the memory
    freed since back to the system; returns the seconds it took. The first time, collect
    everything first: start-up leaves cyclic garbage (faust's, the admin clients')."""
    global _frozen_before, _trimmed_at, _full_at
    started = time.perf_counter()
    if not _frozen_before:
        gc.collect()
        _frozen_before = True
    elif time.monotonic() - _full_at >= _full_every_s:
        held = gc.get_freeze_count()
        gc.unfreeze()
        found = gc.collect()
        _full_at = time.monotonic()
        log.info("looked for cyclic garbage among the %d objects held: %d collected in %.2f s",
                 held, found, time.perf_counter() - started)  # fmt: skip
    gc.freeze()
    if _trim is not None and started - _trimmed_at >= TRIM_EVERY_S:
        _trim(0)
        _trimmed_at = time.perf_counter()
    return time.perf_counter() - started
