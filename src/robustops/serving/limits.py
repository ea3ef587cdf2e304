"""Per-key token buckets: ``burst`` requests at once, refilled at ``rate`` per second.

:class:`MemoryLimiter` keeps the buckets in this process (one worker). Several workers must
share them (in-memory counters per worker let N workers admit N times the limit), which the
shared limiters do.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Limiter(Protocol):
    """Admits or refuses one request of a key."""

    def acquire(self, key: str) -> tuple[bool, float]:
        """``(admitted, retry_after_seconds)``; ``retry_after`` is 0 when admitted."""
        ...


def take(
    tokens: float, stamp: float, now: float, rate: float, burst: int
) -> tuple[bool, float, float]:
    """One token-bucket step: the bucket held ``tokens`` at time ``stamp``; at ``now`` it
    refills at ``rate``/s up to ``burst`` and gives one token if it has one. Returns
    ``(admitted, tokens_left, retry_after_seconds)``."""
    tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0, 0.0
    return False, tokens, (1.0 - tokens) / rate


class MemoryLimiter:
    """Token buckets in this process only (the ``memory`` state backend)."""

    def __init__(self, rate: float, burst: int, clock: object = time.monotonic) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> tuple[bool, float]:
        """See :class:`Limiter`."""
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            ok, left, retry = take(tokens, stamp, now, self.rate, self.burst)
            self._buckets[key] = (left, now)
        return ok, retry
