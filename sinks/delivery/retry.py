"""When to try a destination again and when to give an alert up for it (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from sinks.delivery.config import DeliverySettings


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    max_attempts: int
    max_attempts_rejected: int
    max_age_s: float

    @classmethod
    def of(cls, d: DeliverySettings) -> RetryPolicy:
        return cls(d.retry_initial_s, d.retry_max_s, d.max_attempts, d.max_attempts_rejected, d.max_age_s)

    def next_delay(self, delay: float) -> float:
        """The pause after a failed attempt, given the pause before it (0: it was up)."""
        return self.initial_s if delay <= 0 else min(delay * 2, self.max_s)

    def give_up(self, attempts: int, rejections: int, waited_s: float) -> str | None:
        """Why an alert is failed for a destination now, or None to keep trying.

        attempts: failed attempts so far, rejections among them; waited_s: since it was queued.
        """
        if rejections >= self.max_attempts_rejected:
            return f"refused {rejections} time(s) (delivery.max_attempts_rejected)"
        if attempts >= self.max_attempts:
            return f"{attempts} attempts failed (delivery.max_attempts)"
        if waited_s >= self.max_age_s:
            return f"waited {waited_s:.0f}s (delivery.max_age_s)"
        return None
