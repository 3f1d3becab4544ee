"""What every source mapping returns: a touchpoint, a message deliberately not forwarded, or
why the message cannot be one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Mapped:
    """A contract touchpoint (its JSON value, not yet validated: the shell runs the worker's
    own decoder on it, so whatever is forwarded is what the worker accepts), the Kafka key to
    send it with, and where each of its fields came from in the source message."""

    value: dict[str, Any]
    key: str | None
    origin: dict[str, str]

    def source_of(self, field: str) -> str:
        """The source path of a touchpoint field the decoder named (`fields.1` ->
        `properties.fields.1`), so an error names what the sender wrote."""
        best = ""
        for name in self.origin:
            if (field == name or field.startswith(name + ".")) and len(name) > len(best):
                best = name
        if not best:
            return field
        return self.origin[best] + field[len(best) :]


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid message that the mapping does not turn into a touchpoint (a track event it does
    not know, a group call): accepted and counted, not forwarded."""

    why: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message the contract cannot accept. `field` is the source path; `detail` quotes no
    value (it reaches logs and answers)."""

    field: str
    detail: str


Outcome = Mapped | Ignored | Invalid
