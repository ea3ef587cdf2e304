"""Projected gradient descent (Madry et al. 2018) for L∞ and L2, with random start, restarts
and per-sample early stop: a sample that becomes adversarial leaves the batch, so the remaining
steps cost only what is still robust."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from robustops.attacks.base import (
    Attack,
    ModelFn,
    is_adversarial,
    project,
    random_start,
)
from robustops.attacks.eot import (
    LOSSES,
    LossFn,
    ascent_direction,
    loss_and_grad,
    mean_logits,
)
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel
from robustops.threats.geometry import RowDraws, eps_as, linf_box, random_point

__all__ = ["LOSSES", "PGD", "LossFn", "ascent_direction", "loss_and_grad"]


class PGDOptions:
    """PGD's options, checked (errors name the parameter) and stored by :meth:`_set_pgd_options`;
    shared by :class:`PGD` and the schema-constrained ``tabular-pgd``."""

    steps: int
    step_size: float | None
    restarts: int
    random_start: bool
    loss: str
    early_stop: bool

    def _set_pgd_options(
        self,
        steps: int,
        step_size: float | None,
        restarts: int,
        random_start: bool,
        loss: str,
        early_stop: bool,
    ) -> None:
        check = Attack._check_positive
        check("steps", steps, integer=True)
        check("restarts", restarts, integer=True)
        if step_size is not None:
            check("step_size", step_size)
        if loss not in LOSSES:
            raise SpecError.single("loss", f"must be one of {sorted(LOSSES)}, got {loss!r}")
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = bool(random_start)
        self.loss = loss
        self.early_stop = bool(early_stop)


class _Best:
    """Per sample, the best iterate seen so far: an adversarial one over any other, then the
    highest loss (ties keep the earlier)."""

    def __init__(self, start: Tensor) -> None:
        self.adv = start.clone()
        self.loss = torch.full(start.shape[:1], -torch.inf, device=start.device)
        self.hit = torch.zeros(start.shape[0], dtype=torch.bool, device=start.device)

    def update(self, adv: Tensor, loss: Tensor, hit: Tensor) -> None:
        better = (hit & ~self.hit) | ((hit == self.hit) & (loss > self.loss))
        self.adv = torch.where(better.view(-1, *([1] * (adv.dim() - 1))), adv, self.adv)
        self.loss = torch.where(better, loss.to(self.loss.dtype), self.loss)
        self.hit = self.hit | hit


class _LinfBall:
    """PGD's geometry in the L∞ ball: the exact box of the ball ∩ bounds around ``x0``, built
    once per restart, so each projection is a single clamp (the same result as ``project()``,
    see ``linf_box``); steps along the gradient's sign."""

    def __init__(self, x0: Tensor, threat: ThreatModel, box: tuple[Tensor, Tensor] | None = None):
        self.x0, self.threat = x0, threat
        low, high = threat.bounds
        self.lo, self.hi = (
            box if box is not None else linf_box(x0, eps_as(threat.epsilon, x0), low, high)
        )

    def start(self, draws: RowDraws, random: bool) -> Tensor:
        start = random_point(self.x0, self.threat, draws, 1.0) if random else self.x0
        return torch.clamp(start, self.lo, self.hi)

    def step(self, adv: Tensor, grad: Tensor, alpha: float) -> Tensor:
        # adv + alpha * sign(grad) is exact-equal to the out-of-place form.
        return torch.add(adv, grad.sign(), alpha=alpha).clamp_(self.lo, self.hi)

    def subset(self, keep: Tensor) -> _LinfBall:
        return _LinfBall(self.x0[keep], self.threat, (self.lo[keep], self.hi[keep]))


