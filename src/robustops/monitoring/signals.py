"""What the monitor watches: one number per guard request, derived from its request-log record.

``SIGNALS`` maps a signal name to a :class:`Signal`, whose ``extract(record)`` returns the value
for one ``predict`` record of the guard's request log, or ``None`` when the record does not carry
it (the model did not run, a text signal on a tensor request, …). Canary requests (role
``canary``) never reach a signal: :func:`is_monitored` drops them.

Names:

=====================  ===========================================================================
``input_mean``         mean of every input value of the request (tensor requests)
``input_std``          standard deviation of every input value of the request (tensor requests)
``text_chars``         mean characters per text input (text requests)
``text_non_ascii``     share of non-ASCII characters (text requests)
``text_invisible``     share of invisible format characters, e.g. zero-width (text requests)
``anomaly_score``      mean anomaly/OOD score of the request's inputs (higher = more unusual)
``confidence``         mean top-class confidence of the request's inputs (temperature-scaled)
``abstention``         share of the request's inputs the guard abstained on, in [0, 1]
``flag``               1 when the detector's action was ``flag``, ``throttle`` or ``block``, else 0
``flag_rate_per_key``  ``flag``, watched per API key (one detector per key; the key is in the
                       alert)
``rejected``           1 when the request was refused with a 4xx status, else 0
``latency_ms``         the guard's time to answer, milliseconds
``class_share:<k>``    share of the request's inputs predicted as class ``k`` (an integer ≥ 0),
                       in [0, 1]: the predicted-class mix, one class per rule
``predicted_class``    the predicted class of each input (one value per input, categorical): the
                       whole class mix, for a ``batch-test`` rule (a G-test of class counts)
=====================  ===========================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SIGNALS", "Signal", "get_signal", "is_monitored", "signal_names"]

Record = Mapping[str, Any]

FLAG_ACTIONS = frozenset({"flag", "throttle", "block"})


@dataclass(frozen=True)
class Signal:
    """A monitored statistic: ``extract(record) -> float | None`` for one predict record;
    ``per_key`` signals run one detector per API key."""

    name: str
    description: str
    extract: Callable[[Record], float | None]
    per_key: bool = False
    unit: str = ""
    per_input: Callable[[Record], list[float]] | None = None
    categorical: bool = False

    def values(self, record: Record) -> list[float]:
        """The values this record gives: one per request (none when ``extract`` gives None),
        or one per input for a ``per_input`` signal (``predicted_class``)."""
        if self.per_input is not None:
            return self.per_input(record)
        v = self.extract(record)
        return [] if v is None else [v]


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _stat(name: str) -> Callable[[Record], float | None]:
    def extract(record: Record) -> float | None:
        stats = record.get("stats")
        return _finite(stats.get(name)) if isinstance(stats, Mapping) else None

    return extract


def _predictions(record: Record) -> list[Mapping[str, Any]]:
    preds = record.get("predictions")
    if not isinstance(preds, list):
        return []
    return [p for p in preds if isinstance(p, Mapping)]


def _mean_of(field: str) -> Callable[[Record], float | None]:
    def extract(record: Record) -> float | None:
        values = [v for p in _predictions(record) if (v := _finite(p.get(field))) is not None]
        return sum(values) / len(values) if values else None

    return extract


def _abstention(record: Record) -> float | None:
    preds = _predictions(record)
    if not preds:
        return None
    return sum(1 for p in preds if p.get("abstain") is True) / len(preds)


def _flag(record: Record) -> float | None:
    action = record.get("action")
    return None if not isinstance(action, str) else float(action in FLAG_ACTIONS)


def _rejected(record: Record) -> float | None:
    status = record.get("status")
    if isinstance(status, bool) or not isinstance(status, int):
        return None
    return float(400 <= status < 500)


def _latency(record: Record) -> float | None:
    v = _finite(record.get("latency_ms"))
    return v if v is not None and v >= 0 else None


def _labels(record: Record) -> list[float]:
    return [
        float(p["label"])
        for p in _predictions(record)
        if isinstance(p.get("label"), int)
        and not isinstance(p.get("label"), bool)
        and 0 <= p["label"] < 100_000
    ]


def _first_label(record: Record) -> float | None:
    labels = _labels(record)
    return labels[0] if labels else None


def _class_share(k: int) -> Callable[[Record], float | None]:
    def extract(record: Record) -> float | None:
        preds = _predictions(record)
        if not preds:
            return None
        return sum(1 for p in preds if p.get("label") == k) / len(preds)

    return extract


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("input_mean", "mean input value of the request", _stat("mean")),
        Signal("input_std", "standard deviation of the request's input values", _stat("std")),
        Signal("text_chars", "mean characters per text input", _stat("chars"), unit="chars"),
        Signal("text_non_ascii", "share of non-ASCII characters", _stat("non_ascii")),
        Signal("text_invisible", "share of invisible (format) characters", _stat("invisible")),
        Signal("anomaly_score", "mean anomaly (OOD) score of the inputs", _mean_of("score")),
        Signal("confidence", "mean top-class confidence of the inputs", _mean_of("confidence")),
        Signal("abstention", "share of the inputs abstained on", _abstention),
        Signal("flag", "1 when the detector flagged, throttled or blocked", _flag),
        Signal("flag_rate_per_key", "flag, one detector per API key", _flag, per_key=True),
        Signal("rejected", "1 when the request was refused with a 4xx status", _rejected),
        Signal("latency_ms", "time to answer", _latency, unit="ms"),
        Signal(
            "predicted_class",
            "the predicted class of every input (categorical: the class mix, for batch-test)",
            _first_label,
            per_input=_labels,
            categorical=True,
        ),
    )
}
"""The fixed signals by name (``class_share:<k>`` is built by :func:`get_signal`)."""

_CLASS_SHARE = re.compile(r"^class_share:(\d{1,6})$")


def get_signal(name: str) -> Signal:
    """The signal called ``name`` (a key of :data:`SIGNALS` or ``class_share:<k>``).

    Raises ``KeyError`` naming the known signals when there is none."""
    if name in SIGNALS:
        return SIGNALS[name]
    m = _CLASS_SHARE.match(name)
    if m:
        k = int(m.group(1))
        return Signal(name, f"share of the inputs predicted as class {k}", _class_share(k))
    raise KeyError(f"unknown signal {name!r}; known: {', '.join(signal_names())}")


def signal_names() -> list[str]:
    """Every signal name, with the ``class_share:<k>`` pattern last."""
    return [*SIGNALS, "class_share:<k>"]


def is_monitored(record: Record) -> bool:
    """Whether a log record feeds the signals: a ``predict`` event that is not canary traffic."""
    return record.get("event") == "predict" and record.get("role") != "canary"
