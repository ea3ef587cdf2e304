"""Out-of-distribution scores and honest abstention: the library core a prediction service calls
to decide whether to answer with a label or to abstain.

**Scores** (:class:`OODDetector`; every score is ``Tensor (N,)`` float64, *larger = more
anomalous*):

* ``"msp"`` — the baseline of Hendrycks & Gimpel (2017): ``−max_k softmax(z / T)_k``, in
  ``[−1, −1/K]``.
* ``"energy"`` — Liu et al. (2020): ``E(x) = −T · logsumexp(z / T)`` in logit units; in-
  distribution inputs get low (very negative) energy.
* ``"mahalanobis"`` — Lee et al. (2018), on the model's penultimate features ``f(x)`` (``D``
  floats): ``min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c)``, a squared distance, with class-conditional means
  ``μ_c`` and one shared (pooled within-class) covariance ``Σ`` fitted on clean in-distribution
  training data. ``Σ`` is shrunk towards ``(tr Σ / D) · I`` — by the Ledoit–Wolf estimate of the
  shrinkage by default — so it is invertible even when ReLU features leave units dead. The
  features come from a forward hook: by default the *input* of the model's last ``nn.Linear``
  (for :class:`~robustops.models.SmallCNN` the 128 post-ReLU units of ``head``, for
  :class:`~robustops.models.MLP` the last hidden layer), or the output of a named submodule
  (``layer="head.2"``), or a user function of the input. Lee et al.'s input pre-processing and
  per-layer ensemble are not used: one forward pass, no gradients.
* ``"relative-mahalanobis"`` — Ren et al. (2021): the Mahalanobis score minus the squared
  distance to one background Gaussian fitted on all the training features (their mean and
  shrunk covariance), ``min_c MD_c(f) − MD_0(f)``. It discounts the directions in which every
  input varies, and fixes the plain score's failure on near shifts (on the MNIST CNN: AUROC
  0.93 instead of 0.45 on upscaled 8×8 digits, see ``BENCHMARKS.md``).

**Conformal threshold** (:func:`conformal_threshold`, split conformal prediction, Vovk et al.
2005; Angelopoulos & Bates 2021): with ``n`` scores ``s_1 … s_n`` of held-out clean
in-distribution inputs and ``k = ⌈(n + 1)(1 − α)⌉``, the threshold is the ``k``-th smallest score
``s_(k)`` and an input is abstained on when its score is *strictly above* it.

*Guarantee.* If the calibration inputs and a new clean input are exchangeable (e.g. i.i.d. draws
from the same distribution), ``P(s_new > s_(k)) ≤ 1 − k/(n + 1) ≤ α``: the false-abstain rate on
clean data is at most ``α``, with any score and any model, ties included. With continuous scores
(no ties) it is also at least ``α − 1/(n + 1)``.

*Assumptions and limits.* The probability is over the draw of the calibration set *and* of the
new input (marginal coverage). For one fixed calibration set the false-abstain rate is itself
random, ``Beta(n + 1 − k, k)`` distributed for continuous scores: it fluctuates around ``α`` with
a standard deviation of about ``sqrt(α(1 − α)/n)``, so calibrate on hundreds of inputs or more.
The calibration inputs must be *held out*: neither the model nor the Mahalanobis statistics may
have been fitted on them (training inputs score as more typical than fresh ones, which would
make the threshold too low and the false-abstain rate higher than ``α``). The guarantee breaks
under any shift of the clean distribution after calibration (a new scanner, a new population):
recalibrate then. It says nothing about how many out-of-distribution inputs are caught — that is
what the AUROC in ``BENCHMARKS.md`` measures. The threshold needs ``n ≥ ⌈(1 − α)/α⌉`` (99 for
``α = 0.01``); fewer are refused.

**Abstention** (:class:`Abstainer`): a fitted detector, its conformal threshold and a
temperature from :mod:`robustops.defenses.calibration` (Guo et al. 2017), with an optional
minimum confidence. Per input it answers the label with its calibrated confidence
``max softmax(z / T_cal)``, or abstains with the reasons: the OOD score above the threshold,
and/or the confidence below the minimum. The conformal guarantee covers the OOD rule alone; a
minimum confidence adds abstentions on clean data that no ``α`` bounds (the benchmark reports
the combined rate). :meth:`Abstainer.save` writes one safetensors file whose header holds the
JSON metadata (the model's weight hash, the score, the threshold and the temperature), written
atomically; :meth:`Abstainer.load` checks it against the model it is given. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import Field, ValidationError
from torch import Tensor, nn

from robustops.defenses.calibration import TemperatureFit, fit_temperature_on
from robustops.errors import SpecError, UnsafeArtifactError, shorten
from robustops.io import save_safetensors
from robustops.models.classifier import eval_mode, resolve_device
from robustops.models.loading import model_sha256
from robustops.schema import StrictModel

__all__ = [
    "ABSTAINER_FORMAT",
    "AbstainDecision",
    "AbstainDecisionBatch",
    "Abstainer",
    "ConformalThreshold",
    "FeatureFn",
    "MahalanobisFit",
    "OODDetector",
    "OODScoreName",
    "conformal_threshold",
    "default_feature_layer",
    "energy_score",
    "fit_mahalanobis",
    "min_calibration_size",
    "msp_score",
    "ood_auroc",
]

OODScoreName = Literal["msp", "energy", "mahalanobis", "relative-mahalanobis"]
_FEATURE_SCORES = ("mahalanobis", "relative-mahalanobis")
"""The OOD scores :class:`OODDetector` computes."""
FeatureFn = Callable[[Tensor], Tensor]
"""A user feature function: inputs ``(N, ...)`` on the model's device → features ``(N, D)``."""
Shrinkage = float | Literal["ledoit-wolf"]

