"""Inner maximisation for adversarial training: PGD / FGSM steps inside a norm ball, adversarial
occlusion patches and noise, drawn for the global batch so that N processes match one.

These run in the training loop, so they skip the attack objects' per-call checks and
verification and call :func:`robustops.attacks.pgd.loss_and_grad` and
:func:`robustops.attacks.project` directly; the model must be in eval mode (the trainer sees to
it). Gradients are taken with respect to the inputs only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustops.attacks import ModelFn, project
from robustops.attacks.pgd import ascent_direction, loss_and_grad
from robustops.threats import Norm, ThreatModel
from robustops.training.distributed import DistContext

__all__ = ["BatchRandom", "Perturbation", "Precision", "SearchConfig", "kl_to", "search"]

InnerLoss = Literal["ce", "kl"]
Precision = Literal["float32", "bfloat16"]
LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class BatchRandom:
    """Random draws for a global batch, of which this process keeps its rows.

    Every process advances ``gen`` identically (same calls, same global shapes), so the draws
    for a sample do not depend on how many processes share the batch.

    Args:
        gen: the trainer's generator (CPU); its state is checkpointed.
        ctx: the process group context (rows ``rank::world_size`` are this process's).
    """

    def __init__(self, gen: torch.Generator, ctx: DistContext) -> None:
        self.gen = gen
        self.ctx = ctx

    def _global(self, n_local: int) -> int:
        return n_local * self.ctx.world_size

    def uniform(self, like: Tensor) -> Tensor:
        """U[0, 1) of ``like``'s shape, dtype and device (this process's rows)."""
        shape = (self._global(like.shape[0]), *like.shape[1:])
        out = torch.rand(shape, generator=self.gen, dtype=like.dtype)
        return self.ctx.rows(out).to(like.device)

    def normal(self, like: Tensor) -> Tensor:
        """N(0, 1) of ``like``'s shape, dtype and device (this process's rows)."""
        shape = (self._global(like.shape[0]), *like.shape[1:])
        out = torch.randn(shape, generator=self.gen, dtype=like.dtype)
        return self.ctx.rows(out).to(like.device)

    def integers(self, high: int, n_local: int, device: torch.device) -> Tensor:
        """``(n_local,)`` int64 uniform in ``[0, high)`` (this process's rows)."""
        out = torch.randint(0, high, (self._global(n_local),), generator=self.gen)
        return self.ctx.rows(out).to(device)

    def choice(self, weights: list[float]) -> int:
        """One index drawn with probability proportional to ``weights`` (same on every rank)."""
        w = torch.tensor(weights, dtype=torch.float64)
        return int(torch.multinomial(w, 1, generator=self.gen))


@dataclass(frozen=True)
class Perturbation:
    """One perturbation at its current budget (after the curriculum).

    Attributes:
        kind: ``"linf"``, ``"l2"``, ``"patch"`` or ``"noise"``.
        epsilon: ball radius for ``linf``/``l2`` (input units).
        size: patch side in pixels.
        sigma: noise standard deviation (input units).
        bounds: valid input range.
    """

    kind: str
    epsilon: float = 0.0
    size: int = 0
    sigma: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)

    def threat(self) -> ThreatModel:
        """The norm-ball threat (``linf``/``l2`` only)."""
        norm: Norm = "l2" if self.kind == "l2" else "linf"
        return ThreatModel(
            name=f"train-{self.kind}", norm=norm, epsilon=self.epsilon, bounds=self.bounds
        )


def kl_to(p_clean: Tensor) -> LossFn:
    """Per-sample ``KL(p_clean || softmax(logits))`` as a loss of ``(logits, labels, targets)``
    (TRADES' inner objective); ``p_clean`` ``(N, K)`` are fixed clean probabilities."""

    def loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
        del labels, targets
        logp = F.log_softmax(logits, dim=1)
        return (p_clean * (p_clean.clamp_min(1e-12).log() - logp)).sum(dim=1)

    return loss


