"""Adversarial weight perturbation (Wu et al. 2020, "Adversarial Weight Perturbation Helps
Robust Generalization").

The reference implementation copies the model into a proxy, takes one SGD step that *increases*
the training loss on the adversarial batch, and rescales the weight difference of every weight
matrix ``l`` to ``||w_l||``. One SGD step from ``w`` moves by ``lr * g``, and the rescaling
cancels ``lr``, so the perturbation is ``v_l = gamma * ||w_l|| * g_l / ||g_l||`` with ``g`` the
gradient of the training loss: computed here directly, without a proxy model. Vectors (biases,
norms' scales) are not perturbed, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustops.training.distributed import DistContext

__all__ = ["WeightPerturbation", "awp_parameters"]


def awp_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters AWP perturbs: trainable tensors with two or more dimensions."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


class WeightPerturbation:
    """Apply and undo one AWP step.

    Args:
        model: the (unwrapped) model whose weights move.
        gamma: relative size of the move per weight matrix.
        ctx: process group; the loss gradient is averaged across processes so that every rank
            applies the same perturbation.
    """

    def __init__(self, model: nn.Module, gamma: float, ctx: DistContext) -> None:
        self.params = awp_parameters(model)
        self.gamma = gamma
        self.ctx = ctx
        self._diff: list[Tensor] | None = None

    def perturb(self, loss_fn: Callable[[], Tensor]) -> None:
        """Move the weights along the gradient of ``loss_fn()`` (a scalar training loss computed
        with the unwrapped model)."""
        if self._diff is not None:
            raise RuntimeError("AWP perturbation already applied; call restore() first")
        loss = loss_fn()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        diffs = []
        with torch.no_grad():
            flat = [
                torch.zeros_like(p) if g is None else g
                for p, g in zip(self.params, grads, strict=True)
            ]
            if self.ctx.enabled:
                for g in flat:
                    self.ctx.all_reduce_sum(g)
                    g.div_(self.ctx.world_size)
            for p, g in zip(self.params, flat, strict=True):
                diff = self.gamma * p.norm() * g / (g.norm() + 1e-20)
                p.add_(diff)
                diffs.append(diff)
        self._diff = diffs

    def restore(self) -> None:
        """Undo the move (after the optimizer step, as the reference does)."""
        if self._diff is None:
            return
        with torch.no_grad():
            for p, diff in zip(self.params, self._diff, strict=True):
                p.sub_(diff)
        self._diff = None