ABSTAINER_FORMAT: Literal["robustops.abstainer/1"] = "robustops.abstainer/1"
"""``format`` of the metadata :meth:`Abstainer.save` writes; :meth:`Abstainer.load` refuses
any other."""
_META_KEY = "robustops.abstainer"

# -- scores on logits ---------------------------------------------------------------------------


def _check_logits(logits: Tensor) -> Tensor:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with K >= 2, got shape {tuple(logits.shape)}")
    return logits.detach().to(device="cpu", dtype=torch.float64)


def _check_temperature(temperature: float, field: str = "temperature") -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise SpecError.single(field, f"must be a finite number > 0, got {temperature!r}")
    return t


def msp_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative maximum softmax probability of ``logits / temperature``: ``(N, K)`` → ``(N,)``
    float64 in ``[−1, −1/K]``; larger = more anomalous (Hendrycks & Gimpel 2017)."""
    t = _check_temperature(temperature)
    return -(_check_logits(logits) / t).softmax(1).amax(1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy ``−T · logsumexp(logits / T)``: ``(N, K)`` → ``(N,)`` float64, in logit
    units; larger = more anomalous (Liu et al. 2020)."""
    t = _check_temperature(temperature)
    return -t * torch.logsumexp(_check_logits(logits) / t, dim=1)


# -- Mahalanobis --------------------------------------------------------------------------------


