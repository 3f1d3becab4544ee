"""Bounding what the Kafka client libraries log while a broker is away.

With its only broker down, aiokafka retries its metadata request in a loop with no backoff
and logs every failure: about 3,000 ERROR lines a second per worker were measured here
(`Unable connect to node with id 1`, `Unable to update metadata from [1]`), so a broker away
for five minutes wrote close to a million lines. The worker lets each such message through
once per `worker.log_repeats_every_s`, and the next one it lets through says how many it held
back, so the log still shows that (and for how long) the broker was away. A burst that stops
has its count written once its interval is over, by a thread that looks every interval
(`Repeats.flush`).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

#: the client libraries whose loggers are filtered
CLIENT_LOGGERS = ("aiokafka", "kafka")
#: distinct messages remembered at most (format strings are few; forgetting one only lets it through again)
MAX_REMEMBERED = 1000
#: marks the line that carries a count `Repeats.flush` wrote: never held back itself
SUMMARY = "cem_repeats_summary"


class Repeats(logging.Filter):
    """Lets each message (a logger and a format string, whatever its arguments) through at
    most once per `every_s` seconds; the next one let through counts those held back."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock  # monotonic: a wall clock set back would hold a message back that long
        self.loggers: list[logging.Logger] = []  # the loggers it was added to
        # -> (when let through, held back since, the level of the last held back)
        self._last: dict[tuple[str, str], tuple[float, int, int]] = {}
        self._latest: dict[tuple[str, str], str] = {}  # the text of the last held back, for `flush`
        self._lock = threading.Lock()  # kafka-python logs from its own threads too
        self._stop = threading.Event()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO or getattr(record, SUMMARY, False):
            return True  # debug output is asked for: all of it
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.every_s:
                self._last[key] = (last[0], last[1] + 1, record.levelno)
                self._latest[key] = record.getMessage()
                return False
            if len(self._last) >= MAX_REMEMBERED:
                self._last.clear()
                self._latest.clear()
            self._last[key] = (now, 0, record.levelno)
            self._latest.pop(key, None)  # this line carries the count
        if last is not None and last[1]:
            # appended to the format string, not its arguments: no % in it
            record.msg = f"{record.msg} ({last[1]} more like this in the last {now - last[0]:.0f} s)"
        return True

    def flush(self, *, all_held: bool = False) -> None:
        """Write the count of each message held back whose interval is over (or of every one,
        `all_held`): the burst stopped, and no next line would carry it. The line is the last
        one held back, with the count."""
        now = self.clock()
        due = []
        with self._lock:
            for key, (when, held, level) in self._last.items():
                if held and (all_held or now - when >= self.every_s):
                    due.append((key[0], self._latest.pop(key, key[1]), when, held, level))
                    self._last[key] = (when, 0, level)
        for name, text, when, held, level in due:
            logging.getLogger(name).log(level, "%s (%d more like this in the last %.0f s)", text, held, now - when,
                                        extra={SUMMARY: True})  # fmt: skip

    def start(self) -> None:
        """Flush every interval from a thread of its own, until `remove`."""
        threading.Thread(target=self._flushing, name="log-repeats", daemon=True).start()

    def _flushing(self) -> None:
        while not self._stop.wait(max(self.every_s, 0.1)):
            self.flush()

    def remove(self) -> None:
        self._stop.set()
        self.flush(all_held=True)
        for logger in self.loggers:
            logger.removeFilter(self)
        self.loggers = []


def quiet_repeats(every_s: float, prefixes: tuple[str, ...] = CLIENT_LOGGERS) -> Repeats:
    """Filter every logger under `prefixes` that exists now (a logger's own filters apply to
    the records made by it, not by its children: so each one gets it)."""
    # their modules make their loggers on import; these few are not imported by the packages'
    import aiokafka  # noqa: F401
    import aiokafka.admin  # noqa: F401
    import aiokafka.helpers  # noqa: F401
    import kafka  # noqa: F401
    import kafka.admin  # noqa: F401

    repeats = Repeats(every_s)
    if every_s > 0:
        repeats.start()
        atexit.register(repeats.remove)  # the last counts, before logging shuts down (registered before)
    names = [
        n for n in logging.root.manager.loggerDict if n in prefixes or n.startswith(tuple(p + "." for p in prefixes))
    ]
    for name in dict.fromkeys([*prefixes, *names]):
        logger = logging.getLogger(name)
        logger.addFilter(repeats)
        repeats.loggers.append(logger)
    return repeats


def service_logging(loglevel: str, every_s: float) -> None:
    """Logging for a long-running command other than the worker (faust sets up the worker's)."""
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_repeats(every_s)
