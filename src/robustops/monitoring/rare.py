"""A detector for a signal that never moved during its calibration window.

A rare event (a flagged request, a 4xx, an abstention) is often absent from the whole
calibration window: every value was the same, so there is no spread to standardise by and
:func:`robustops.monitoring.detectors.calibrate` refuses the window. The monitor then uses
:class:`RareEvents`: it counts the values that leave the calibrated constant (in the rule's
direction) among the last ``window`` values and fires when the count reaches ``threshold``.

The same counter serves a window with a handful of events (at most ``MAX_EVENT_SHARE`` of its
values), which the change detectors' bootstrap cannot standardise either: the monitor falls back
to it when they refuse such a window.

The threshold comes from the window too: with ``k`` events in ``n`` calibration values, the
event rate is at most the 90% upper Poisson bound ``λ₉₀(k) / n`` (``-ln(0.1) / n`` for
``k = 0``); ``threshold`` is the smallest count whose Poisson tail probability at that rate over
``window`` values is at most the target false-alarm rate per request
(``false_alarms_per_10k / 10 000``), and at least 2, so one stray event never pages.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from robustops.errors import SpecError

__all__ = ["KIND", "MAX_EVENT_SHARE", "RareDetection", "RareEvents", "fit_rare_events"]

KIND = "rare-events"
_VERSION = 1
MAX_EVENT_SHARE = 0.05
"""Most events (values off the window's usual value) a window may hold to be rare-event data."""


@dataclass(frozen=True)
class RareDetection:
    """A :class:`RareEvents` alarm: ``statistic`` events among the last ``n_after`` values
    reached ``threshold``; ``mean_before`` is the calibrated constant, ``mean_after`` the mean of
    those values; ``index`` the 0-based position of the value that fired since the last reset."""

    detector: str
    index: int
    statistic: float
    threshold: float
    direction: str
    mean_before: float
    mean_after: float
    n_after: int
    statistic_name: str = "events in window"
    threshold_name: str = "threshold"
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


def _poisson_tail(m: int, lam: float) -> float:
    """P(X ≥ m) for X ~ Poisson(lam)."""
    term, below = math.exp(-lam), 0.0
    for k in range(m):
        below += term
        term *= lam / (k + 1)
    return max(0.0, 1.0 - below)


class RareEvents:
    """Counts values that leave ``value`` (above it for ``up``, below for ``down``, either for
    ``both``) among the last ``window``; fires at ``threshold`` and then starts afresh."""

    kind = KIND

    def __init__(
        self,
        value: float,
        window: int,
        threshold: int,
        direction: str,
        calibration: Mapping[str, Any] | None = None,
    ) -> None:
        if direction not in ("up", "down", "both"):
            raise SpecError.single("direction", f"expected up, down or both, got {direction!r}")
        if window < 1 or not 1 <= threshold <= window:
            raise SpecError.single("threshold", f"need 1 <= threshold <= window, got {threshold}")
        self.value, self.window, self.threshold = float(value), int(window), int(threshold)
        self.direction = direction
        self._calibration = dict(calibration or {})
        self.reset()

    @property
    def calibration(self) -> dict[str, Any]:
        """How the threshold was chosen."""
        return dict(self._calibration)

    def _params(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "window": self.window,
            "threshold": self.threshold,
            "direction": self.direction,
        }

    def reset(self) -> None:
        """Forget the stream; keep the calibration."""
        self.n = 0
        self.recent: collections.deque[float] = collections.deque(maxlen=self.window)

    def _event(self, x: float) -> bool:
        if self.direction == "up":
            return x > self.value
        if self.direction == "down":
            return x < self.value
        return x != self.value

    def update(self, x: float) -> RareDetection | None:
        """Feed one value; a :class:`RareDetection` when the window holds ``threshold``
        events."""
        x = float(x)
        if not math.isfinite(x):
            raise SpecError.single("value", f"not finite: {x}")
        self.n += 1
        self.recent.append(x)
        events = sum(1 for v in self.recent if self._event(v))
        if events < self.threshold:
            return None
        det = RareDetection(
            KIND,
            self.n - 1,
            float(events),
            float(self.threshold),
            "change" if self.direction == "both" else self.direction,
            self.value,
            sum(self.recent) / len(self.recent),
            len(self.recent),
            detail={"window": self.window},
        )
        self.reset()
        return det

    def state_dict(self) -> dict[str, Any]:
        """Parameters, calibration and stream, JSON-ready."""
        return {
            "version": _VERSION,
            "kind": KIND,
            "params": self._params(),
            "calibration": self._calibration,
            "state": {"n": self.n, "recent": list(self.recent)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (written by a detector with the same parameters)."""
        if state.get("kind") != KIND or state.get("version") != _VERSION:
            raise SpecError.single("state", "not a rare-events detector state (version 1)")
        if dict(state.get("params", {})) != self._params():
            raise SpecError.single("params", "the state was written with other parameters")
        st = state["state"]
        self.n = int(st["n"])
        self.recent = collections.deque((float(v) for v in st["recent"]), maxlen=self.window)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RareEvents:
        """The detector :meth:`state_dict` describes, continuing where it was."""
        p = state.get("params")
        if not isinstance(p, Mapping):
            raise SpecError.single("params", "missing")
        det = cls(p["value"], p["window"], p["threshold"], p["direction"], state.get("calibration"))
        det.load_state_dict(state)
        return det


def _upper_90(k: int) -> float:
    """The 90% upper confidence bound of a Poisson mean after observing ``k`` events."""
    lo, hi = 0.0, 10.0 + 5.0 * k
    for _ in range(100):  # P(X <= k | mid) decreases in mid: find where it is 0.1
        mid = (lo + hi) / 2
        if 1.0 - _poisson_tail(k + 1, mid) > 0.1:
            lo = mid
        else:
            hi = mid
    return hi


def fit_rare_events(
    values: Sequence[float],
    *,
    direction: str,
    false_alarms_per_10k: float,
    window: int = 50,
    max_share: float = 0.0,
) -> RareEvents | None:
    """A :class:`RareEvents` for a calibration window whose values are all one value but for
    at most ``max_share`` of them (0: all equal); None when the window is not like that (the
    change detectors apply)."""
    if not values:
        return None
    usual = collections.Counter(values).most_common(1)[0][0]
    k = sum(1 for v in values if v != usual)
    if k > max_share * len(values):
        return None
    n = len(values)
    rate = _upper_90(k) / n  # 90% upper bound of the event rate
    lam = rate * window
    target = false_alarms_per_10k / 10_000
    threshold = next((m for m in range(2, window + 1) if _poisson_tail(m, lam) <= target), window)
    calibration = {
        "kind": KIND,
        "n": n,
        "events": k,
        "value": float(usual),
        "rate_upper_90": rate,
        "window": window,
        "threshold": threshold,
        "tail_probability": _poisson_tail(threshold, lam),
        "target_false_alarms_per_10k": false_alarms_per_10k,
    }
    return RareEvents(usual, window, threshold, direction, calibration)
