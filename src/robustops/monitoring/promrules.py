"""Prometheus alerting rules over the guard's metrics, with thresholds from the calibration.

:func:`prometheus_rules` returns a rules file (``groups`` → ``rules`` with ``alert``, ``expr``,
``for``, ``labels``, ``annotations``) that Prometheus loads with ``rule_files:``, over the
metric names of :mod:`robustops.serving.metrics`:

- ``RobustOpsAbstentionRateHigh``: abstained ÷ answered inputs over ``window`` above the
  calibrated abstention share plus three binomial standard deviations at ``min_requests``;
- ``RobustOpsFlagRateHigh``: requests the detector flagged, throttled or blocked ÷ requests;
- ``RobustOpsRejectionRateHigh``: 4xx answers ÷ requests;
- ``RobustOpsLatencyP99High``: the p99 of the latency histogram above twice the calibrated p99
  (at least 10 ms);
- ``RobustOpsGuardDown``: no live guard worker (threshold-free);
- ``RobustOpsRequestLogErrors``: the guard could not write request-log lines (the monitor is
  blind to those requests);
- ``RobustOpsModelSwapFailed``: a worker could not follow a registry alias move.

Each rate rule also needs ``min_requests`` in the window, so a quiet night does not page on two
abstentions. The guard's metrics count canary traffic too (the calibration does not): with a
canary share of a few percent the thresholds hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from robustops.serving.metrics import PREFIX

__all__ = ["RATE_SIGNALS", "prometheus_rules", "rate_threshold"]

RATE_SIGNALS = ("abstention", "flag", "rejected", "latency_ms")
"""The signals whose calibration sets a Prometheus threshold."""

RUNBOOK = "docs/monitoring.md"


def rate_threshold(mean: float, min_requests: int) -> float:
    """Alert threshold for a rate whose stable mean is ``mean`` (a share in [0, 1]), measured on
    at least ``min_requests`` requests: the mean plus three binomial standard deviations (the
    variance at least that of one event in ``min_requests``), at most 1."""
    var = max(mean * (1.0 - mean), 1.0 / min_requests)
    return min(1.0, mean + 3.0 * math.sqrt(var / min_requests))


def _ratio(num: str, den: str, window: str) -> str:
    return f"sum(rate({num}[{window}])) / sum(rate({den}[{window}]))"


def prometheus_rules(
    service: str,
    calibration: dict[str, dict[str, Any]],
    *,
    severities: Mapping[str, str] | None = None,
    window: str = "5m",
    for_: str = "5m",
    min_requests: int = 100,
) -> dict[str, Any]:
    """The rules file as a dict (dump it with YAML).

    ``calibration`` maps a signal of :data:`RATE_SIGNALS` to its calibration summary
    (``mean``, ``p99``, ``n``; see :func:`robustops.monitoring.monitor.calibration_summary`);
    signals without one get no rule. ``severities`` gives a signal's severity label (default
    ``warning``). ``service`` is a label on every alert (the spec's name)."""
    sev = severities or {}
    req = f"{PREFIX}_requests_total"
    preds = f"{PREFIX}_predictions_total"
    volume = f"sum(increase({req}[{window}])) >= {min_requests}"
    rules: list[dict[str, Any]] = []

    def add(alert: str, signal: str, expr: str, summary: str, description: str) -> None:
        cal = calibration.get(signal, {})
        rules.append(
            {
                "alert": alert,
                "expr": expr,
                "for": for_,
                "labels": {
                    "severity": sev.get(signal, "warning"),
                    "service": service,
                    "signal": signal,
                },
                "annotations": {
                    "summary": summary,
                    "description": description
                    + f" Calibrated on {cal.get('n', '?')} stable requests "
                    f"(mean {cal.get('mean', float('nan')):.4g}).",
                    "runbook": RUNBOOK,
                },
            }
        )

    for signal, alert, num, den, what in (
        (
            "abstention",
            "RobustOpsAbstentionRateHigh",
            f'{preds}{{decision="abstain"}}',
            preds,
            "abstained inputs",
        ),
        (
            "flag",
            "RobustOpsFlagRateHigh",
            f'{req}{{action=~"flag|throttle|block"}}',
            req,
            "requests flagged, throttled or blocked",
        ),
        (
            "rejected",
            "RobustOpsRejectionRateHigh",
            f'{req}{{status=~"4.."}}',
            req,
            "requests refused with a 4xx status",
        ),
    ):
        if signal not in calibration:
            continue
        t = rate_threshold(float(calibration[signal]["mean"]), min_requests)
        vol = volume if den == req else f"sum(increase({preds}[{window}])) >= {min_requests}"
        add(
            alert,
            signal,
            f"({_ratio(num, den, window)}) > {t:.6g} and ({vol})",
            f"{service}: share of {what} above {t:.3g} for {for_}",
            f"The share of {what} over {window} is {{{{ $value | humanizePercentage }}}}; "
            f"threshold {t:.4g}.",
        )
    if "latency_ms" in calibration:
        p99 = float(calibration["latency_ms"].get("p99", 0.0))
        t = max(2.0 * p99, 10.0) / 1000.0
        add(
            "RobustOpsLatencyP99High",
            "latency_ms",
            f"histogram_quantile(0.99, sum by (le) (rate({PREFIX}_request_latency_seconds_bucket"
            f"[{window}]))) > {t:.6g}",
            f"{service}: p99 latency above {t * 1000:.3g} ms for {for_}",
            f"The p99 answer time over {window} is {{{{ $value | humanizeDuration }}}}; "
            f"threshold {t:.4g} s (twice the calibrated p99 of {p99:.4g} ms).",
        )
    rules.append(
        {
            "alert": "RobustOpsGuardDown",
            "expr": f"absent({PREFIX}_workers) or sum({PREFIX}_workers) < 1",
            "for": "1m",
            "labels": {"severity": "critical", "service": service, "signal": "workers"},
            "annotations": {
                "summary": f"{service}: no live guard worker",
                "description": "No guard worker reports to Prometheus: the service is down or "
                "its /metrics cannot be scraped.",
                "runbook": RUNBOOK,
            },
        }
    )
    for alert, expr, summary, description, severity in (
        (
            "RobustOpsRequestLogErrors",
            f"increase({PREFIX}_request_log_errors_total[{window}]) > 0",
            f"{service}: the guard cannot write its request log",
            "Request-log lines were lost (disk full? folder removed?): the monitor does not "
            "see those requests.",
            "critical",
        ),
        (
            "RobustOpsModelSwapFailed",
            f'increase({PREFIX}_model_swaps_total{{result!="ok"}}[{window}]) > 0',
            f"{service}: a guard worker could not follow the registry alias",
            "A worker kept serving its old version after the alias moved (load failed or the "
            "registry was unreachable).",
            "warning",
        ),
    ):
        rules.append(
            {
                "alert": alert,
                "expr": expr,
                "for": "0m",
                "labels": {"severity": severity, "service": service, "signal": "guard"},
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "runbook": RUNBOOK,
                },
            }
        )
    return {"groups": [{"name": f"robustops-{service}", "rules": rules}]}
