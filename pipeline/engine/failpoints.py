"""Named points where a fault test kills the worker, at a moment a timer cannot aim at.

`CEM_FAILPOINTS=judge.written:3,snapshot.chunk_sent` makes the worker SIGKILL itself the 3rd
time it passes `judge.written` (ClickHouse written, offsets not committed yet), or the first
time it passes `snapshot.chunk_sent`. `judge.written:1:stop` makes it SIGSTOP itself instead:
the test does something to the world at that moment (stops the broker), then SIGCONTs it.
Unset (always, outside tests), a failpoint is one dict lookup on an empty dict. The points are
listed in `POINTS`, so a misspelt name fails at start.
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


ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def _parse(spec: str) -> dict[str, tuple[int, signal.Signals]]:
    armed: dict[str, tuple[int, signal.Signals]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        count, _, action = rest.partition(":")
        if name not in POINTS:
            raise ValueError(f"CEM_FAILPOINTS: unknown failpoint {name!r} (known: {', '.join(sorted(POINTS))})")
        if count and not count.isdigit():
            raise ValueError(f"CEM_FAILPOINTS: {item!r}: the pass to kill at is a number, as in {name}:3")
        if action and action not in ACTIONS:
            raise ValueError(f"CEM_FAILPOINTS: {item!r}: the action is one of {', '.join(ACTIONS)}")
        armed[name] = (int(count or 1), ACTIONS[action or "kill"])
    return armed


_armed = _parse(os.environ.get("CEM_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    """SIGKILL (or SIGSTOP) this process if `name` is armed and this is its armed pass."""
    armed = _armed.get(name)
    if armed is None:
        return
    left, sig = armed
    if left > 1:
        _armed[name] = (left - 1, sig)
        return
    if sig == signal.SIGSTOP:
        del _armed[name]  # once
    os.write(2, f"failpoint {name}: {sig.name}\n".encode())
    os.kill(os.getpid(), sig)
