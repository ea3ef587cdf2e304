"""Calibration metrics against synthetic predictors whose calibration is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from robustops.evaluation.metrics import (
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)


def _predictor(
    confidence: Tensor, correct: Tensor, k: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Logits whose top softmax probability is ``confidence`` (the rest spread evenly) and labels
    that agree with the top class exactly where ``correct``."""
    n = confidence.shape[0]
    pred = torch.randint(0, k, (n,), generator=gen)
    probs = ((1 - confidence) / (k - 1)).unsqueeze(1).repeat(1, k)
    probs[torch.arange(n), pred] = confidence
    other = (pred + torch.randint(1, k, (n,), generator=gen)) % k
    labels = torch.where(correct, pred, other)
    return probs.log(), labels


def test_perfectly_calibrated_predictor_has_ece_near_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    n, k = 200_000, 10
    conf = 0.1 + 0.9 * torch.rand(n, generator=gen, dtype=torch.float64)
    correct = torch.rand(n, generator=gen, dtype=torch.float64) < conf
    logits, labels = _predictor(conf, correct, k, gen)
    # Sampling noise alone: ~sqrt(c(1-c)/n_bin) per bin, about 0.003 overall here.
    assert expected_calibration_error(logits, labels) < 0.01
    assert expected_calibration_error(logits, labels, adaptive=True) < 0.01


def test_overconfident_predictor_has_large_ece() -> None:
    gen = torch.Generator().manual_seed(1)
    n, k = 20_000, 10
    conf = torch.full((n,), 0.99, dtype=torch.float64)
    correct = torch.rand(n, generator=gen, dtype=torch.float64) < 0.6
    logits, labels = _predictor(conf, correct, k, gen)
    acc = float(correct.double().mean())
    assert expected_calibration_error(logits, labels) == pytest.approx(0.99 - acc, abs=1e-9)
    assert expected_calibration_error(logits, labels, adaptive=True) == pytest.approx(
        0.99 - acc, abs=1e-9
    )


def test_small_example_by_hand() -> None:
    # Two samples, two classes: p = (0.75, 0.25) label 0 (right), p = (0.3, 0.7) label 0 (wrong).
    logits = torch.tensor([[0.75, 0.25], [0.3, 0.7]], dtype=torch.float64).log()
    labels = torch.tensor([0, 0])
    brier = ((0.25**2 + 0.25**2) + (0.7**2 + 0.7**2)) / 2
    assert brier_score(logits, labels) == pytest.approx(brier)
    assert negative_log_likelihood(logits, labels) == pytest.approx(
        -(math.log(0.75) + math.log(0.3)) / 2
    )
    # Bins of width 0.2 (n_bins=5): 0.7 and 0.75 fall in (0.6, 0.8]: conf 0.725, acc 0.5.
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.225)
    bins = reliability_bins(logits, labels, n_bins=5)
    assert [b.count for b in bins] == [0, 0, 0, 2, 0]
    assert bins[3].confidence == pytest.approx(0.725)
    assert bins[3].accuracy == pytest.approx(0.5)
    assert bins[3].lower == pytest.approx(0.6) and bins[3].upper == pytest.approx(0.8)
    # Equal-mass bins with 2 bins: one sample each -> (|0.7 - 0| + |0.75 - 1|) / 2.
    assert expected_calibration_error(logits, labels, n_bins=2, adaptive=True) == pytest.approx(
        0.475
    )


def test_calibration_metrics_bundle_and_temperature() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(500, 10, generator=gen) * 3
    labels = torch.randint(0, 10, (500,), generator=gen)
    m = calibration_metrics(logits, labels)
    assert m.n == 500 and len(m.bins) == 15 and sum(b.count for b in m.bins) == 500
    assert m.ece == pytest.approx(expected_calibration_error(logits, labels))
    hot = calibration_metrics(logits, labels, temperature=2.0)
    assert hot.temperature == 2.0
    assert hot.accuracy == m.accuracy  # scaling never changes a prediction
    assert hot.mean_confidence < m.mean_confidence
    assert hot.nll == pytest.approx(negative_log_likelihood(logits / 2, labels))


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        brier_score(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