def _ce(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    del targets
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass(frozen=True)
class SearchConfig:
    """How :func:`search` searches.

    Attributes:
        steps: gradient steps (1 with ``random_start`` is fast FGSM).
        rel_step: step length relative to the budget: ``rel_step * epsilon`` for a norm ball,
            ``rel_step * (high - low)`` for a patch.
        random_start: start uniformly in the ball (L∞; L2: uniform in the ball) or, for
            ``loss="kl"``, at ``x + 0.001 * N(0, I)`` as TRADES does.
        loss: ``"ce"`` (PGD-AT, fast) or ``"kl"`` (TRADES: KL to the clean prediction).
        start_scale: radius of the random start as a multiple of ``epsilon`` (norm balls).
        clip: project onto the ``epsilon`` ball after each step. ``False`` keeps the perturbation
            in the ball of radius ``(start_scale + steps * rel_step) * epsilon`` only, as N-FGSM
            (de Jorge et al. 2022) does to avoid catastrophic overfitting.
        precision: ``"bfloat16"`` runs the model under autocast for the search (mixed
            precision, as fast adversarial training does on GPUs); the inputs, the steps and the
            result stay in the inputs' dtype.
    """

    steps: int
    rel_step: float
    random_start: bool = True
    loss: InnerLoss = "ce"
    start_scale: float = 1.0
    clip: bool = True
    precision: Precision = "float32"


@dataclass(frozen=True)
class _Ascent:
    """The gradient ascent of one search: ``steps`` steps of length ``alpha`` (input units) on
    ``loss_fn`` of ``model`` at labels ``y``."""

    model: ModelFn
    y: Tensor
    loss_fn: LossFn
    steps: int
    alpha: float

    def grad(self, adv: Tensor) -> Tensor:
        """The loss gradient with respect to the inputs ``adv``."""
        _, _, grad = loss_and_grad(self.model, adv, self.y, None, self.loss_fn)
        return grad


def search(
    model: ModelFn,
    x: Tensor,
    y: Tensor,
    pert: Perturbation,
    rand: BatchRandom,
    config: SearchConfig,
) -> Tensor:
    """Perturbed inputs ``(N, ...)`` for ``x`` ``(N, ...)`` with labels ``y`` ``(N,)``.

    Args:
        model: in eval mode; only input gradients are taken.
        pert: what may change and by how much.
        rand: the batch's random source (random start, patch position, noise).
        config: steps, step length, start, loss, clipping and precision.

    The result lies in the bounds and (``config.clip``) in the ball; ``noise`` is not searched.
    """
    if config.precision == "bfloat16" and pert.kind != "noise":
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return search(model, x, y, pert, rand, replace(config, precision="float32"))
    low, high = pert.bounds
    x = x.detach()
    if pert.kind == "noise":
        return (x + pert.sigma * rand.normal(x)).clamp_(low, high)
    loss_fn: LossFn = _ce
    if config.loss == "kl":
        with torch.no_grad():
            loss_fn = kl_to(F.softmax(model(x), dim=1))
    if pert.kind == "patch":
        ascent = _Ascent(model, y, loss_fn, config.steps, config.rel_step * (high - low))
        return _patch(ascent, x, pert, rand)
    if pert.epsilon <= 0:
        return x.clone()
    ascent = _Ascent(model, y, loss_fn, config.steps, config.rel_step * pert.epsilon)
    ball = pert
    if not config.clip:
        ball = replace(
            pert, epsilon=(config.start_scale + config.steps * config.rel_step) * pert.epsilon
        )
    if pert.kind == "linf":
        return _linf(ascent, x, pert.epsilon, ball, rand, config)
    return _l2(ascent, x, pert.epsilon, ball, rand, config)


def _linf(
    ascent: _Ascent,
    x: Tensor,
    eps: float,
    ball: Perturbation,
    rand: BatchRandom,
    config: SearchConfig,
) -> Tensor:
    """Signed-gradient steps in the L∞ ball ``ball`` around ``x`` from a start of radius
    ``config.start_scale * eps``."""
    low, high = ball.bounds
    radius = ball.epsilon
    lo, hi = (x - radius).clamp_(low, high), (x + radius).clamp_(low, high)
    if config.loss == "kl":
        adv = x + 0.001 * rand.normal(x)
    elif config.random_start:
        adv = x + config.start_scale * eps * (2 * rand.uniform(x) - 1)
    else:
        adv = x.clone()
    adv = torch.clamp(adv, lo, hi)
    for _ in range(ascent.steps):
        adv = torch.clamp(adv + ascent.alpha * ascent.grad(adv).sign(), lo, hi)
    return project(adv, x, ball.threat())


def _l2(
    ascent: _Ascent,
    x: Tensor,
    eps: float,
    ball: Perturbation,
    rand: BatchRandom,
    config: SearchConfig,
) -> Tensor:
    """Normalised-gradient steps in the L2 ball ``ball`` around ``x`` from a start uniform in
    the ball of radius ``config.start_scale * eps``."""
    threat = ball.threat()
    if config.loss == "kl":
        adv = project(x + 0.001 * rand.normal(x), x, threat)
    elif config.random_start:
        direction = rand.normal(x)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(
            -1, *([1] * (x.dim() - 1))
        )
        r = (
            config.start_scale
            * eps
            * rand.uniform(x[:, :1].flatten(1))[:, 0] ** (1.0 / x[0].numel())
        )
        adv = project(x + r.view(-1, *([1] * (x.dim() - 1))) * direction, x, threat)
    else:
        adv = x.clone()
    for _ in range(ascent.steps):
        adv = project(adv + ascent.alpha * ascent_direction(ascent.grad(adv), "l2"), x, threat)
    return adv


def _patch(ascent: _Ascent, x: Tensor, pert: Perturbation, rand: BatchRandom) -> Tensor:
    """A ``size``×``size`` occluding patch per sample (all channels), content searched by signed
    gradient steps inside the bounds from a uniform random fill."""
    if x.dim() != 4:
        raise ValueError("patch perturbations need images (N, C, H, W)")
    low, high = pert.bounds
    n, _, h, w = x.shape
    size = min(pert.size, h, w)
    top = rand.integers(h - size + 1, n, x.device)
    left = rand.integers(w - size + 1, n, x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + size).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + size).view(n, 1, 1))
    )
    mask = inside.unsqueeze(1).to(x.dtype)  # (N, 1, H, W)
    fill = low + (high - low) * rand.uniform(x)
    adv = x * (1 - mask) + fill * mask
    for _ in range(ascent.steps):
        adv = (adv + ascent.alpha * ascent.grad(adv).sign() * mask).clamp_(low, high)
    return adv
