"""Randomized smoothing: CERTIFY and PREDICT against closed forms, reproducibility, validation,
data-set certification on MNIST and the plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import Tensor, nn

from robustops.data import Dataset
from robustops.defenses.smoothing import (
    SmoothedClassifier,
    certify_dataset,
    clopper_pearson_lower,
    max_certifiable_radius,
)
from robustops.errors import SpecError
from robustops.evaluation.certification import (
    ABSTAIN,
    CertificationResult,
    certified_accuracy_curve,
)
from robustops.evaluation.plots import plot_certified_accuracy
from robustops.models import SmallCNN

SIGMA = 0.5
ALPHA = 0.001


class _Linear(nn.Module):
    """Two classes, logits ``(0, w·x + b)``: class 1 iff ``w·x + b > 0``. Under ``x + σε`` the
    margin is ``N(w·x + b, σ²‖w‖²)``, so ``P(class 1) = Φ((w·x + b) / (σ‖w‖))`` exactly and the
    smoothed classifier's true robust radius is the distance to the hyperplane,
    ``|w·x + b| / ‖w‖``."""

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


class _Floor(nn.Module):
    """``num_classes`` classes: predicts ``floor(x[:, 0])`` (clamped), one-hot logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.k = num_classes

    def forward(self, x: Tensor) -> Tensor:
        cls = x[:, 0].floor().clamp(0, self.k - 1).long()
        return nn.functional.one_hot(cls, self.k).float()


class _Alternate(nn.Module):
    """Two classes, alternating with the row's position in the batch (an exact tie when every
    batch has an even number of rows)."""

    def forward(self, x: Tensor) -> Tensor:
        cls = torch.arange(x.shape[0], device=x.device) % 2
        return nn.functional.one_hot(cls, 2).float()


D = 20
TRUE_RADII = [0.3, 0.6, 1.0, -0.4, 1.5]  # signed distances to the hyperplane (input units)


def _linear_setup() -> tuple[_Linear, Tensor, Tensor]:
    """The linear model and inputs at the signed distances ``TRUE_RADII`` from its boundary."""
    gen = torch.Generator().manual_seed(123)
    w = torch.randn(D, generator=gen)
    b = 0.1
    model = _Linear(w, b)
    u = torch.randn(len(TRUE_RADII), D, generator=gen)
    unit = w / w.norm()
    signed = torch.tensor(TRUE_RADII)
    # Project onto the hyperplane w·x + b = 0, then move the signed distance along the normal.
    x = u - ((u @ w + b) / w.norm())[:, None] * unit + signed[:, None] * unit
    margins = (x @ w + b) / w.norm()  # float32 re-computation of the distances
    return model, x, margins


def _cp_radius(count: int, n: int, alpha: float, sigma: float) -> float:
    """Independent re-computation: σ Φ⁻¹ of Cohen's bound proportion_confint(count, n,
    alpha=2α, method="beta")[0], which is the α quantile of Beta(count, n - count + 1)."""
    p_lower = beta.ppf(alpha, count, n - count + 1) if count > 0 else 0.0
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else 0.0


# 1. CERTIFY against the closed form ---------------------------------------------------------


