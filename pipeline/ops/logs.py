"""Bounding what the Kafka client libraries log while a broker is away.

With its only broker down, aiokafka retries its metadata request in a loop with no backoff
and logs every failure: about 3,000 ERROR lines a second per worker were measured here
(`Unable connect to node with id 1`, `Unable to update metadata from [1]`), so a broker away
for five minutes wrote close to a million lines. The worker lets each such message through
once per `worker.log_repeats_every_s`, and the next one it lets through says how many it held
back, so the log still shows that (and for how long) the broker was away.
"""

from __future__ import annotations

import logging

#: the client libraries whose loggers are filtered
CLIENT_LOGGERS = ("aiokafka", "kafka")
#: distinct messages remembered at most (format strings are few; forgetting one only lets it through again)
MAX_REMEMBERED = 1000


class Repeats(logging.Filter):
    """Lets each message (a logger and a format string, whatever its arguments) through at
    most once per `every_s` seconds; the next one let through counts those held back."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # -> (when let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        last = self._last.get(key)
        if last is not None and record.created - last[0] < self.every_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if len(self._last) >= MAX_REMEMBERED:
            self._last.clear()
        self._last[key] = (record.created, 0)
        if last is not None and last[1]:
            # appended to the format string, not its arguments: no % in it
            record.msg = f"{record.msg} ({last[1]} more like this in the last {record.created - last[0]:.0f} s)"
        return True


def quiet_repeats(every_s: float, prefixes: tuple[str, ...] = CLIENT_LOGGERS) -> Repeats:
    """Filter every logger under `prefixes` that exists now (a logger's own filters apply to
    the records made by it, not by its children: so each one gets it)."""
    import aiokafka  # noqa: F401  (their modules make their loggers on import)
    import kafka  # noqa: F401

    repeats = Repeats(every_s)
    names = [
        n for n in logging.root.manager.loggerDict if n in prefixes or n.startswith(tuple(p + "." for p in prefixes))
    ]
    for name in [*prefixes, *names]:
        logging.getLogger(name).addFilter(repeats)
    return repeats


def service_logging(loglevel: str, every_s: float) -> None:
    """Logging for a long-running command other than the worker (faust sets up the worker's)."""
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_repeats(every_s)
