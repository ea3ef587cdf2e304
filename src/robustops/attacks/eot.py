"""Loss gradients and averaged predictions with Expectation over Transformation (EOT, Athalye,
Engstrom, Ilyas & Kwok, ICML 2018) for stochastic models: the gradient attacks (FGSM, PGD,
APGD, tabular PGD), the score- and decision-based attacks (Square, uniform noise), the
evaluation suite and the gradient-masking audit share them, so this module is public.

A stochastic model (random input transformations, noise layers, dropout left on) gives a
different gradient on every pass; one sample of it is a poor ascent direction. With
``samples > 1`` the functions here average ``samples`` independent passes, which estimates the
gradient of the *expected* loss. With ``samples == 1`` they run the plain single pass, bit for
bit as before EOT existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from robustops.attacks.base import ModelFn
from robustops.attacks.losses import ce_loss, dlr_loss, margin_loss

__all__ = [
    "LOSSES",
    "LossFn",
    "ascent_direction",
    "averaged_model",
    "is_stochastic",
    "loss_and_grad",
    "mean_logits",
]

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""A per-sample loss: ``(logits (N, K), labels (N,), targets (N,) or None) -> (N,)``."""

LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "margin": margin_loss}


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent unit direction for ``grad`` ``(N, ...)``: sign for L∞, ``g/||g||₂``
    for L2."""
    if norm == "linf":
        return grad.sign()
    g_norm = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    out: Tensor = grad / g_norm.view(-1, *([1] * (grad.dim() - 1)))
    return out


def loss_and_grad(
    model: ModelFn, x: Tensor, y: Tensor, t: Tensor | None, loss_fn: LossFn, samples: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward+backward passes at ``x`` ``(N, ...)``: ``(logits (N, K), per-sample loss (N,),
    input gradient (N, ...))``.

    ``samples`` passes are averaged (EOT): the mean logits, the mean loss and the mean gradient,
    so decisions taken on the logits or the loss judge the expected model. Each pass counts as
    one query. ``samples == 1`` is the single pass, unchanged.
    """
    x = x.detach().requires_grad_(True)
    logits, loss, grad = _one_pass(model, x, y, t, loss_fn)
    if samples == 1:
        return logits, loss, grad
    # Out of place: a pass's outputs may alias the input (identity-like models) or be expanded
    # (autograd may return a broadcast gradient), so they are never written to.
    for _ in range(samples - 1):
        more_logits, more_loss, more_grad = _one_pass(model, x, y, t, loss_fn)
        logits = logits + more_logits
        loss = loss + more_loss
        grad = grad + more_grad
    return logits / samples, loss / samples, grad / samples


def _one_pass(
    model: ModelFn, x: Tensor, y: Tensor, t: Tensor | None, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward+backward pass at ``x`` (which requires grad): detached logits, loss, grad."""
    logits = model(x)
    loss = loss_fn(logits, y, t)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


@torch.no_grad()
def mean_logits(model: ModelFn, x: Tensor, samples: int = 1) -> Tensor:
    """Logits ``(N, K)`` at ``x`` ``(N, ...)``, averaged over ``samples`` forward passes (one
    plain pass when ``samples == 1``), without gradients."""
    out: Tensor = model(x)
    for _ in range(samples - 1):
        out = out + model(x)
    return out / samples if samples > 1 else out


def averaged_model(model: ModelFn, samples: int) -> ModelFn:
    """``model`` judged on the mean logits of ``samples`` forward passes (EOT for attacks that
    only query scores or decisions); ``model`` itself when ``samples == 1``. Each call costs
    ``samples`` queries."""
    if samples == 1:
        return model
    return lambda x: mean_logits(model, x, samples)


STOCHASTIC_TOLERANCE = 1e-5
"""Two passes differ when a logit moves by more than this times ``1 + max |logit|`` (smaller gaps
are floating-point non-determinism, e.g. GPU atomics, not a randomised model)."""


@torch.no_grad()
def is_stochastic(model: ModelFn, x: Tensor, first: Tensor | None = None) -> tuple[bool, float]:
    """Whether two forward passes on ``x`` ``(n, ...)`` differ (beyond
    :data:`STOCHASTIC_TOLERANCE`), and their largest logit gap (finite: NaN as 0, ∞ as the
    largest float). ``first``: the logits of a pass the caller already made on ``x``."""
    a = model(x) if first is None else first
    b = model(x)
    if torch.equal(a, b):
        return False, 0.0
    gap = float(torch.nan_to_num((a - b).abs().nan_to_num(nan=math.inf).amax().double()))
    scale = 1.0 + float(torch.nan_to_num(a.abs().nan_to_num(nan=0.0).amax().double()))
    return gap > STOCHASTIC_TOLERANCE * scale, gap
