"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a certified L2 defense.

The smoothed classifier ``g(x) = argmax_c P(f(x + ε) = c)``, ``ε ~ N(0, σ² I)``, built on a base
classifier ``f`` (any module returning logits), is robust around ``x``: if the top class has
probability ``p_A > 1/2`` under the noise, no perturbation of L2 norm below ``σ Φ⁻¹(p_A)``
changes ``g(x)``. ``p_A`` is estimated by Monte Carlo with a one-sided Clopper–Pearson bound, so
every radius holds with probability at least ``1 - alpha`` (over the noise draws).

* :meth:`SmoothedClassifier.predict` is Cohen's PREDICT: the two most frequent classes among
  ``n`` noisy predictions, and a two-sided binomial test between them at level ``alpha``
  (abstain, :data:`ABSTAIN`, when not significant).
* :meth:`SmoothedClassifier.certify` is Cohen's CERTIFY: guess the top class from ``n0``
  samples, count it among ``n`` fresh ones, ``p_lower`` = the ``1 - alpha`` lower confidence
  bound (``proportion_confint(count, n, alpha=2 * alpha, method="beta")[0]`` in Cohen's code),
  abstain unless ``p_lower > 1/2``, else radius ``σ Φ⁻¹(p_lower)``.
* :func:`certify_dataset` runs CERTIFY on a data set and returns a :class:`CertificationResult`
  (certified accuracy at given radii, average certified radius, throughput), ready to be embedded
  in a result file. The record, its curve (:func:`certified_accuracy_curve`) and its figure
  (:func:`plot_certified_accuracy`) live in :mod:`robustops.evaluation.certification` and
  :mod:`robustops.evaluation.plots`; they are re-exported here for convenience.

Radii are L2 norms in input units. The noise is not clipped to the input bounds (as Cohen et al.).

Throughput: all noisy copies of all inputs (and both the ``n0`` and the ``n`` draws of CERTIFY)
form one stream that is cut into full forward batches, so a batch holds copies of several inputs
when ``n`` is smaller than the batch size. Each batch costs one in-place ``normal_`` into a
preallocated buffer, one add, the forward pass and a ``bincount`` on the model's device; nothing
is synchronised with the host until the counts are complete. On CPU, image batches run in the
channels-last layout by default (see ``memory_format``): the forward pass of convolution and
max-pooling layers is faster there and, unlike the default layout, does not slow down on noisy
inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.errors import SpecError
from robustops.evaluation.certification import (
    ABSTAIN,
    CertificationResult,
    certified_accuracy_curve,
    radius_key,
)
from robustops.evaluation.plots import plot_certified_accuracy
from robustops.models.classifier import eval_mode

__all__ = [
    "ABSTAIN",
    "CertificationResult",
    "SmoothedCertificate",
    "SmoothedClassifier",
    "certified_accuracy_curve",
    "certify_dataset",
    "clopper_pearson_lower",
    "max_certifiable_radius",
    "plot_certified_accuracy",
]

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
GeneratorLike = torch.Generator | int | None


# -- argument checks --------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError.single(name, f"must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SpecError.single(name, f"must be a finite number > 0, got {value!r}")
    return float(value)


def _check_alpha(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SpecError.single("alpha", f"must be a number in (0, 1), got {value!r}")
    return float(value)


# -- statistics -------------------------------------------------------------------------------


def clopper_pearson_lower(count: Tensor | np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper–Pearson lower confidence bound on a binomial proportion.

    ``count`` successes out of ``n`` trials (an int or an array of ints): the ``alpha``
    quantile of ``Beta(count, n - count + 1)``, and 0 where ``count == 0``. The same number as
    ``statsmodels.stats.proportion.proportion_confint(count, n, alpha=2 * alpha,
    method="beta")[0]``, Cohen et al.'s bound. Returns a float64 array of ``count``'s shape.
    """
    from scipy.stats import beta

    k = np.asarray(count.cpu() if isinstance(count, Tensor) else count, dtype=np.float64)
    safe = np.maximum(k, 1.0)  # Beta(0, .) is undefined; those entries are set to 0 below
    lower = np.asarray(beta.ppf(alpha, safe, n - safe + 1), dtype=np.float64)
    return np.where(k > 0, lower, 0.0)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` samples at level ``alpha``: all ``n``
    noisy predictions agree, ``p_lower = alpha ** (1 / n)``, radius ``sigma Φ⁻¹(p_lower)``
    (input units, L2)."""
    from scipy.stats import norm

    sigma = _check_positive("sigma", sigma)
    n = _check_int("n", n)
    alpha = _check_alpha(alpha)
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


# -- the smoothed classifier -------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothedCertificate:
    """Everything CERTIFY computed for a batch of ``N`` inputs (tensors on the CPU).

    Attributes:
        predictions: ``(N,)`` int64, the certified class or :data:`ABSTAIN`.
        radii: ``(N,)`` float64, certified L2 radius in input units (0 where abstaining).
        guesses: ``(N,)`` int64, the most frequent class among the ``n0`` selection samples.
        counts_selection: ``(N, K)`` int64, class counts of the ``n0`` selection samples.
        counts: ``(N, K)`` int64, class counts of the ``n`` estimation samples.
        p_lower: ``(N,)`` float64, the lower confidence bound on ``P(f(x + ε) = guess)``.
        n0, n, alpha: the call's sample sizes and level.
    """

    predictions: Tensor
    radii: Tensor
    guesses: Tensor
    counts_selection: Tensor
    counts: Tensor
    p_lower: Tensor
    n0: int
    n: int
    alpha: float

    @property
    def count(self) -> Tensor:
        """``(N,)`` int64: how many of the ``n`` estimation samples fell in the guessed class."""
        return self.counts.gather(1, self.guesses.view(-1, 1)).view(-1)


class SmoothedClassifier:
    """A base classifier smoothed by isotropic Gaussian noise (Cohen et al. 2019).

    Args:
        base: a module mapping inputs ``(N, ...)`` to logits ``(N, num_classes)``. It runs on
            the device of its parameters (CPU when it has none), in eval mode during each call
            (its mode is restored after), under ``torch.inference_mode``.
        num_classes: ``K``, the number of logits the base classifier returns.
        sigma: standard deviation of the noise, in input units (> 0).
        memory_format: layout of image batches ``(N, C, H, W)`` in the forward pass.
            ``auto``: channels-last on CPU when the base has convolution (4-d) weights (faster
            convolutions and pooling with oneDNN, and pooling speed that does not depend on
            the data), the default layout otherwise and on other devices. ``channels_last``:
            always. ``contiguous``: never. For channels-last the
            base's parameters are switched to that layout for the call and switched back after
            (when they were in the default layout); the numbers do not depend on the choice
            beyond floating-point rounding.
    """

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        sigma: float,
        *,
        memory_format: MemoryFormat = "auto",
    ) -> None:
        if not isinstance(base, nn.Module):
            raise SpecError.single(
                "base", f"must be a torch.nn.Module returning logits, got {type(base).__name__}"
            )
        self.base = base
        self.num_classes = _check_int("num_classes", num_classes, minimum=2)
        self.sigma = _check_positive("sigma", sigma)
        if memory_format not in ("auto", "contiguous", "channels_last"):
            raise SpecError.single(
                "memory_format",
                f"must be 'auto', 'contiguous' or 'channels_last', got {memory_format!r}",
            )
        self.memory_format: MemoryFormat = memory_format

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier({type(self.base).__name__}, num_classes={self.num_classes}, "
            f"sigma={self.sigma}, memory_format={self.memory_format!r})"
        )

    @property
    def device(self) -> torch.device:
        """The device of the base classifier's first parameter (or buffer); CPU without any."""
        for t in (*self.base.parameters(), *self.base.buffers()):
            return t.device
        return torch.device("cpu")

    # -- public API ---------------------------------------------------------------------------

    def sample_counts(
        self, x: Tensor, n: int, *, batch_size: int = 1000, generator: GeneratorLike = None
    ) -> Tensor:
        """Class counts of the base classifier on ``n`` noisy copies of each input.

        Args:
            x: inputs ``(N, ...)``, floating point (moved to the base's device).
            n: noisy copies per input.
            batch_size: noisy samples per forward pass.
            generator: a ``torch.Generator`` on the base's device (advanced by the call), an int
                seed, or ``None`` (seed 0): the same seed gives the same counts.

        Returns ``(N, K)`` int64 counts on the CPU; each row sums to ``n``.
        """
        n = _check_int("n", n)
        batch_size = _check_int("batch_size", batch_size)
        x, gen = self._prepare(x, generator)
        return self._counts(x, (n,), batch_size, gen)[0].cpu()

    def predict(
        self,
        x: Tensor,
        n: int,
        alpha: float,
        *,
        batch_size: int = 1000,
        generator: GeneratorLike = None,
    ) -> Tensor:
        """Cohen et al.'s PREDICT for each input of ``x`` ``(N, ...)``.

        Draws ``n`` noisy copies per input; with ``n_A``, ``n_B`` the counts of the two most
        frequent classes (ties broken towards the lower class index), returns the top class if
        the two-sided binomial test of ``n_A`` out of ``n_A + n_B`` against ``p = 1/2`` has
        p-value ``<= alpha``, else :data:`ABSTAIN`. The returned class differs from the
        smoothed classifier's with probability at most ``alpha``.

        ``batch_size`` and ``generator``: see :meth:`sample_counts`.
        Returns ``(N,)`` int64 predictions on the CPU.
        """
        from scipy.stats import binomtest

        alpha = _check_alpha(alpha)
        counts = self.sample_counts(x, n, batch_size=batch_size, generator=generator)
        order = torch.sort(counts, dim=1, descending=True, stable=True)
        top, second = order.values[:, 0].tolist(), order.values[:, 1].tolist()
        classes = order.indices[:, 0].tolist()
        out = [
            c if binomtest(a, a + b, 0.5).pvalue <= alpha else ABSTAIN
            for c, a, b in zip(classes, top, second, strict=True)
        ]
        return torch.tensor(out, dtype=torch.int64)

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        batch_size: int = 1000,
        generator: GeneratorLike = None,
    ) -> tuple[Tensor, Tensor]:
        """Cohen et al.'s CERTIFY for each input of ``x`` ``(N, ...)``.

        Returns ``(predictions, radii)``: ``(N,)`` int64 classes or :data:`ABSTAIN`, and
        ``(N,)`` float64 certified L2 radii in input units (0 where abstaining), on the CPU.
        With probability at least ``1 - alpha`` (per input) a non-abstaining prediction is the
        smoothed classifier's, which is constant on the L2 ball of that radius.
        See :meth:`certify_detailed` for the arguments and the intermediate counts.
        """
        cert = self.certify_detailed(x, n0, n, alpha, batch_size=batch_size, generator=generator)
        return cert.predictions, cert.radii

    def certify_detailed(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        *,
        batch_size: int = 1000,
        generator: GeneratorLike = None,
    ) -> SmoothedCertificate:
        """CERTIFY with its intermediate figures (see :class:`SmoothedCertificate`).

        Args:
            x: inputs ``(N, ...)``, floating point (moved to the base's device).
            n0: selection samples per input (to guess the top class).
            n: estimation samples per input, drawn afresh (to bound its probability).
            alpha: failure probability of each certificate, in (0, 1).
            batch_size: noisy samples per forward pass.
            generator: see :meth:`sample_counts`; the selection samples of all inputs are drawn
                first, then the estimation samples.
        """
        from scipy.stats import norm

        n0 = _check_int("n0", n0)
        n = _check_int("n", n)
        alpha = _check_alpha(alpha)
        batch_size = _check_int("batch_size", batch_size)
        xd, gen = self._prepare(x, generator)
        counts0, counts = (c.cpu() for c in self._counts(xd, (n0, n), batch_size, gen))
        # The most frequent selection class; ties go to the lower index (argmax's first maximum).
        guesses = counts0.argmax(dim=1)
        count = counts.gather(1, guesses.view(-1, 1)).view(-1)
        p_lower = clopper_pearson_lower(count.numpy(), n, alpha)
        certified = p_lower > 0.5
        radii = np.where(certified, self.sigma * norm.ppf(np.where(certified, p_lower, 0.75)), 0.0)
        predictions = torch.where(
            torch.from_numpy(certified), guesses, torch.full_like(guesses, ABSTAIN)
        )
        return SmoothedCertificate(
            predictions=predictions,
            radii=torch.from_numpy(np.asarray(radii, dtype=np.float64)),
            guesses=guesses,
            counts_selection=counts0,
            counts=counts,
            p_lower=torch.from_numpy(np.asarray(p_lower, dtype=np.float64)),
            n0=n0,
            n=n,
            alpha=alpha,
        )

    # -- sampling -------------------------------------------------------------------------------

    def _prepare(self, x: Tensor, generator: GeneratorLike) -> tuple[Tensor, torch.Generator]:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise SpecError.single("inputs", "must be a floating-point tensor of shape (N, ...)")
        device = self.device
        if isinstance(generator, torch.Generator):
            if generator.device.type != device.type:
                raise SpecError.single(
                    "generator", f"is on {generator.device}, the base classifier on {device}"
                )
        elif generator is not None and (
            isinstance(generator, bool) or not isinstance(generator, int)
        ):
            raise SpecError.single(
                "generator", f"must be a torch.Generator, an int seed or None, got {generator!r}"
            )
        return x.detach().to(device), make_generator(generator, device=device)

    def _channels_last(self, x: Tensor) -> bool:
        if x.dim() != 4 or self.memory_format == "contiguous":
            return False
        if self.memory_format == "channels_last":
            return True
        # auto: on CPU, for models with convolutions (4-d weights); others gain nothing.
        return x.device.type == "cpu" and any(p.dim() == 4 for p in self.base.parameters())

    def _counts(
        self, x: Tensor, reps: Sequence[int], batch_size: int, gen: torch.Generator
    ) -> list[Tensor]:
        """Counts ``(N, K)`` int64 on the device for each entry of ``reps``: ``reps[j]`` noisy
        copies of every input, drawn after those of ``reps[:j]`` (one stream, full batches)."""
        n_in, k = x.shape[0], self.num_classes
        counts = torch.zeros((len(reps) * n_in, k), dtype=torch.int64, device=x.device)
        if n_in == 0:
            return [counts[:0] for _ in reps]
        channels_last = self._channels_last(x)
        # Noise is generated and added in a contiguous buffer laid out like the model input:
        # (N, H, W, C) viewed as (N, C, H, W) for channels-last, so ``normal_`` and the add take
        # their vectorised contiguous paths in both layouts.
        store = x.permute(0, 2, 3, 1).contiguous() if channels_last else x.contiguous()

        def to_model(t: Tensor) -> Tensor:
            return t.permute(0, 3, 1, 2) if channels_last else t

        rows = min(batch_size, n_in * sum(reps))
        noise = torch.empty((rows, *store.shape[1:]), dtype=x.dtype, device=x.device)
        gathered: Tensor | None = None
        flat_counts = counts.view(-1)
        restore_format = channels_last and self._to_channels_last()
        with eval_mode(self.base):
            try:
                with torch.inference_mode():
                    for m, pieces in _chunks(n_in, reps, batch_size):
                        buf = noise[:m].normal_(0.0, self.sigma, generator=gen)
                        j0, lo0, _ = pieces[0]
                        j1, _, hi1 = pieces[-1]
                        first = j0 * n_in + lo0 // reps[j0]  # slot of the batch's first row
                        last = j1 * n_in + (hi1 - 1) // reps[j1]  # and of its last row
                        slots: Tensor | None = None
                        if first == last:  # all rows are copies of one input: broadcast
                            buf.add_(store[first % n_in])
                        else:
                            if gathered is None:
                                gathered = torch.empty_like(noise)
                            inputs = _batch_inputs(pieces, reps, x.device)
                            torch.index_select(store, 0, inputs, out=gathered[:m])
                            buf.add_(gathered[:m])
                            slots = _batch_slots(inputs, pieces, n_in)
                        logits = self.base(to_model(buf))
                        if logits.dim() != 2 or logits.shape != (m, k):
                            raise SpecError.single(
                                "num_classes",
                                f"the base classifier returned logits of shape {tuple(logits.shape)} "
                                f"for {m} inputs, expected ({m}, {k})",
                            )
                        pred = logits.argmax(dim=1)
                        # Count on the device: row -> (slot - first) * K + class, one bincount.
                        local = pred if slots is None else (slots - first).mul_(k).add_(pred)
                        flat_counts[first * k : (last + 1) * k].add_(
                            torch.bincount(local, minlength=(last - first + 1) * k)
                        )
            finally:
                if restore_format:
                    self.base.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return [counts[j * n_in : (j + 1) * n_in] for j in range(len(reps))]

    def _to_channels_last(self) -> bool:
        """Switch the base's 4-d parameters and buffers to channels-last; True when they were
        all in the default layout (so the caller switches them back)."""
        tensors = [t for t in (*self.base.parameters(), *self.base.buffers()) if t.dim() == 4]
        was_default = all(t.is_contiguous() for t in tensors)
        self.base.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return was_default and bool(tensors)


Piece = tuple[int, int, int]
"""``(phase, lo, hi)``: rows ``lo .. hi - 1`` of phase ``phase`` of the sample stream."""


def _chunks(n_in: int, reps: Sequence[int], batch_size: int) -> Iterator[tuple[int, list[Piece]]]:
    """Cut the stream of ``n_in * sum(reps)`` noisy samples into batches of ``batch_size`` rows
    (the last one shorter).

    Phase ``j`` of the stream holds ``n_in * reps[j]`` rows; its row ``q`` is a copy of input
    ``q // reps[j]``, counted in slot ``j * n_in + q // reps[j]`` (slots never decrease along
    the stream). Yields ``(rows, pieces)`` per batch, ``pieces`` being the batch's row ranges
    in each phase it touches, in stream order.
    """
    sizes = [n_in * r for r in reps]
    start, total = 0, sum(sizes)
    while start < total:
        stop = min(start + batch_size, total)
        pieces: list[Piece] = []
        off = 0
        for j, size in enumerate(sizes):
            lo, hi = max(start, off), min(stop, off + size)
            if lo < hi:
                pieces.append((j, lo - off, hi - off))
            off += size
        yield stop - start, pieces
        start = stop


def _batch_inputs(pieces: list[Piece], reps: Sequence[int], device: torch.device) -> Tensor:
    """The input index of every row of a batch, ``(rows,)`` int64 on ``device``."""
    parts = [
        torch.arange(lo, hi, device=device).div_(reps[j], rounding_mode="floor")
        for j, lo, hi in pieces
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _batch_slots(inputs: Tensor, pieces: list[Piece], n_in: int) -> Tensor:
    """The counting slot of every row of a batch: its input plus ``phase * n_in``."""
    if len(pieces) == 1:
        return inputs + pieces[0][0] * n_in
    offsets = torch.tensor([j * n_in for j, _, _ in pieces], device=inputs.device)
    sizes = torch.tensor([hi - lo for _, lo, hi in pieces], device=inputs.device)
    return inputs + offsets.repeat_interleave(sizes, output_size=inputs.shape[0])


# -- data-set certification -----------------------------------------------------------------


def certify_dataset(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1000,
    seed: int = 0,
    radii: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
    device: str | torch.device | None = None,
    memory_format: MemoryFormat = "auto",
) -> CertificationResult:
    """Certify every input of ``inputs`` ``(N, ...)`` with labels ``(N,)`` (CERTIFY, one call).

    Args:
        model: the base classifier, returning logits ``(N, num_classes)``.
        num_classes, sigma, memory_format: see :class:`SmoothedClassifier`.
        n0, n, alpha, batch_size: see :meth:`SmoothedClassifier.certify_detailed`.
        seed: seeds the noise (same seed, same result on the same device).
        radii: L2 radii (input units, ``>= 0``) at which ``certified_accuracy`` is reported.
        device: where to run; default the model's device. The model is moved there (in place,
            as ``nn.Module.to`` does).
    """
    run = _DatasetRun(n0, n, alpha, batch_size, seed, tuple(radii))
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise SpecError.single("labels", "must be a tensor of shape (N,)")
    if not isinstance(inputs, Tensor) or inputs.shape[:1] != labels.shape:
        raise SpecError.single("labels", "inputs and labels differ in length")
    smoothed = SmoothedClassifier(model, num_classes, sigma, memory_format=memory_format)
    if device is not None:
        model.to(torch.device(device))
    t0 = time.perf_counter()
    cert = smoothed.certify_detailed(inputs, n0, n, alpha, batch_size=batch_size, generator=seed)
    wall = time.perf_counter() - t0
    return _record(smoothed, run, cert, labels.detach().cpu().to(torch.int64), wall)


@dataclass(frozen=True)
class _DatasetRun:
    """The settings of one :func:`certify_dataset` call that its record keeps; ``seed`` and
    ``radii`` (L2, input units) are checked here, ``radii`` stored as floats."""

    n0: int
    n: int
    alpha: float
    batch_size: int
    seed: int
    radii: tuple[float, ...]

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SpecError.single("seed", f"must be an int, got {self.seed!r}")
        grid = tuple(float(r) for r in self.radii)
        if any(not math.isfinite(r) or r < 0 for r in grid):
            raise SpecError.single(
                "radii", f"must be finite numbers >= 0, got {list(self.radii)!r}"
            )
        object.__setattr__(self, "radii", grid)  # frozen: set once, here


def _record(
    smoothed: SmoothedClassifier,
    run: _DatasetRun,
    cert: SmoothedCertificate,
    y: Tensor,
    wall: float,
) -> CertificationResult:
    """The :class:`CertificationResult` of ``cert`` against labels ``y`` ``(N,)`` (CPU int64),
    with ``wall`` seconds of certification."""
    pred, rad = cert.predictions, cert.radii
    correct = (pred == y) & (pred != ABSTAIN)
    count = int(y.shape[0])

    def share(mask: Tensor) -> float:
        return float(mask.sum()) / count if count else 0.0

    return CertificationResult(
        sigma=smoothed.sigma,
        n0=run.n0,
        n=run.n,
        alpha=run.alpha,
        batch_size=run.batch_size,
        seed=run.seed,
        num_classes=smoothed.num_classes,
        device=str(smoothed.device),
        n_samples=count,
        labels=y.tolist(),
        predictions=pred.tolist(),
        radii=rad.tolist(),
        correct=correct.tolist(),
        abstain_rate=share(pred == ABSTAIN),
        clean_accuracy=share(correct),
        certified_accuracy={radius_key(r): share(correct & (rad >= r)) for r in run.radii},
        average_certified_radius=float(torch.where(correct, rad, 0.0).sum()) / count
        if count
        else 0.0,
        max_certifiable_radius=max_certifiable_radius(smoothed.sigma, run.n, run.alpha),
        wall_time_s=wall,
        samples_per_second=count * (run.n0 + run.n) / wall if wall > 0 else 0.0,
    )
