"""Calibration, in one place: does a model's confidence match how often it is right, and
which temperature would make it match?

All functions take logits (or log-probabilities: the softmax of ``log p`` is ``p``) ``(N, K)``
and labels ``(N,)``. Confidence is the top softmax probability, a prediction its argmax.

* ECE (Naeini et al. 2015; Guo et al. 2017): ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` over
  ``n_bins`` equal-width confidence bins (15 by default, as in Guo et al.); ``adaptive=True``
  uses equal-mass bins (each holds ~N/n_bins samples; Nixon et al. 2019), which is less biased
  when confidences pile up near 1.
* Brier score: ``mean_i Σ_k (p_ik − 1[k = y_i])²``, in [0, 2].
* NLL: ``mean_i −log p_{i, y_i}`` in nats.
* Temperature scaling (Guo et al. 2017): :func:`fit_temperature` finds the ``T`` minimising the
  NLL of ``softmax(logits / T)``; the NLL is convex in ``1/T``, so a bounded scalar search over
  ``log T`` finds the global minimum deterministically. (Fitting it on attacked held-out data
  needs attacks: :func:`robustops.defenses.fit_temperature_on`.)

Also :func:`wilson_interval`, the confidence interval of every share the reports and the gate
print.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from robustops.schema import StrictModel

__all__ = [
    "CalibrationMetrics",
    "FitOn",
    "ReliabilityBin",
    "TemperatureFit",
    "brier_score",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
    "wilson_interval",
]


class ReliabilityBin(StrictModel):
    """One confidence bin of a reliability diagram."""

    lower: float = Field(description="lower confidence edge (exclusive, except for the first bin)")
    upper: float = Field(description="upper confidence edge (inclusive)")
    count: int = Field(description="samples whose confidence falls in the bin")
    confidence: float = Field(description="mean confidence of those samples (0 when empty)")
    accuracy: float = Field(description="share of those samples predicted correctly (0 when empty)")


class CalibrationMetrics(StrictModel):
    """Calibration of one set of predictions (e.g. clean inputs, or one threat's attacked ones)."""

    n: int = Field(description="samples")
    temperature: float = Field(
        default=1.0, description="logits were divided by this before softmax"
    )
    accuracy: float = Field(description="share predicted correctly, in [0, 1]")
    mean_confidence: float = Field(description="mean top-class probability, in [0, 1]")
    ece: float = Field(description="expected calibration error, equal-width bins, in [0, 1]")
    adaptive_ece: float = Field(description="expected calibration error, equal-mass bins")
    brier: float = Field(description="Brier score, in [0, 2]")
    nll: float = Field(description="negative log-likelihood of the labels, nats per sample")
    bins: list[ReliabilityBin] = Field(description="equal-width reliability diagram")


FitOn = Literal["clean", "adversarial", "mix"]

_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e5))
"""Search range of ``log T``: ``T`` in [0.01, 1e5]."""


class TemperatureFit(StrictModel):
    """A fitted temperature and how it was obtained (recorded in the suite result)."""

    temperature: float = Field(description="logits are divided by this; > 1 softens confidence")
    fit_on: FitOn = Field(description="held-out inputs used: clean, adversarial, or both")
    n_clean: int = Field(description="clean held-out samples in the fit")
    n_adversarial: int = Field(description="adversarial held-out samples in the fit")
    attack: str | None = Field(default=None, description="attack that made the adversarial ones")
    attack_params: dict[str, object] | None = None
    threat: str | None = Field(default=None, description="threat of that attack")
    nll_before: float = Field(description="held-out NLL at T = 1, nats per sample")
    nll_after: float = Field(description="held-out NLL at the fitted T")
    ece_before: float = Field(description="held-out ECE (15 bins) at T = 1")
    ece_after: float = Field(description="held-out ECE (15 bins) at the fitted T")


