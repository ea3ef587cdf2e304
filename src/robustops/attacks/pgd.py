"""Projected gradient descent (Madry et al. 2018) for L∞ and L2, with random start, restarts
and per-sample early stop: a sample that becomes adversarial leaves the batch, so the remaining
steps cost only what is still robust."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial, project, random_start
from robustops.attacks.losses import ce_loss, dlr_loss, margin_loss
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["PGD", "LOSSES", "ascent_direction"]

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "margin": margin_loss}


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent unit direction for ``grad`` ``(N, ...)``: sign for L∞, ``g/||g||₂`` for L2."""
    if norm == "linf":
        return grad.sign()
    g_norm = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return grad / g_norm.view(-1, *([1] * (grad.dim() - 1)))


def loss_and_grad(
    model: ModelFn, x: Tensor, y: Tensor, t: Tensor | None, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward+backward pass: ``(logits (N, K), per-sample loss (N,), input gradient)``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits, y, t)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


@register_attack
class PGD(Attack):
    """PGD: ``steps`` signed (L∞) or normalised (L2) gradient steps, projected after each.

    Args:
        threat: norm, epsilon, bounds and goal.
        steps: gradient steps per restart.
        step_size: step length in input units; default ``2.5 * epsilon / steps``.
        restarts: random restarts, each run only on the samples still not adversarial.
        random_start: start uniformly inside the ball instead of at the input.
        loss: ``"ce"``, ``"dlr"`` or ``"margin"``.
        early_stop: drop a sample from the batch as soon as it is adversarial.
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
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("steps", steps, integer=True)
        self._check_positive("restarts", restarts, integer=True)
        if step_size is not None:
            self._check_positive("step_size", step_size)
        if loss not in LOSSES:
            raise SpecError.single("loss", f"must be one of {sorted(LOSSES)}, got {loss!r}")
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = bool(random_start)
        self.loss = loss
        self.early_stop = bool(early_stop)

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        threat = self.threat
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.epsilon / self.steps
        loss_fn = LOSSES[self.loss]
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            t0 = targets[idx] if targets is not None else None
            adv = random_start(x0, threat, gen) if self.random_start else x0.clone()
            for _step in range(self.steps):
                logits, _, grad = loss_and_grad(model, adv, y0, t0, loss_fn)
                queries[idx] += 1
                if self.early_stop:
                    hit = is_adversarial(logits, y0, t0)
                    if bool(hit.any()):
                        best[idx[hit]] = adv[hit]
                        done[idx[hit]] = True
                        keep = ~hit
                        idx, x0, y0, adv, grad = idx[keep], x0[keep], y0[keep], adv[keep], grad[keep]
                        t0 = t0[keep] if t0 is not None else None
                        if idx.numel() == 0:
                            break
                adv = project(adv + alpha * ascent_direction(grad, threat.norm), x0, threat)
            if idx.numel():
                best[idx] = adv
                if not self.early_stop or self.restarts > 1:
                    with torch.no_grad():
                        done[idx] = is_adversarial(model(adv), y0, t0)
        return best, queries