def _quadratic(f: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``(f_n − μ_c)ᵀ P (f_n − μ_c)`` for features ``(N, D)`` and means ``(K, D)``: ``(N, K)``."""
    fp = f @ precision
    quad_f = (fp * f).sum(1, keepdim=True)  # (N, 1)
    quad_m = ((means @ precision) * means).sum(1)  # (K,)
    return (quad_f - 2.0 * fp @ means.T + quad_m).clamp_min_(0.0)


def _layout(t: Tensor) -> Tensor:
    """float64, CPU, row-major and owning its memory. One layout whatever the source (LAPACK
    returns column-major, a loaded file is row-major): BLAS rounds differently per layout, and
    a saved and a loaded abstainer must score bit for bit alike."""
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().clone()


@dataclass(frozen=True)
class MahalanobisFit:
    """Class-conditional Gaussians with one shared covariance, fitted on features; with a
    background Gaussian for the relative score.

    Attributes:
        means: ``(K, D)`` float64 class means.
        precision: ``(D, D)`` float64 inverse of the shrunk shared covariance.
        shrinkage: weight ``s`` in ``Σ_s = (1 − s) Σ + s (tr Σ / D) I``, in [0, 1].
        n_fit: feature vectors it was fitted on.
        background_mean: ``(D,)`` mean of all features (relative score only, else ``None``).
        background_precision: ``(D, D)`` inverse of their shrunk covariance (relative only).
        background_shrinkage: its shrinkage weight (relative only).
    """

    means: Tensor
    precision: Tensor
    shrinkage: float
    n_fit: int
    background_mean: Tensor | None = None
    background_precision: Tensor | None = None
    background_shrinkage: float | None = None

    def __post_init__(self) -> None:
        for name in ("means", "precision", "background_mean", "background_precision"):
            t = getattr(self, name)
            if t is not None:
                object.__setattr__(self, name, _layout(t))
        if self.means.dim() != 2:
            raise ValueError(f"means must be (K, D), got {tuple(self.means.shape)}")
        d = int(self.means.shape[1])
        if self.precision.shape != (d, d):
            raise ValueError(f"precision must be ({d}, {d}), got {tuple(self.precision.shape)}")
        bg = (self.background_mean, self.background_precision, self.background_shrinkage)
        if any(x is None for x in bg) and any(x is not None for x in bg):
            raise ValueError("the background mean, precision and shrinkage go together")
        if self.background_mean is not None and self.background_mean.shape != (d,):
            raise ValueError(f"background_mean must be ({d},)")
        if self.background_precision is not None and self.background_precision.shape != (d, d):
            raise ValueError(f"background_precision must be ({d}, {d})")

    @property
    def num_classes(self) -> int:
        """``K``."""
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        """``D``, the feature dimension."""
        return int(self.means.shape[1])

    @property
    def relative(self) -> bool:
        """Whether :meth:`score` subtracts the background distance (Ren et al. 2021)."""
        return self.background_mean is not None

    def _features(self, features: Tensor) -> Tensor:
        f = features.detach().to(device="cpu", dtype=torch.float64).reshape(features.shape[0], -1)
        if f.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {tuple(features.shape)}")
        return f

    def distances(self, features: Tensor) -> Tensor:
        """Squared Mahalanobis distance of each feature vector ``(N, D)`` to each class mean:
        ``(N, K)`` float64, ≥ 0."""
        return _quadratic(self._features(features), self.means, self.precision)

    def score(self, features: Tensor) -> Tensor:
        """``(N, D)`` → ``(N,)`` float64, larger = more anomalous: the squared distance to the
        closest class mean; for a relative fit, minus the squared distance to the background
        Gaussian (then it may be negative)."""
        f = self._features(features)
        out = _quadratic(f, self.means, self.precision).amin(1)
        if self.background_mean is not None and self.background_precision is not None:
            out -= _quadratic(f, self.background_mean[None], self.background_precision)[:, 0]
        return out


def _shrunk_precision(centred: Tensor, shrinkage: Shrinkage) -> tuple[Tensor, float]:
    """Inverse of the shrunk covariance of ``centred`` rows ``(N, D)`` and the weight used."""
    n, d = centred.shape
    cov = centred.T @ centred / n
    scale = float(torch.trace(cov)) / d
    if not scale > 0:
        raise SpecError.single("features", "are constant within every class (zero covariance)")
    if shrinkage == "ledoit-wolf":
        from sklearn.covariance import ledoit_wolf_shrinkage

        s = float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    else:
        s = float(shrinkage)
        if not 0.0 <= s <= 1.0:
            raise SpecError.single("shrinkage", f"must be in [0, 1] or 'ledoit-wolf', got {s!r}")
    shrunk = (1.0 - s) * cov + (s + 1e-6) * scale * torch.eye(d, dtype=torch.float64)
    precision = torch.linalg.inv(shrunk)
    return (precision + precision.T) / 2, s


def fit_mahalanobis(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    shrinkage: Shrinkage = "ledoit-wolf",
    relative: bool = False,
) -> MahalanobisFit:
    """Fit class means and a shrunk shared covariance on in-distribution ``features`` ``(N, D)``
    with their true ``labels`` ``(N,)``; with ``relative=True`` also one background Gaussian
    on all of them (its mean and shrunk covariance), for the relative Mahalanobis score.

    ``shrinkage``: a weight in [0, 1] towards ``(tr Σ / D) · I``, or ``"ledoit-wolf"`` (the
    Ledoit–Wolf 2004 estimate, computed by scikit-learn on the centred features; the background
    covariance gets its own estimate). A small absolute ridge (``1e-6 · tr Σ / D``) is always
    added so a weight of 0 still inverts. ``num_classes`` defaults to ``max(labels) + 1``; every
    class needs at least one sample.
    """
    f = features.detach().to(device="cpu", dtype=torch.float64)
    f = f.reshape(f.shape[0], -1)
    y = labels.detach().to(device="cpu", dtype=torch.int64)
    n, d = f.shape
    if y.shape != (n,):
        raise SpecError.single("labels", f"must be ({n},) like the features, got {tuple(y.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise SpecError.single("features", "contain NaN or infinite values")
    k = int(y.max()) + 1 if num_classes is None and n else int(num_classes or 0)
    if n <= k or k < 2:
        raise SpecError.single(
            "features", f"need more samples than classes (>= 2 classes), got {n} for {k} classes"
        )
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise SpecError.single(
            "labels",
            f"must be class indices in [0, {k}), got values in [{int(y.min())}, {int(y.max())}]",
        )
    counts = torch.bincount(y, minlength=k)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise SpecError.single("labels", f"classes {missing} have no fitting sample")
    means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, f) / counts[:, None]
    precision, s = _shrunk_precision(f - means[y], shrinkage)
    if not relative:
        return MahalanobisFit(means=means, precision=precision, shrinkage=s, n_fit=n)
    mu0 = f.mean(0)
    precision0, s0 = _shrunk_precision(f - mu0, shrinkage)
    return MahalanobisFit(
        means=means,
        precision=precision,
        shrinkage=s,
        n_fit=n,
        background_mean=mu0,
        background_precision=precision0,
        background_shrinkage=s0,
    )


# -- the detector -------------------------------------------------------------------------------


def default_feature_layer(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` (in registration order), whose *input* is the
    penultimate feature vector: ``"head.3"`` for :class:`~robustops.models.SmallCNN`,
    ``"net.<last>"`` for :class:`~robustops.models.MLP`. :class:`SpecError` at ``layer`` when the
    model has no linear layer."""
    last: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise SpecError.single(
            "layer",
            f"{type(model).__name__} has no nn.Linear whose input could serve as features; "
            "name a layer or pass a feature function",
        )
    return last


class OODDetector:
    """One OOD score on one classifier: fit on clean in-distribution data, then score batches.

    Args:
        model: an ``nn.Module`` returning logits ``(N, K)`` (not temperature-scaled: the
            :class:`Abstainer` applies the calibration temperature itself). Run in eval mode.
        score: ``"msp"``, ``"energy"``, ``"mahalanobis"`` or ``"relative-mahalanobis"`` (see
            the module docstring).
        layer: Mahalanobis scores only: the submodule whose *output* (flattened to ``(N, D)``)
            is the feature vector; default: the *input* of the last ``nn.Linear``.
        feature_fn: Mahalanobis scores only, instead of a layer: ``inputs → (N, D)`` features
            (run in addition to the model, which still gives the logits).
        temperature: the score's own temperature for ``"msp"`` and ``"energy"`` (1 in the
            papers); not the calibration temperature.
        shrinkage: of the Mahalanobis covariance, see :func:`fit_mahalanobis`.
        batch_size: inputs per forward pass.
        device: default: the model's.

    Scoring is deterministic, float64 from the logits (features) on. Concurrent calls on one
    detector are serialised (the feature hook is per call).
    """

    def __init__(
        self,
        model: nn.Module,
        score: OODScoreName = "energy",
        *,
        layer: str | None = None,
        feature_fn: FeatureFn | None = None,
        temperature: float = 1.0,
        shrinkage: Shrinkage = "ledoit-wolf",
        batch_size: int = 500,
        device: str | torch.device | None = None,
    ) -> None:
        if score not in get_args(OODScoreName):
            raise SpecError.single(
                "score", f"must be one of {get_args(OODScoreName)}, got {score!r}"
            )
        if score not in _FEATURE_SCORES and (layer is not None or feature_fn is not None):
            raise SpecError.single("layer", f"the {score!r} score reads logits, not features")
        if layer is not None and feature_fn is not None:
            raise SpecError.single("layer", "give a layer or a feature function, not both")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SpecError.single("batch_size", f"must be an int >= 1, got {batch_size!r}")
        if shrinkage != "ledoit-wolf" and (
            isinstance(shrinkage, (str, bool))
            or not isinstance(shrinkage, (int, float))
            or not 0.0 <= float(shrinkage) <= 1.0
        ):
            raise SpecError.single(
                "shrinkage", f"must be in [0, 1] or 'ledoit-wolf', got {shrinkage!r}"
            )
        self.model = model
        self.score_name: OODScoreName = score
        self.temperature = _check_temperature(temperature)
        self.shrinkage: Shrinkage = shrinkage
        self.batch_size = batch_size
        self.device = device
        self.feature_fn = feature_fn
        self.layer: str | None = None
        self.layer_input = False
        if score in _FEATURE_SCORES and feature_fn is None:
            self.layer = layer if layer is not None else default_feature_layer(model)
            self.layer_input = layer is None
            self._module(self.layer)  # fails early on an unknown name
        self.mahalanobis: MahalanobisFit | None = None
        self.num_classes: int | None = None
        """``K``, known once the model has run (or from a loaded abstainer)."""
        self._lock = threading.Lock()

    # -- description -----------------------------------------------------------------------

    @property
    def needs_features(self) -> bool:
        """Whether the score reads features (the Mahalanobis scores)."""
        return self.score_name in _FEATURE_SCORES

    @property
    def fitted(self) -> bool:
        """Ready to score: always for logit scores, after :meth:`fit` for Mahalanobis."""
        return not self.needs_features or self.mahalanobis is not None

    def feature_source(self) -> dict[str, str] | None:
        """Where the features come from, JSON-ready: ``{"kind": "input_of" | "output_of",
        "module": name}`` or ``{"kind": "function", "name": qualified name}``; ``None`` for
        logit scores."""
        if not self.needs_features:
            return None
        if self.feature_fn is not None:
            fn = self.feature_fn
            name = (
                f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
            )
            return {"kind": "function", "name": name}
        assert self.layer is not None
        return {"kind": "input_of" if self.layer_input else "output_of", "module": self.layer}

    def _module(self, name: str) -> nn.Module:
        modules: dict[str, nn.Module] = dict(self.model.named_modules())
        if name not in modules or name == "":
            names = [n for n in modules if n]
            raise SpecError.single(
                "layer",
                f"{type(self.model).__name__} has no submodule {shorten(repr(name))}; "
                f"it has {shorten(', '.join(names))}",
            )
        return modules[name]

    # -- forward ---------------------------------------------------------------------------

    def outputs(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """One pass over ``inputs`` ``(N, ...)`` in batches: logits ``(N, K)`` float32 and, for
        Mahalanobis, features ``(N, D)`` float64 (``None`` otherwise), both on the CPU."""
        if not isinstance(inputs, Tensor) or inputs.dim() < 1:
            raise SpecError.single("inputs", "must be a tensor (N, ...)")
        dev = resolve_device(self.model, self.device)
        logits: list[Tensor] = []
        feats: list[Tensor] = []
        captured: list[Tensor] = []
        handle = None
        with self._lock, eval_mode(self.model), torch.no_grad():
            if self.needs_features and self.feature_fn is None:
                assert self.layer is not None
                module = self._module(self.layer)
                if self.layer_input:

                    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
                        captured.append(args[0].detach())

                    handle = module.register_forward_pre_hook(pre_hook)
                else:

                    def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
                        captured.append(out.detach())

                    handle = module.register_forward_hook(hook)
            try:
                for i in range(0, inputs.shape[0], self.batch_size):
                    xb = inputs[i : i + self.batch_size].to(dev)
                    captured.clear()
                    logits.append(self.model(xb).float().cpu())
                    if not self.needs_features:
                        continue
                    if self.feature_fn is not None:
                        fb = self.feature_fn(xb)
                    elif len(captured) != 1:
                        raise SpecError.single(
                            "layer",
                            f"{self.layer!r} ran {len(captured)} times in one forward pass; "
                            "name a layer that runs exactly once",
                        )
                    else:
                        fb = captured[0]
                    feats.append(fb.reshape(xb.shape[0], -1).to("cpu", torch.float64))
            finally:
                if handle is not None:
                    handle.remove()
        if not logits:
            raise SpecError.single("inputs", "is empty: need at least one input")
        out = torch.cat(logits)
        if out.dim() != 2 or (self.num_classes is not None and out.shape[1] != self.num_classes):
            raise SpecError.single(
                "model", f"returned logits of shape {tuple(out.shape)}, expected (N, K)"
            )
        self.num_classes = int(out.shape[1])
        return out, (torch.cat(feats) if self.needs_features else None)

    # -- fit and score ---------------------------------------------------------------------

    def fit(self, inputs: Tensor, labels: Tensor) -> OODDetector:
        """Fit on clean in-distribution ``inputs`` ``(N, ...)`` with their true ``labels``
        ``(N,)`` (the training data is fine here; calibrate the threshold on held-out data).
        A no-op for the logit scores, which need no fit. Returns ``self``."""
        if not self.needs_features:
            return self
        logits, feats = self.outputs(inputs)
        assert feats is not None
        self.mahalanobis = fit_mahalanobis(
            feats,
            labels,
            num_classes=int(logits.shape[1]),
            shrinkage=self.shrinkage,
            relative=self.score_name == "relative-mahalanobis",
        )
        return self

    def score_outputs(self, logits: Tensor, features: Tensor | None = None) -> Tensor:
        """The score ``(N,)`` float64 of outputs from :meth:`outputs`."""
        if self.score_name == "msp":
            return msp_score(logits, self.temperature)
        if self.score_name == "energy":
            return energy_score(logits, self.temperature)
        if self.mahalanobis is None:
            raise SpecError.single("score", "the Mahalanobis score needs fit() on clean data first")
        if features is None:
            raise ValueError("the Mahalanobis score needs features")
        if self.mahalanobis.relative != (self.score_name == "relative-mahalanobis"):
            raise ValueError(f"a {self.score_name!r} detector holds the wrong kind of fit")
        return self.mahalanobis.score(features)

    def score(self, inputs: Tensor) -> Tensor:
        """OOD scores of ``inputs`` ``(N, ...)``: ``(N,)`` float64, larger = more anomalous."""
        if not self.fitted:
            raise SpecError.single("score", "the Mahalanobis score needs fit() on clean data first")
        return self.score_outputs(*self.outputs(inputs))


# -- conformal threshold ------------------------------------------------------------------------


def _alpha(alpha: float) -> Fraction:
    """``alpha`` as the exact decimal the user wrote (``0.3`` is 3/10, not the binary float just
    under it), so ``⌈(n + 1)(1 − α)⌉`` is not shifted by a rounding error."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise SpecError.single("alpha", f"must be a number in (0, 1), got {alpha!r}")
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 < a < 1.0):
        raise SpecError.single("alpha", f"must be in (0, 1), got {alpha!r}")
    return Fraction(repr(a))


def min_calibration_size(alpha: float) -> int:
    """Fewest calibration scores for which the split-conformal threshold at ``alpha`` exists:
    ``⌈(1 − α)/α⌉`` (19 for α = 0.05, 99 for α = 0.01)."""
    a = _alpha(alpha)
    return math.ceil((1 - a) / a)


@dataclass(frozen=True)
class ConformalThreshold:
    """A split-conformal threshold on an OOD score: abstain when ``score > threshold``.

    Attributes:
        threshold: the ``rank``-th smallest calibration score (score units).
        alpha: the target false-abstain rate on clean exchangeable data, in (0, 1).
        n_calibration: calibration scores ``n``.
        rank: ``k = ⌈(n + 1)(1 − α)⌉``, in [1, n].
    """

    threshold: float
    alpha: float
    n_calibration: int
    rank: int

    @property
    def expected_false_abstain(self) -> float:
        """``1 − k/(n + 1)`` ≤ α: the guaranteed bound on the marginal false-abstain rate (its
        exact value when scores have no ties)."""
        return 1.0 - self.rank / (self.n_calibration + 1)


def conformal_threshold(
    scores: Tensor | np.ndarray | Sequence[float], alpha: float
) -> ConformalThreshold:
    """Split-conformal threshold of held-out clean in-distribution ``scores`` ``(n,)`` at level
    ``alpha``: the ``⌈(n + 1)(1 − α)⌉``-th smallest score (see the module docstring for the
    guarantee and its assumptions).

    Raises :class:`SpecError` at ``alpha`` when it is not in (0, 1) or too small for ``n``
    (``n < ⌈(1 − α)/α⌉``), and at ``scores`` when they are not a finite 1-D sequence.
    """
    a = _alpha(alpha)
    s = torch.as_tensor(
        np.asarray(scores, dtype=np.float64) if not isinstance(scores, Tensor) else scores
    )
    s = s.detach().to(device="cpu", dtype=torch.float64)
    if s.dim() != 1:
        raise SpecError.single("scores", f"must be 1-D (n,), got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise SpecError.single("scores", "contain NaN or infinite values")
    n = int(s.shape[0])
    k = math.ceil((n + 1) * (1 - a))
    if k > n:
        raise SpecError.single(
            "alpha",
            f"{float(a)} is too small for {n} calibration samples: the conformal rank "
            f"⌈(n + 1)(1 − α)⌉ = {k} exceeds n; calibrate on at least "
            f"{min_calibration_size(float(a))} held-out clean samples or raise alpha to "
            f">= {1 / (n + 1):.4g}",
        )
    threshold = float(torch.sort(s).values[k - 1])
    return ConformalThreshold(threshold=threshold, alpha=float(a), n_calibration=n, rank=k)


def ood_auroc(id_scores: Tensor | np.ndarray, ood_scores: Tensor | np.ndarray) -> float:
    """Area under the ROC curve of telling OOD from in-distribution by the score (OOD positive,
    larger = more anomalous): ``P(s_ood > s_id) + ½ P(s_ood = s_id)`` (Mann–Whitney), in [0, 1];
    0.5 is chance."""
    from scipy.stats import rankdata

    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("need at least one in-distribution and one OOD score")
    ranks = rankdata(np.concatenate([a, b]))
    u = float(ranks[a.size :].sum()) - b.size * (b.size + 1) / 2
    return u / (a.size * b.size)


# -- abstention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbstainDecision:
    """What the service answers for one input.

    Attributes:
        abstain: whether to withhold the label.
        label: the predicted class, ``None`` when abstaining.
        prediction: the model's top class, always (for logs).
        confidence: calibrated top-class probability ``max softmax(z / T)``, in (0, 1].
        ood_score: the OOD score (score units; larger = more anomalous).
        reasons: why it abstains (empty when it answers).
    """

    abstain: bool
    label: int | None
    prediction: int
    confidence: float
    ood_score: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: ``{"decision": "predict", "label", "confidence", "ood_score"}`` or
        ``{"decision": "abstain", "reasons", "confidence", "ood_score"}``."""
        out: dict[str, object] = {"decision": "abstain" if self.abstain else "predict"}
        if self.abstain:
            out["reasons"] = list(self.reasons)
        else:
            out["label"] = self.label
        out["confidence"] = self.confidence
        out["ood_score"] = self.ood_score
        return out


@dataclass(frozen=True)
class AbstainDecisionBatch:
    """Decisions on a batch, as tensors (all ``(N,)``, on the CPU).

    Attributes:
        predictions: int64 top classes.
        confidence: float64 calibrated top-class probabilities.
        ood_scores: float64 OOD scores.
        out_of_distribution: bool, score above the conformal threshold.
        low_confidence: bool, confidence below the minimum (all False without one).
    """

    predictions: Tensor
    confidence: Tensor
    ood_scores: Tensor
    out_of_distribution: Tensor
    low_confidence: Tensor

    @property
    def abstain(self) -> Tensor:
        """``(N,)`` bool: either rule fired."""
        return self.out_of_distribution | self.low_confidence


class _State(StrictModel):
    """The JSON metadata of a saved :class:`Abstainer`."""

    format: Literal["robustops.abstainer/1"]
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    num_classes: int = Field(ge=2)
    score: OODScoreName
    score_temperature: float = Field(gt=0)
    feature_source: dict[str, str] | None
    shrinkage: float | None = Field(ge=0, le=1)
    background_shrinkage: float | None = Field(default=None, ge=0, le=1)
    n_fit: int | None = Field(ge=1)
    alpha: float = Field(gt=0, lt=1)
    threshold: float
    rank: int = Field(ge=1)
    n_calibration: int = Field(ge=1)
    temperature: float = Field(gt=0)
    temperature_fit: TemperatureFit | None
    min_confidence: float | None = Field(ge=0, le=1)


class Abstainer:
    """Answer with a label and its calibrated confidence, or abstain with a reason.

    Build it with :meth:`calibrate` (held-out clean data) or :meth:`load`.

    Args:
        detector: a fitted :class:`OODDetector` (its model gives the labels too).
        threshold: the conformal threshold of the detector's score.
        calibration_scores: ``(n,)`` the held-out clean scores behind ``threshold`` (kept so
            :meth:`with_alpha` can re-derive it and :meth:`save` can store them).
        temperature: the calibration temperature ``T`` (a :class:`TemperatureFit` from
            :func:`~robustops.defenses.fit_temperature_on`, or a number); confidence is
            ``max softmax(z / T)``.
        min_confidence: abstain when the calibrated confidence is below this (in [0, 1]);
            ``None``: no confidence rule.
    """

    def __init__(
        self,
        detector: OODDetector,
        threshold: ConformalThreshold,
        calibration_scores: Tensor,
        *,
        temperature: TemperatureFit | float = 1.0,
        min_confidence: float | None = None,
    ) -> None:
        if not detector.fitted:
            raise SpecError.single("detector", "fit the Mahalanobis detector on clean data first")
        if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
            raise SpecError.single("min_confidence", f"must be in [0, 1], got {min_confidence!r}")
        scores = calibration_scores.detach().to("cpu", torch.float64).flatten()
        if conformal_threshold(scores, threshold.alpha) != threshold:
            raise ValueError("the threshold does not follow from calibration_scores")
        self.detector = detector
        self.threshold = threshold
        self.calibration_scores = torch.sort(scores).values
        self.temperature_fit = temperature if isinstance(temperature, TemperatureFit) else None
        t = temperature.temperature if isinstance(temperature, TemperatureFit) else temperature
        self.temperature = _check_temperature(t)
        self.min_confidence = None if min_confidence is None else float(min_confidence)

    @classmethod
    def calibrate(
        cls,
        detector: OODDetector,
        inputs: Tensor,
        labels: Tensor | None = None,
        *,
        alpha: float,
        temperature: TemperatureFit | float | Literal["fit"] = "fit",
        min_confidence: float | None = None,
    ) -> Abstainer:
        """Calibrate on held-out clean in-distribution ``inputs`` ``(n, ...)``: the conformal
        threshold at ``alpha`` on their OOD scores and, with ``temperature="fit"``, a
        temperature fitted on them with their ``labels`` ``(n,)`` (``fit_temperature_on`` with
        ``fit_on="clean"``; pass a :class:`TemperatureFit` to reuse one fitted elsewhere, e.g.
        on clean + adversarial inputs). The inputs must be exchangeable with the clean traffic
        and unseen by the model's and the detector's fits.

        Reusing one held-out set for both is sound: the OOD scores do not depend on the
        calibration temperature, so the threshold keeps its guarantee.
        """
        if isinstance(temperature, str):
            if temperature != "fit":
                raise SpecError.single(
                    "temperature",
                    f"must be 'fit', a number or a TemperatureFit, got {temperature!r}",
                )
            if labels is None:
                raise SpecError.single("labels", "temperature='fit' needs the calibration labels")
        _alpha(alpha)
        scores = detector.score(inputs)
        threshold = conformal_threshold(scores, alpha)
        temp: TemperatureFit | float
        if temperature == "fit":
            assert labels is not None
            temp = fit_temperature_on(
                detector.model,
                inputs,
                labels,
                fit_on="clean",
                batch_size=detector.batch_size,
                device=detector.device,
            )
        else:
            temp = temperature
        return cls(detector, threshold, scores, temperature=temp, min_confidence=min_confidence)

    def with_alpha(self, alpha: float) -> Abstainer:
        """The same abstainer with the threshold re-derived at ``alpha`` from the stored
        calibration scores."""
        threshold = conformal_threshold(self.calibration_scores, alpha)
        return Abstainer(
            self.detector,
            threshold,
            self.calibration_scores,
            temperature=self.temperature_fit or self.temperature,
            min_confidence=self.min_confidence,
        )

    # -- deciding ----------------------------------------------------------------------------

    def decide_batch(self, inputs: Tensor) -> AbstainDecisionBatch:
        """Decisions on ``inputs`` ``(N, ...)`` as tensors, from one forward pass per batch."""
        logits, feats = self.detector.outputs(inputs)
        scores = self.detector.score_outputs(logits, feats)
        z = logits.to(torch.float64)
        conf, pred = (z / self.temperature).softmax(1).max(1)
        low = (
            conf < self.min_confidence
            if self.min_confidence is not None
            else torch.zeros_like(conf, dtype=torch.bool)
        )
        return AbstainDecisionBatch(
            predictions=pred,
            confidence=conf,
            ood_scores=scores,
            out_of_distribution=scores > self.threshold.threshold,
            low_confidence=low,
        )

    def decide(self, inputs: Tensor) -> list[AbstainDecision]:
        """One :class:`AbstainDecision` per input of ``inputs`` ``(N, ...)``."""
        b = self.decide_batch(inputs)
        th = self.threshold
        out = []
        for i in range(b.predictions.shape[0]):
            s, c, p = float(b.ood_scores[i]), float(b.confidence[i]), int(b.predictions[i])
            reasons: list[str] = []
            if bool(b.out_of_distribution[i]):
                reasons.append(
                    f"out-of-distribution score {s:.6g} ({self.detector.score_name}) above "
                    f"threshold {th.threshold:.6g} (conformal, alpha={th.alpha:g}, "
                    f"n={th.n_calibration})"
                )
            if bool(b.low_confidence[i]):
                reasons.append(
                    f"confidence {c:.4f} below minimum {self.min_confidence:.4f} "
                    f"(temperature {self.temperature:.4g})"
                )
            out.append(
                AbstainDecision(
                    abstain=bool(reasons),
                    label=None if reasons else p,
                    prediction=p,
                    confidence=c,
                    ood_score=s,
                    reasons=tuple(reasons),
                )
            )
        return out

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The JSON-ready metadata :meth:`save` writes (without the tensors)."""
        det = self.detector
        mah = det.mahalanobis
        num_classes = mah.num_classes if mah is not None else det.num_classes
        if num_classes is None:
            raise SpecError.single("detector", "has not scored anything yet: calibrate it first")
        state = _State(
            format=ABSTAINER_FORMAT,
            model_sha256=model_sha256(det.model),
            num_classes=num_classes,
            score=det.score_name,
            score_temperature=det.temperature,
            feature_source=det.feature_source(),
            shrinkage=mah.shrinkage if mah is not None else None,
            background_shrinkage=mah.background_shrinkage if mah is not None else None,
            n_fit=mah.n_fit if mah is not None else None,
            alpha=self.threshold.alpha,
            threshold=self.threshold.threshold,
            rank=self.threshold.rank,
            n_calibration=self.threshold.n_calibration,
            temperature=self.temperature,
            temperature_fit=self.temperature_fit,
            min_confidence=self.min_confidence,
        )
        return state.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        """Write the fitted state to ``path`` (safetensors, written atomically): the sorted
        calibration scores ``(n,)``, the Mahalanobis means ``(K, D)`` and precision ``(D, D)``
        when used, and :meth:`state` as JSON under the header key ``robustops.abstainer``.
        The model's weights are not included; their sha256 is. Returns ``path``."""
        tensors: dict[str, Tensor] = {"calibration_scores": self.calibration_scores.contiguous()}
        mah = self.detector.mahalanobis
        if mah is not None:
            tensors["mahalanobis.means"] = mah.means.contiguous()
            tensors["mahalanobis.precision"] = mah.precision.contiguous()
        if mah is not None and mah.background_mean is not None:
            assert mah.background_precision is not None
            tensors["mahalanobis.background_mean"] = mah.background_mean.contiguous()
            tensors["mahalanobis.background_precision"] = mah.background_precision.contiguous()
        meta = {_META_KEY: json.dumps(self.state(), sort_keys=True)}
        return save_safetensors(tensors, path, metadata=meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: nn.Module,
        *,
        feature_fn: FeatureFn | None = None,
        check_model: bool = True,
        batch_size: int = 500,
        device: str | torch.device | None = None,
    ) -> Abstainer:
        """Read an abstainer saved by :meth:`save` for ``model`` (the same weights: their
        sha256 must match the recorded one unless ``check_model=False``). A detector whose
        features came from a function needs that function again as ``feature_fn``.

        Raises :class:`UnsafeArtifactError` for a file that is not a valid abstainer file
        (pickle, corrupt, inconsistent) and :class:`SpecError` at ``model`` / ``feature_fn``
        when the model or the feature function does not fit it.
        """
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise SpecError.single("path", f"abstainer file not found: {p}")
        try:
            with safe_open(str(p), framework="pt") as fh:
                raw_meta = (fh.metadata() or {}).get(_META_KEY)
                tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnsafeArtifactError(
                f"{p} is not a valid safetensors file ({shorten(str(exc))})"
            ) from None
        if raw_meta is None:
            raise UnsafeArtifactError(f"{p} holds no {_META_KEY} metadata: not an abstainer file")
        try:
            state = _State.model_validate(json.loads(raw_meta))
        except (ValueError, ValidationError) as exc:
            raise UnsafeArtifactError(
                f"{p}: invalid abstainer metadata ({shorten(str(exc))})"
            ) from None
        if check_model:
            got = model_sha256(model)
            if got != state.model_sha256:
                raise SpecError.single(
                    "model",
                    f"weights sha256 {got} differ from the {state.model_sha256} the abstainer "
                    f"in {p} was fitted on",
                )
        src = state.feature_source
        layer = None
        if state.score in _FEATURE_SCORES:
            if src is None or src.get("kind") not in ("input_of", "output_of", "function"):
                raise UnsafeArtifactError(f"{p}: Mahalanobis abstainer without a feature source")
            if src["kind"] == "function":
                if feature_fn is None:
                    raise SpecError.single(
                        "feature_fn",
                        f"the abstainer in {p} was fitted on {src.get('name')}; pass it",
                    )
            elif feature_fn is not None:
                raise SpecError.single("feature_fn", f"the abstainer in {p} uses layer features")
            elif src["kind"] == "input_of":
                if default_feature_layer(model) != src.get("module"):
                    raise SpecError.single(
                        "model", f"its last nn.Linear is not {src.get('module')!r} as recorded"
                    )
            else:
                layer = src.get("module")
        detector = OODDetector(
            model,
            state.score,
            layer=layer,
            feature_fn=feature_fn if state.score in _FEATURE_SCORES else None,
            temperature=state.score_temperature,
            shrinkage=state.shrinkage if state.shrinkage is not None else "ledoit-wolf",
            batch_size=batch_size,
            device=device,
        )
        try:
            scores = tensors["calibration_scores"].to(torch.float64)
            if state.score in _FEATURE_SCORES:
                assert state.n_fit is not None and state.shrinkage is not None
                relative = state.score == "relative-mahalanobis"
                if relative != (state.background_shrinkage is not None):
                    raise ValueError("background shrinkage does not match the score")
                detector.mahalanobis = MahalanobisFit(
                    means=tensors["mahalanobis.means"],
                    precision=tensors["mahalanobis.precision"],
                    shrinkage=state.shrinkage,
                    n_fit=state.n_fit,
                    background_mean=tensors["mahalanobis.background_mean"] if relative else None,
                    background_precision=(
                        tensors["mahalanobis.background_precision"] if relative else None
                    ),
                    background_shrinkage=state.background_shrinkage,
                )
                if detector.mahalanobis.num_classes != state.num_classes:
                    raise ValueError("class means do not match num_classes")
            detector.num_classes = state.num_classes
        except (KeyError, ValueError, AssertionError) as exc:
            raise UnsafeArtifactError(f"{p}: inconsistent abstainer tensors ({exc})") from None
        threshold = conformal_threshold(scores, state.alpha)
        if (threshold.threshold, threshold.rank, threshold.n_calibration) != (
            state.threshold,
            state.rank,
            state.n_calibration,
        ):
            raise UnsafeArtifactError(
                f"{p}: the stored threshold does not follow from the stored calibration scores"
            )
        return cls(
            detector,
            threshold,
            scores,
            temperature=state.temperature_fit or state.temperature,
            min_confidence=state.min_confidence,
        )