def _check(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(
            f"labels must be (N,) = ({logits.shape[0]},), got shape {tuple(labels.shape)}"
        )
    return logits.detach().to(torch.float64).cpu(), labels.detach().to(torch.int64).cpu()


def _confidence(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    return conf, (pred == labels).to(torch.float64)


def _bin_index(conf: Tensor, n_bins: int, adaptive: bool) -> Tensor:
    """Bin of each sample ``(N,)``: equal-width right-closed bins ``(b/n, (b+1)/n]`` (confidence
    is at least 1/K, never 0), or equal-mass bins of consecutive sorted confidences."""
    if not adaptive:
        return (torch.ceil(conf * n_bins).to(torch.int64) - 1).clamp_(0, n_bins - 1)
    n = conf.shape[0]
    idx = torch.empty(n, dtype=torch.int64)
    idx[conf.argsort(stable=True)] = torch.div(
        torch.arange(n) * n_bins, max(n, 1), rounding_mode="floor"
    )
    return idx


def _binned(
    conf: Tensor, correct: Tensor, n_bins: int, adaptive: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: counts, summed confidence and summed correctness, each ``(n_bins,)``."""
    idx = _bin_index(conf, n_bins, adaptive)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    return counts, conf_sum, acc_sum


def expected_calibration_error(
    logits: Tensor, labels: Tensor, n_bins: int = 15, *, adaptive: bool = False
) -> float:
    """ECE of the softmax of ``logits`` ``(N, K)`` against ``labels`` ``(N,)``, in [0, 1].

    ``adaptive=False``: ``n_bins`` equal-width bins on [0, 1]; ``True``: equal-mass bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    logits, labels = _check(logits, labels)
    if logits.shape[0] == 0:
        return 0.0
    conf, correct = _confidence(logits, labels)
    _, conf_sum, acc_sum = _binned(conf, correct, n_bins, adaptive)
    return float((conf_sum - acc_sum).abs().sum() / conf.shape[0])


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = 15) -> list[ReliabilityBin]:
    """The equal-width reliability diagram: per bin count, mean confidence and accuracy."""
    logits, labels = _check(logits, labels)
    conf, correct = _confidence(logits, labels)
    counts, conf_sum, acc_sum = _binned(conf, correct, n_bins, adaptive=False)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    safe = counts.clamp_min(1.0)
    return [
        ReliabilityBin(
            lower=float(edges[b]),
            upper=float(edges[b + 1]),
            count=int(counts[b]),
            confidence=float(conf_sum[b] / safe[b]),
            accuracy=float(acc_sum[b] / safe[b]),
        )
        for b in range(n_bins)
    ]


def brier_score(logits: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score ``mean_i Σ_k (p_ik − 1[k = y_i])²``, in [0, 2]."""
    logits, labels = _check(logits, labels)
    if logits.shape[0] == 0:
        return 0.0
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).mean())


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean ``−log softmax(logits)[y]`` in nats."""
    logits, labels = _check(logits, labels)
    if logits.shape[0] == 0:
        return 0.0
    return float(torch.nn.functional.cross_entropy(logits, labels))


def calibration_metrics(
    logits: Tensor, labels: Tensor, *, n_bins: int = 15, temperature: float = 1.0
) -> CalibrationMetrics:
    """Every metric of this module for ``logits / temperature`` ``(N, K)`` and ``labels`` ``(N,)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits, labels = _check(logits, labels)
    scaled = logits / temperature
    n = int(labels.shape[0])
    conf, correct = _confidence(scaled, labels) if n else (torch.zeros(0), torch.zeros(0))
    return CalibrationMetrics(
        n=n,
        temperature=temperature,
        accuracy=float(correct.mean()) if n else 0.0,
        mean_confidence=float(conf.mean()) if n else 0.0,
        ece=expected_calibration_error(scaled, labels, n_bins),
        adaptive_ece=expected_calibration_error(scaled, labels, n_bins, adaptive=True),
        brier=brier_score(scaled, labels),
        nll=negative_log_likelihood(scaled, labels),
        bins=reliability_bins(scaled, labels, n_bins),
    )


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The ``T`` in [0.01, 1e5] minimising the NLL of ``softmax(logits / T)`` ``(N, K)`` against
    ``labels`` ``(N,)``."""
    from scipy.optimize import minimize_scalar

    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need logits (N, K) and labels (N,) with N > 0; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    z = logits.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.int64).cpu()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    res = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    best = float(res.x)
    # The bounded search is exact for a unimodal objective; keep T = 1 if it is no worse.
    return math.exp(best) if nll(best) < nll(0.0) else 1.0


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` at ``confidence`` (``(0, 1)``
    when ``n == 0``): well behaved near 0 and 1, unlike the normal approximation.

    scipy's ``binomtest(k, n).proportion_ci(method="wilson")`` computes it.
    """
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
