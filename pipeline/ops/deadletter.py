"""The dead-letter topic, for people: list it, export it to fix by hand, replay it.

Each dead letter is the original message (key and bytes) with headers saying why
(`cem.error.reason`, `cem.error.field`, `cem.error.detail`) and where from
(`cem.source.topic`, `cem.source.partition`, `cem.source.offset`). Replaying is safe: a
touchpoint already processed is a duplicate and is dropped; one still invalid lands here again.

Dead letters hold raw input (personal data), so an export is readable by its owner only; and
a replay goes to the channel topics (and `cem adapt`'s raw input topics) only unless forced:
a header or an edited file naming the CRM topic or an internal one would otherwise let it
rewrite profiles, erase customers or forge the identity index.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.kafka.admin import Record, producer, read_to_end, send_all
from pipeline.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    partition: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return self.headers.get("cem.error.reason", "")

    @property
    def source_topic(self) -> str:
        return self.headers.get("cem.source.topic", "")

    def to_line(self) -> dict[str, Any]:
        """A line `cem dlq replay --file` (and `cem produce`) reads back, with the reason beside it."""
        line: dict[str, Any] = {
            "topic": self.source_topic,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "reason": self.reason,
            "field": self.headers.get("cem.error.field", ""),
            "detail": self.headers.get("cem.error.detail", ""),
            "source": f"{self.source_topic}[{self.headers.get('cem.source.partition')}]"
            f"@{self.headers.get('cem.source.offset')}",
        }
        try:
            line["value"] = None if self.value is None else self.value.decode("utf-8")
        except UnicodeDecodeError:
            line["value_base64"] = base64.b64encode(self.value or b"").decode()
        return line


def read_dead_letters(settings: Settings, reason: str | None = None) -> list[DeadLetter]:
    out = []
    for rec in read_to_end(settings, settings.kafka.topics.deadletter, timeout_s=300):
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in rec.headers or ()}
        letter = DeadLetter(rec.offset, rec.partition, rec.key, rec.value, headers)
        if reason is None or letter.reason == reason:
            out.append(letter)
    return out


def export(letters: Iterable[DeadLetter], path: Path) -> int:
    """Write the letters to `path` (0600 whatever the umask, also when it existed)."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        for letter in letters:
            fh.write(json.dumps(letter.to_line()) + "\n")
            n += 1
    return n


class ReplayRefused(Exception):
    """A replay would write to topics other than the channel topics."""


def check_targets(settings: Settings, records: Sequence[Record], force: bool = False) -> None:
    """Refuse the whole replay if any record goes elsewhere than a channel topic or a raw input
    topic of `cem adapt`, whose dead letters go back there (unless forced)."""
    t = settings.kafka.topics
    channels = {*t.channels, t.connect_ctr, t.cloudevents}
    elsewhere = Counter(r.topic for r in records if r.topic not in channels)
    if elsewhere and not force:
        listed = ", ".join(f"{topic} ({n})" for topic, n in sorted(elsewhere.items()))
        raise ReplayRefused(
            f"refusing to replay {sum(elsewhere.values())} message(s) to topics other than the channel topics "
            f"({', '.join(sorted(channels))}): {listed}; nothing was sent. Pass --force to send them anyway"
        )


def replay(settings: Settings, records: Sequence[Record], force: bool = False) -> int:
    """Send the records, all or none: each must go to a channel topic unless forced."""
    check_targets(settings, records, force)
    prod = producer(settings)
    try:
        return send_all(prod, records)
    finally:
        prod.close()


def originals(letters: Iterable[DeadLetter]) -> list[Record]:
    """The original bytes, for their source topic (to re-send after fixing the cause elsewhere)."""
    return [Record(x.source_topic, x.key, x.value) for x in letters if x.source_topic]


def read_fixed(path: Path) -> list[Record]:
    """An edited export: each line's `value` (a JSON object or a string) goes to its `topic`."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if "topic" not in obj or not ("value" in obj or "value_base64" in obj):
            raise ValueError(f"{path}:{n}: needs topic and value")
        if "value_base64" in obj:
            value: bytes | None = base64.b64decode(obj["value_base64"])
        elif obj["value"] is None:
            value = None
        else:
            v = obj["value"]
            value = v.encode() if isinstance(v, str) else json.dumps(v).encode()
        key = obj.get("key")
        out.append(Record(obj["topic"], None if key is None else str(key).encode(), value))
    return out
