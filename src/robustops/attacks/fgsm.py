"""Fast gradient sign method (Goodfellow et al. 2015); for L2, one normalised gradient step."""

from __future__ import annotations

import torch
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, project, random_start
from robustops.attacks.eot import ascent_direction, loss_and_grad
from robustops.attacks.losses import ce_loss
from robustops.attacks.registry import register_attack
from robustops.threats import ThreatModel

__all__ = ["FGSM"]


@register_attack
class FGSM(Attack):
    """One gradient step of length ``epsilon`` (or ``step_size``), optionally from a random start
    of radius ``start_scale * epsilon`` (the "fast" FGSM of Wong et al. 2020).

    Args:
        threat: norm, epsilon, bounds and goal.
        random_start: start at a uniform point of the scaled ball instead of the input.
        start_scale: radius of the random start as a fraction of epsilon.
        step_size: step length; default ``epsilon`` (``1.25 * epsilon`` is Wong et al.'s choice
            with a random start).
        eot_samples: forward+backward passes whose gradients are averaged (Expectation over
            Transformation, for stochastic models); each counts as a query. 1: plain FGSM.
        seed: seeds the random start (per sample: see :meth:`Attack._randomness`).
    """

    name = "fgsm"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        random_start: bool = False,
        start_scale: float = 1.0,
        step_size: float | None = None,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("start_scale", start_scale, allow_zero=True)
        self._check_positive("eot_samples", eot_samples, integer=True)
        if step_size is not None:
            self._check_positive("step_size", step_size)
        self.random_start = bool(random_start)
        self.start_scale = float(start_scale)
        self.step_size = step_size
        self.eot_samples = eot_samples

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        start = (
            random_start(x, self.threat, self._randomness(x).rows(), self.start_scale)
            if self.random_start
            else x
        )
        _, _, grad = loss_and_grad(model, start, y, targets, ce_loss, self.eot_samples)
        alpha = self.threat.epsilon if self.step_size is None else self.step_size
        adv = project(start + alpha * ascent_direction(grad, self.threat.norm), x, self.threat)
        return adv, torch.full((x.shape[0],), self.eot_samples, dtype=torch.int64, device=x.device)
