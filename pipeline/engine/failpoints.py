"""Named points where a fault test kills the worker, at a moment a timer cannot aim at.

`CEM_FAILPOINTS=judge.written:3,snapshot.chunk_sent` makes the worker SIGKILL itself the 3rd
time it passes `judge.written` (ClickHouse written, offsets not committed yet), or the first
time it passes `snapshot.chunk_sent`. Unset (always, outside tests), a failpoint is one dict
lookup on an empty dict. The points are listed in `POINTS`, so a misspelt name fails at start.
"""

from __future__ import annotations

import os
import signal

POINTS = {
    "index.loading": "the identity index has read part of its topic at start-up",
    "resolve.forwarded": "stage A's batch is on the internal topic, its offsets not committed",
    "bootstrap.holding": "stage A holds the touchpoints until the CRM profiles are indexed",
    "judge.loaded": "a partition's state is loaded, its log not yet read again",
    "judge.replaying": "a batch was applied silently (the log read again up to the committed offset)",
    "judge.sent": "a batch's alerts and index entries were handed to the producer",
    "judge.written": "a batch is in ClickHouse and acknowledged by the broker, its offsets not committed",
    "judge.persisted": "a batch is also in the state on disk, its offsets not committed",
    "judge.committed": "a batch's offsets are committed",
    "snapshot.chunk_sent": "a snapshot chunk is on the broker, its manifest not yet",
    "snapshot.manifest_sent": "a snapshot's manifest is on the broker, the older snapshots not yet deleted",
}


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"CEM_FAILPOINTS: unknown failpoint {name!r} (known: {', '.join(sorted(POINTS))})")
        if count and not count.isdigit():
            raise ValueError(f"CEM_FAILPOINTS: {item!r}: the pass to kill at is a number, as in {name}:3")
        armed[name] = int(count or 1)
    return armed


_armed = _parse(os.environ.get("CEM_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    """SIGKILL this process if `name` is armed and this is its armed pass."""
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os.write(2, f"failpoint {name}: SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