def test_certify_linear_model_matches_closed_form() -> None:
    model, x, margins = _linear_setup()
    smoothed = SmoothedClassifier(model, num_classes=2, sigma=SIGMA)
    n, n0 = 100_000, 100
    cert = smoothed.certify_detailed(x, n0, n, ALPHA, batch_size=25_000, generator=0)
    preds, radii = smoothed.certify(x, n0, n, ALPHA, batch_size=25_000, generator=0)
    assert torch.equal(preds, cert.predictions) and torch.equal(radii, cert.radii)
    assert preds.dtype == torch.int64 and radii.dtype == torch.float64
    assert cert.counts.sum(1).tolist() == [n] * len(x)
    assert cert.counts_selection.sum(1).tolist() == [n0] * len(x)

    for i, r_true in enumerate(margins.tolist()):
        expected_class = int(r_true > 0)
        assert int(preds[i]) == expected_class
        k = int(cert.count[i])
        # Exactly Cohen's CERTIFY for the observed count (independent scipy re-computation).
        assert float(radii[i]) == pytest.approx(_cp_radius(k, n, ALPHA, SIGMA), rel=1e-12)
        assert float(cert.p_lower[i]) == pytest.approx(beta.ppf(ALPHA, k, n - k + 1), rel=1e-12)
        # The count estimates p_A = Φ(|w·x + b| / (σ‖w‖)): 5 binomial standard deviations
        # (a 6e-7 two-sided chance of failing, and the seed is fixed).
        p_a = float(norm.cdf(abs(r_true) / SIGMA))
        sd = math.sqrt(p_a * (1 - p_a) / n)
        assert abs(k / n - p_a) <= 5 * sd
        # Convergence to the true radius |w·x + b| / ‖w‖: with the count inside those 5 sd, the
        # certified radius lies between the radii of the two extreme counts; n = 1e5 makes that
        # bracket narrow: 0.09 (0.18σ) at p_A = Φ(3) ≈ 0.9987, where Φ⁻¹ is steep, and below
        # 0.035 (0.07σ) at the other inputs.
        k_lo = math.floor(n * (p_a - 5 * sd))
        k_hi = min(math.ceil(n * (p_a + 5 * sd)), n)
        lo, hi = _cp_radius(k_lo, n, ALPHA, SIGMA), _cp_radius(k_hi, n, ALPHA, SIGMA)
        assert lo <= float(radii[i]) <= hi
        tol = max(abs(r_true) - lo, hi - abs(r_true))
        assert tol < 0.1
        assert float(radii[i]) == pytest.approx(abs(r_true), abs=tol)
        # Soundness: a lower confidence bound (fails with probability alpha per input).
        assert float(radii[i]) <= abs(r_true)


def test_certify_constant_classifier_reaches_the_radius_cap() -> None:
    """p_A = 1: all n samples agree, p_lower = alpha ** (1/n), radius = σ Φ⁻¹(alpha ** (1/n))."""
    model = _Floor(4)
    x = torch.full((3, 5), 2.5)
    smoothed = SmoothedClassifier(model, num_classes=4, sigma=0.01)
    preds, radii = smoothed.certify(x, 10, 1000, ALPHA)
    cap = 0.01 * norm.ppf(ALPHA ** (1 / 1000))
    assert preds.tolist() == [2, 2, 2]
    assert radii.tolist() == pytest.approx([cap] * 3, rel=1e-12)
    assert max_certifiable_radius(0.01, 1000, ALPHA) == pytest.approx(cap, rel=1e-12)
    assert clopper_pearson_lower(1000, 1000, ALPHA) == pytest.approx(ALPHA ** (1 / 1000))
    assert float(clopper_pearson_lower(0, 1000, ALPHA)) == 0.0


# 2. Abstention ------------------------------------------------------------------------------