class _L2Ball:
    """PGD's geometry in the L2 ball: a start uniform in the ball, steps along the normalised
    gradient, each projected onto the ball ∩ bounds."""

    def __init__(self, x0: Tensor, threat: ThreatModel):
        self.x0, self.threat = x0, threat

    def start(self, draws: RowDraws, random: bool) -> Tensor:
        return random_start(self.x0, self.threat, draws) if random else self.x0.clone()

    def step(self, adv: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return project(adv + alpha * ascent_direction(grad, "l2"), self.x0, self.threat)

    def subset(self, keep: Tensor) -> _L2Ball:
        return _L2Ball(self.x0[keep], self.threat)


_BALLS: dict[str, type[_LinfBall] | type[_L2Ball]] = {"linf": _LinfBall, "l2": _L2Ball}
"""PGD's two variants differ only in this geometry (start, step, subset of the samples)."""


@register_attack
class PGD(PGDOptions, Attack):
    """PGD: ``steps`` signed (L∞) or normalised (L2) gradient steps, projected after each.

    Args:
        threat: norm, epsilon, bounds and goal.
        steps: gradient steps per restart.
        step_size: step length in input units; default ``2.5 * epsilon / steps``.
        restarts: random restarts, each run only on the samples still not adversarial.
        random_start: start uniformly inside the ball instead of at the input.
        loss: ``"ce"``, ``"dlr"`` or ``"margin"``.
        early_stop: drop a sample from the batch as soon as it is adversarial. Without early
            stop every sample runs all steps and the result is its best iterate (adversarial
            first, then the highest loss), which costs one more query per restart.
        eot_samples: forward+backward passes averaged per step (Expectation over
            Transformation, for stochastic models); early stop and restarts judge the mean
            logits. Every pass is a query, so a sample costs up to
            ``steps * restarts * eot_samples``. 1: the plain attack.
        seed: seeds the random starts.
    """

    name = "pgd"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: Literal["ce", "dlr", "margin"] = "ce",
        early_stop: bool = True,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._set_pgd_options(steps, step_size, restarts, random_start, loss, early_stop)
        self._check_positive("eot_samples", eot_samples, integer=True)
        self.eot_samples = eot_samples

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        threat = self.threat
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.epsilon / self.steps
        loss_fn = LOSSES[self.loss]
        eot = self.eot_samples
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        rnd = self._randomness(x)  # per-sample random starts
        for restart in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            t0 = targets[idx] if targets is not None else None
            ball = _BALLS[threat.norm](x0, threat)
            adv = ball.start(rnd.rows(idx), self.random_start)
            top = None if self.early_stop else _Best(adv)
            for step in range(self.steps):
                logits, loss, grad = loss_and_grad(model, adv, y0, t0, loss_fn, eot)
                if top is not None:
                    top.update(adv, loss, is_adversarial(logits, y0, t0))
                elif bool((hit := is_adversarial(logits, y0, t0)).any()):
                    hit_idx = idx[hit]
                    best[hit_idx] = adv[hit]
                    done[hit_idx] = True
                    queries[hit_idx] += (step + 1) * eot
                    keep = ~hit
                    idx, x0, y0, adv, grad = (t[keep] for t in (idx, x0, y0, adv, grad))
                    t0 = t0[keep] if t0 is not None else None
                    ball = ball.subset(keep)
                    if idx.numel() == 0:
                        break
                adv = ball.step(adv, grad, alpha)
            if top is not None:
                # Without early stop the answer is the best iterate (adversarial first, then the
                # highest loss), not the last: the last one is judged too (one more query).
                logits = mean_logits(model, adv, eot)
                top.update(adv, loss_fn(logits, y0, t0), is_adversarial(logits, y0, t0))
                queries[idx] += eot
                adv = top.adv
            if idx.numel():
                queries[idx] += self.steps * eot
                best[idx] = adv
                if top is not None:
                    done[idx] = top.hit
                elif restart + 1 < self.restarts:
                    # Only a later restart reads `done`; the last one would spend a forward pass.
                    done[idx] = is_adversarial(mean_logits(model, adv, eot), y0, t0)
        return best, queries
