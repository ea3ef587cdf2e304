"""Following a registry alias: the guard a worker serves, swapped when the alias moves.

:class:`GuardSlot` holds the worker's current :class:`~robustops.serving.guard.Guard` (and its
``/v1/model`` description) as one reference: a request takes the pair once when it starts and
finishes on it, so a swap never mixes two models in one answer, and requests in flight finish
on the old guard. :class:`AliasFollower` runs in a thread of the worker: every ``interval``
seconds it asks where the alias points (``resolve``) and, when that is another version, builds
the new guard (``load``: weights checked against their hash, temperature, abstainer; seconds
of work, off the event loop, so serving goes on meanwhile) and swaps it in. A failed check or
load keeps the old guard, logs an error line and counts it; a version that failed to load is
tried again after ``retry_seconds`` (or at once when the alias moves elsewhere).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustops.serving.guard import Guard
from robustops.serving.metrics import GuardMetrics
from robustops.serving.requestlog import RequestLog


class GuardSlot:
    """The guard a worker serves now, with its description (``GET /v1/model``)."""

    def __init__(self, guard: Guard) -> None:
        self.current: tuple[Guard, dict[str, Any]] = (guard, guard.model.describe())

    @property
    def guard(self) -> Guard:
        """The current guard."""
        return self.current[0]

    def swap(self, guard: Guard) -> Guard:
        """Serve ``guard`` from now on (one reference assignment); returns the previous one."""
        old = self.current[0]
        self.current = (guard, guard.model.describe())
        return old


@dataclass(frozen=True)
class VersionRef:
    """A registry version an alias points to: its label (``NAME@N``) and weights hash."""

    label: str
    weights_sha256: str


def served_ref(guard: Guard) -> VersionRef:
    """The version a guard serves."""
    return VersionRef(guard.label, guard.model.weights_sha256 or "")


class AliasFollower:
    """Polls ``resolve`` every ``interval`` seconds in a daemon thread and swaps the slot's
    guard for ``load(ref)`` when the alias points to a version other than the served one.

    ``resolve`` returns where the alias points now (it may raise: the registry is
    unreachable); ``load`` builds the guard of a version (it may raise: bad hash, unloadable
    weights). Every swap and failure is a JSON line on stderr and in ``request_log``
    (``model-swap``, ``model-swap-failed``) and a count in ``metrics``
    (``robustops_guard_model_swaps_total{result}``), whose ``model_info`` follows the swap."""

    def __init__(
        self,
        slot: GuardSlot,
        resolve: Callable[[], VersionRef],
        load: Callable[[VersionRef], Guard],
        *,
        interval: float,
        request_log: RequestLog | None = None,
        metrics: GuardMetrics | None = None,
        retry_seconds: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval: {interval} must be positive")
        self.slot, self.resolve, self.load = slot, resolve, load
        self.interval = interval
        self.retry_seconds = (
            retry_seconds if retry_seconds is not None else max(30.0, 10 * interval)
        )
        self.request_log = request_log if request_log is not None else RequestLog(None)
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[VersionRef, float] = {}  # version → when its load last failed
        self._unreachable = False
        self.swaps = 0
        self.failures = 0

    def start(self) -> None:
        """Start polling (a daemon thread; idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alias-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop polling (a load in progress finishes first, within the join timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # a bug here must not end the polling for good
                self._fail("check", None, exc)

    def check(self) -> bool:
        """Ask once where the alias points and swap when it moved; True when it swapped."""
        current = served_ref(self.slot.guard)
        try:
            target = self.resolve()
        except Exception as exc:
            if not self._unreachable:
                self._fail("registry-unreachable", None, exc)
            else:
                self._count("registry-unreachable")
            self._unreachable = True
            return False
        self._unreachable = False
        if target == current:
            self._failed.clear()
            return False
        failed_at = self._failed.get(target)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_seconds:
            return False
        started = time.perf_counter()
        try:
            guard = self.load(target)
        except Exception as exc:
            self._failed[target] = time.monotonic()
            self._fail("load-failed", target, exc)
            return False
        seconds = time.perf_counter() - started
        served = served_ref(guard)
        self.slot.swap(guard)
        self._failed.pop(target, None)
        self.swaps += 1
        if self.metrics is not None:
            self.metrics.set_model(guard.model.describe())
            self.metrics.model_swaps.labels("ok").inc()
        self.request_log.event(
            {
                "event": "model-swap",
                "ts": time.time(),
                "from": current.label,
                "to": served.label,
                "from_weights_sha256": current.weights_sha256,
                "weights_sha256": served.weights_sha256,
                "load_seconds": round(seconds, 3),
            }
        )
        return True

    def _count(self, result: str) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.model_swaps.labels(result).inc()

    def _fail(self, result: str, target: VersionRef | None, exc: BaseException) -> None:
        self._count(result)
        self.request_log.event(
            {
                "event": "model-swap-failed",
                "ts": time.time(),
                "from": self.slot.guard.label,
                "to": target.label if target is not None else None,
                "result": result,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
            },
            error=True,
        )