def test_certify_abstains_on_a_coin_flip() -> None:
    """x on the decision boundary: p_A = 1/2, so the lower bound never exceeds 1/2."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(D, generator=gen)
    model = _Linear(w, 0.0)
    x = torch.randn(6, D, generator=gen)
    x = x - ((x @ w) / (w @ w))[:, None] * w  # w·x = 0
    smoothed = SmoothedClassifier(model, num_classes=2, sigma=SIGMA)
    cert = smoothed.certify_detailed(x, 100, 20_000, ALPHA, batch_size=10_000)
    assert cert.predictions.tolist() == [ABSTAIN] * 6
    assert cert.radii.tolist() == [0.0] * 6
    assert (cert.p_lower <= 0.5).all()
    frac = cert.count.double() / 20_000
    assert (frac - 0.5).abs().max() <= 5 * math.sqrt(0.25 / 20_000)


# 3. PREDICT ---------------------------------------------------------------------------------


def test_predict_returns_the_majority_class() -> None:
    model, x, margins = _linear_setup()
    smoothed = SmoothedClassifier(model, num_classes=2, sigma=SIGMA)
    preds = smoothed.predict(x, 2000, ALPHA, batch_size=3000)
    assert preds.tolist() == [int(m > 0) for m in margins.tolist()]
    # A classifier that ignores the noise: one class, no doubt.
    floor = SmoothedClassifier(_Floor(5), num_classes=5, sigma=0.01)
    xs = torch.tensor([[0.5, 0.0], [3.5, 0.0], [4.5, 1.0]])
    assert floor.predict(xs, 50, ALPHA).tolist() == [0, 3, 4]


def test_predict_abstains_on_ties() -> None:
    smoothed = SmoothedClassifier(_Alternate(), num_classes=2, sigma=SIGMA)
    x = torch.zeros(3, 4)
    counts = smoothed.sample_counts(x, 1000, batch_size=100)
    assert counts.tolist() == [[500, 500]] * 3  # an exact tie
    assert smoothed.predict(x, 1000, ALPHA, batch_size=100).tolist() == [ABSTAIN] * 3
    # A tie in distribution (input on the boundary): the test is not significant either.
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(D, generator=gen)
    on_boundary = SmoothedClassifier(_Linear(w, 0.0), num_classes=2, sigma=SIGMA)
    xb = torch.zeros(4, D)
    assert on_boundary.predict(xb, 5000, ALPHA).tolist() == [ABSTAIN] * 4


# 4. Reproducibility, batching and the model's state -----------------------------------------


def test_same_seed_same_output_and_generator_equivalence() -> None:
    model, x, _ = _linear_setup()
    smoothed = SmoothedClassifier(model, num_classes=2, sigma=SIGMA)
    a = smoothed.certify(x, 50, 3000, ALPHA, batch_size=700, generator=7)
    b = smoothed.certify(x, 50, 3000, ALPHA, batch_size=700, generator=7)
    c = smoothed.certify(
        x, 50, 3000, ALPHA, batch_size=700, generator=torch.Generator().manual_seed(7)
    )
    for u, v in ((a, b), (a, c)):
        assert torch.equal(u[0], v[0]) and torch.equal(u[1], v[1])
    d = smoothed.certify_detailed(x, 50, 3000, ALPHA, batch_size=700, generator=8)
    e = smoothed.certify_detailed(x, 50, 3000, ALPHA, batch_size=700, generator=7)
    assert not torch.equal(d.counts, e.counts)  # another seed draws other noise
    assert smoothed.predict(x, 500, ALPHA, generator=3).tolist() == (
        smoothed.predict(x, 500, ALPHA, generator=3).tolist()
    )


def test_batch_size_does_not_change_the_distribution() -> None:
    model, x, _ = _linear_setup()
    smoothed = SmoothedClassifier(model, num_classes=2, sigma=SIGMA)
    n = 20_000
    ref = smoothed.certify_detailed(x, 100, n, ALPHA, batch_size=50_000, generator=0)
    for bs in (997, 4096):
        other = smoothed.certify_detailed(x, 100, n, ALPHA, batch_size=bs, generator=1)
        assert torch.equal(other.predictions, ref.predictions)
        for i in range(len(x)):
            k1, k2 = int(ref.count[i]), int(other.count[i])
            p = k1 / n
            # Two independent Binomial(n, p) counts: their difference has sd sqrt(2np(1-p)).
            delta = math.ceil(5 * math.sqrt(2 * n * max(p * (1 - p), 1 / n)))
            assert abs(k1 - k2) <= delta
            lo = _cp_radius(max(k1 - delta, 0), n, ALPHA, SIGMA)
            hi = _cp_radius(min(k1 + delta, n), n, ALPHA, SIGMA)
            assert lo <= float(other.radii[i]) <= hi


def test_inputs_packed_into_batches_are_counted_in_their_own_slot() -> None:
    """Batches holding copies of several inputs (n0, n smaller than the batch, mixed phases):
    each copy is counted for its own input, exactly."""
    model = _Floor(6)
    x = torch.tensor([[0.5], [1.5], [2.5], [3.5], [4.5]]).repeat(1, 3)
    smoothed = SmoothedClassifier(model, num_classes=6, sigma=1e-3)
    for bs in (1, 4, 10, 37, 1000):
        cert = smoothed.certify_detailed(x, 7, 13, ALPHA, batch_size=bs)
        assert cert.counts_selection.tolist() == [
            [7 if c == i else 0 for c in range(6)] for i in range(5)
        ]
        assert cert.counts.tolist() == [[13 if c == i else 0 for c in range(6)] for i in range(5)]
        assert smoothed.sample_counts(x, 3, batch_size=bs).tolist() == [
            [3 if c == i else 0 for c in range(6)] for i in range(5)
        ]


def test_model_mode_and_layout_are_restored(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    model, x, _ = _linear_setup()
    model.train()
    SmoothedClassifier(model, num_classes=2, sigma=SIGMA).certify(x, 10, 100, ALPHA)
    assert model.modes and not any(model.modes)  # ran in eval mode
    assert model.training  # and restored

    xs = mnist.x_test[:4]
    outs = {}
    for fmt in ("contiguous", "channels_last"):
        smoothed = SmoothedClassifier(trained_cnn, num_classes=10, sigma=0.25, memory_format=fmt)
        outs[fmt] = smoothed.certify_detailed(xs, 20, 400, ALPHA, batch_size=300)
        assert all(p.is_contiguous() for p in trained_cnn.parameters())
        assert not trained_cnn.training
    # Single-channel images: the same noise in both layouts, so only rounding can differ.
    a, b = outs["contiguous"], outs["channels_last"]
    assert torch.equal(a.guesses, b.guesses)
    assert (a.counts - b.counts).abs().sum() <= 4 * 400 // 100


# 5. Argument validation ---------------------------------------------------------------------


def _field(exc: pytest.ExceptionInfo[SpecError]) -> str:
    return exc.value.errors[0][0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.5}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"memory_format": "nhwc"}, "memory_format"),
    ],
)
def test_constructor_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"num_classes": 2, "sigma": 0.5, **kwargs}
    with pytest.raises(SpecError) as exc:
        SmoothedClassifier(_Linear(torch.ones(3), 0.0), **args)
    assert _field(exc) == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"n": 10.5}, "n"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"batch_size": 0}, "batch_size"),
        ({"generator": "seed"}, "generator"),
    ],
)
def test_call_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    smoothed = SmoothedClassifier(_Linear(torch.ones(3), 0.0), num_classes=2, sigma=0.5)
    args: dict[str, Any] = {"n0": 10, "n": 100, "alpha": 0.01, "batch_size": 50, **kwargs}
    with pytest.raises(SpecError) as exc:
        smoothed.certify(torch.zeros(2, 3), **args)
    assert _field(exc) == field
    if "n0" not in kwargs:
        del args["n0"]
        with pytest.raises(SpecError) as exc:
            smoothed.predict(torch.zeros(2, 3), **args)
        assert _field(exc) == field


def test_other_validation_errors() -> None:
    smoothed = SmoothedClassifier(_Linear(torch.ones(3), 0.0), num_classes=3, sigma=0.5)
    with pytest.raises(SpecError) as exc:
        smoothed.certify(torch.zeros(2, 3), 10, 100, 0.01)  # the model has 2 logits, not 3
    assert _field(exc) == "num_classes"
    with pytest.raises(SpecError) as exc:
        smoothed.certify(torch.zeros(2, 3, dtype=torch.int64), 10, 100, 0.01)
    assert _field(exc) == "inputs"
    with pytest.raises(SpecError) as exc:
        SmoothedClassifier(lambda x: x, num_classes=2, sigma=0.5)  # type: ignore[arg-type]
    assert _field(exc) == "base"
    model = _Linear(torch.ones(3), 0.0)
    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)
    for kwargs, field in (
        ({"radii": (0.0, -1.0)}, "radii"),
        ({"seed": 1.5}, "seed"),
        ({"n0": 0}, "n0"),
        ({"sigma": 0.0}, "sigma"),
    ):
        args: dict[str, Any] = {"num_classes": 2, "sigma": 0.5, "n0": 5, "n": 20, **kwargs}
        with pytest.raises(SpecError) as exc:
            certify_dataset(model, x, y, **args)
        assert _field(exc) == field
    with pytest.raises(SpecError) as exc:
        certify_dataset(model, x, y[:1], num_classes=2, sigma=0.5)
    assert _field(exc) == "labels"


# 6. certify_dataset on MNIST and 7. the plot -------------------------------------------------


def test_certify_dataset_on_mnist(trained_cnn: SmallCNN, mnist: Dataset, tmp_path: Path) -> None:
    x, y = mnist.x_test[:10], mnist.y_test[:10]
    radii = (0.0, 0.25, 0.5, 0.75, 1.0)
    settings: dict[str, Any] = {"n0": 32, "n": 300, "alpha": 0.01, "batch_size": 500, "seed": 0}
    results = [
        certify_dataset(trained_cnn, x, y, num_classes=10, sigma=s, radii=radii, **settings)
        for s in (0.12, 0.25)
    ]
    for res in results:
        assert res.n_samples == 10
        assert len(res.predictions) == len(res.radii) == len(res.correct) == 10
        assert res.labels == y.tolist()
        again = CertificationResult.model_validate_json(res.model_dump_json())
        assert again == res
        accs = [res.certified_accuracy[str(float(r))] for r in radii]
        assert accs == sorted(accs, reverse=True)  # monotone non-increasing in the radius
        assert list(res.certified_accuracy) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
        assert accs[0] == res.clean_accuracy
        assert accs == [res.certified_accuracy_at(r) for r in radii]
        assert res.clean_accuracy >= 0.75  # a 95%-accurate CNN under mild noise
        for p, r, ok, label in zip(
            res.predictions, res.radii, res.correct, res.labels, strict=True
        ):
            assert ok == (p == label and p != ABSTAIN)
            assert (r > 0) == (p != ABSTAIN)
            assert r <= res.max_certifiable_radius + 1e-12
        acr = sum(r for r, ok in zip(res.radii, res.correct, strict=True) if ok) / 10
        assert res.average_certified_radius == pytest.approx(acr)
        assert res.abstain_rate == pytest.approx(res.predictions.count(ABSTAIN) / 10)
        assert res.samples_per_second > 0 and res.wall_time_s > 0
        curve = certified_accuracy_curve(res)
        assert curve[0] == (0.0, res.clean_accuracy)
        values = [a for _, a in curve]
        assert values == sorted(values, reverse=True)
        assert certified_accuracy_curve(res, [1.0, 0.0]) == [
            (0.0, res.certified_accuracy_at(0.0)),
            (1.0, res.certified_accuracy_at(1.0)),
        ]
    # Every field is documented (the model is embedded in result files).
    schema = CertificationResult.model_json_schema()
    assert all("description" in f for f in schema["properties"].values())
    # 7. the plot
    out = plot_certified_accuracy(results, tmp_path / "plots" / "certified.png")
    data = out.read_bytes()
    assert out == tmp_path / "plots" / "certified.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_clopper_pearson_matches_cohen_bound() -> None:
    """proportion_confint(k, n, alpha=2α, method="beta")[0] is the α quantile of
    Beta(k, n - k + 1); check it against its defining property P(X >= k | p_lower) = α."""
    from scipy.stats import binom

    n = 500
    ks = np.array([1, 120, 250, 499, 500])
    lows = clopper_pearson_lower(ks, n, ALPHA)
    for k, p in zip(ks.tolist(), lows.tolist(), strict=True):
        assert binom.sf(k - 1, n, p) == pytest.approx(ALPHA, rel=1e-6)


def test_defenses_do_not_own_the_certification_record() -> None:
    """The record and its figure live in evaluation (which never imports defenses); the
    defense re-exports the same objects."""
    from robustops.defenses import smoothing

    assert smoothing.CertificationResult is CertificationResult
    assert smoothing.plot_certified_accuracy is plot_certified_accuracy
    assert smoothing.ABSTAIN == ABSTAIN
