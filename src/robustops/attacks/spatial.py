"""Spatial attacks: a rotation and a translation of the image instead of an additive
perturbation (Engstrom, Tran, Tsipras, Schmidt & Madry, "Exploring the landscape of spatial
robustness", ICML 2019).

A ``spatial`` threat allows a rotation by at most ``epsilon`` degrees about the image centre
and a shift by at most ``translation`` pixels along each axis. The transform
(:func:`spatial_transform`) resamples the image bilinearly and shifts zeros in; its parameters
per sample, ``(angle in degrees, dx, dy in pixels)``, are what the attacks report in
``AttackResult.details``, so :func:`spatial_within_budget` checks a result by recomputing it.

Two attacks, as in the paper:

* ``spatial-grid`` (score-based): an exhaustive grid over the three parameters (the paper's
  31 rotations × 5 × 5 translations by default), tried from the smallest transform to the
  largest; a sample stops at the first grid point that fools the model, else keeps the point of
  highest loss. The paper finds this the strongest attack on this small, non-concave space.
* ``spatial-pgd`` (white-box): projected signed-gradient ascent on the three parameters from
  random starts. The paper reports it clearly weaker than the grid search (the loss landscape
  over rotations and translations is highly non-concave); it is here as the first-order baseline.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial
from robustops.attacks.eot import LOSSES
from robustops.attacks.randomness import SampleRandomness
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = [
    "SpatialGrid",
    "SpatialPGD",
    "budget_share",
    "spatial_adversarial",
    "spatial_transform",
    "spatial_within_budget",
]

_MATCH_ATOL = 1e-5
"""How far (per entry, input units) an output may be from the transform its details describe."""
_BUDGET_RTOL = 1e-6
"""Float tolerance on the angle and shift budgets, relative to ``1 + budget``."""


def _as_images(x: Tensor) -> Tensor:
    """``x`` as ``(N, C, H, W)``: ``(N, H, W)`` is read as one channel."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def spatial_transform(x: Tensor, params: Tensor) -> Tensor:
    """Rotate and shift images, differentiably in both ``x`` and ``params``.

    Args:
        x: images ``(N, C, H, W)`` (or ``(N, H, W)``), any float dtype and device.
        params: ``(N, 3)``: per sample, the rotation angle in degrees (counter-clockwise as
            displayed, about the image centre), then the shift ``dx`` (pixels to the right) and
            ``dy`` (pixels down), applied after the rotation.

    Returns:
        ``x``'s shape: each output pixel samples the input bilinearly at the pre-image of its
        centre (``affine_grid``/``grid_sample``, ``align_corners=False``); pixels whose pre-image
        falls outside the image get zeros. Zero parameters give ``x`` back (up to rounding).
        Angles act in pixel units, so a rotation of a non-square image stays a rotation.
    """
    images = _as_images(x)
    n, _, h, w = images.shape
    p = params.to(device=images.device, dtype=images.dtype)
    angle = torch.deg2rad(p[:, 0])
    dx, dy = p[:, 1], p[:, 2]
    cos, sin = angle.cos(), angle.sin()
    # Output pixel offset (u, v) from the centre (v down) comes from R^T ((u, v) - (dx, dy)),
    # R the counter-clockwise rotation in these coordinates; normalised coordinates are
    # (2u / W, 2v / H).
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), (2.0 / w) * (sin * dy - cos * dx)], dim=1),
            torch.stack([sin * (w / h), cos, -(2.0 / h) * (sin * dx + cos * dy)], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view_as(x)


def spatial_adversarial(x: Tensor, params: Tensor, bounds: tuple[float, float]) -> Tensor:
    """:func:`spatial_transform` clamped to ``bounds`` (a no-op when the bounds contain 0, since
    bilinear interpolation of in-bounds values and zeros stays between them; otherwise the
    zeros shifted in become the nearest bound). What the spatial attacks output."""
    low, high = bounds
    return spatial_transform(x, params).clamp(low, high)


def _budgets(threat: ThreatModel, like: Tensor) -> Tensor:
    """``(3,)`` the largest |angle| (degrees), |dx| and |dy| (pixels) the threat allows."""
    return torch.tensor(
        [threat.epsilon, threat.translation, threat.translation],
        dtype=like.dtype,
        device=like.device,
    )


def budget_share(threat: ThreatModel, params: Tensor) -> Tensor:
    """``(N,)``: the largest share of the budget that ``params`` ``(N, 3)`` uses,
    ``max(|angle| / epsilon, |dx| / translation, |dy| / translation)``, terms with a zero budget
    left out (0 when every budget is zero). Above 1 for parameters outside the budget."""
    budgets = _budgets(threat, params)
    used = params.abs() / budgets.clamp_min(1e-30)
    used = torch.where(budgets > 0, used, torch.zeros_like(used))
    return used.amax(dim=1)


def spatial_within_budget(
    threat: ThreatModel, x: Tensor, adv: Tensor, details: Any
) -> tuple[Tensor, Tensor]:
    """Whether each spatial adversarial input is the transform its details describe, within the
    threat's budget.

    Args:
        threat: a ``spatial`` threat (``epsilon`` degrees, ``translation`` pixels, bounds).
        x: the inputs ``(N, C, H, W)``.
        adv: the attack's outputs, ``x``'s shape.
        details: the attack's ``AttackResult.details``: ``(N, 3)`` float, angle in degrees and
            shifts in pixels per sample.

    Returns:
        ``(ok, size)``, both ``(N,)``: ``ok`` (bool) holds when the parameters are finite,
        within the budget (up to a relative float tolerance of 1e-6) and ``adv`` equals
        :func:`spatial_adversarial` of ``x`` with them within 1e-5 per entry; ``size`` (float, in
        [0, 1]) is :func:`budget_share` (clipped). Malformed details (not a float tensor of
        shape ``(N, 3)``, NaN) fail the samples concerned, never raise.
    """
    n = x.shape[0]
    ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    size = torch.zeros(
        n, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device
    )
    if (
        not isinstance(details, Tensor)
        or details.shape != (n, 3)
        or not details.is_floating_point()
        or not isinstance(adv, Tensor)
        or adv.shape != x.shape
        or x.dim() not in (3, 4)
    ):
        return ok, size
    try:
        params = details.detach().to(device=x.device)
        finite = torch.isfinite(params).all(dim=1)
        params = torch.nan_to_num(params, nan=0.0, posinf=0.0, neginf=0.0)
        wide = params.double()
        limit = _budgets(threat, wide) * (1 + _BUDGET_RTOL) + _BUDGET_RTOL
        within = (wide.abs() <= limit).all(dim=1)
        expected = spatial_adversarial(x, params.to(x.dtype), threat.bounds)
        gap = (adv.to(x.dtype) - expected).abs().flatten(1)
        match = (gap <= _MATCH_ATOL).all(dim=1)  # NaN in adv compares False
        ok = finite & within & match
        share = torch.nan_to_num(budget_share(threat, wide), nan=1.0).clamp(0.0, 1.0)
        size = torch.where(finite, share, torch.ones_like(share)).to(size.dtype)
    except (RuntimeError, ValueError, TypeError):
        return torch.zeros_like(ok), size
    return ok, size


class _SpatialAttack(Attack):
    """What both spatial attacks share: the threat family, the output (the transform the
    details describe, clamped to the bounds) and its size (the share of the budget used)."""

    norms = ("spatial",)

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        # The output is spatial_adversarial(x, details) already, inside the bounds; projecting
        # it onto a norm ball would break the transform its details describe.
        return adv

    def _perturbation(self, adv: Tensor, x: Tensor, details: Any) -> Tensor:
        return budget_share(self.threat, details).to(x.dtype)

    def _budget(self, x: Tensor) -> Tensor:
        """``(3,)`` the angle and shift budgets in ``x``'s dtype and device."""
        return _budgets(self.threat, x)


def _axis(budget: float, points: int) -> list[float]:
    """``points`` evenly spaced values in ``[-budget, budget]`` (0 alone for one point or a zero
    budget)."""
    if points == 1 or budget == 0:
        return [0.0]
    step = 2 * budget / (points - 1)
    return [-budget + i * step for i in range(points)]


@register_attack
class SpatialGrid(_SpatialAttack):
    """Grid search over rotations and translations (Engstrom et al. 2019), score-based.

    The grid is ``rotations`` evenly spaced angles in ``[-epsilon, epsilon]`` times
    ``translations`` evenly spaced shifts in ``[-translation, translation]`` per axis (the
    paper's 31 × 5 × 5 = 775 points by default; odd counts include the identity). Points are
    tried in order of the share of the budget they use (:func:`budget_share`, ties by the sum
    of the shares, then angle, dx, dy), so the first point that fools a sample is among the
    smallest transforms that do. Each point is one forward pass over the samples still not
    adversarial: a sample stops at its first success (one query per point tried), otherwise it
    keeps the point of highest ``loss`` over the whole grid. With ``threat.query_budget`` set,
    only the first ``query_budget`` points are tried.

    Args:
        threat: a ``spatial`` threat (degrees, pixels, bounds, goal).
        rotations: grid points along the angle axis, an int >= 1.
        translations: grid points along each shift axis, an int >= 1.
        loss: the score ranking the points of a sample that is never fooled, ``"margin"``
            (default), ``"ce"`` or ``"dlr"`` (to the target when targeted).
        seed: unused by the search (it is deterministic), kept for the common contract.
    """

    name = "spatial-grid"
    knowledge = "score-based"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        rotations: int = 31,
        translations: int = 5,
        loss: Literal["margin", "ce", "dlr"] = "margin",
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("rotations", rotations, integer=True)
        self._check_positive("translations", translations, integer=True)
        if loss not in LOSSES:
            raise SpecError.single("loss", f"must be one of {sorted(LOSSES)}, got {loss!r}")
        self.rotations = rotations
        self.translations = translations
        self.loss = loss

    def grid(self, like: Tensor | None = None) -> Tensor:
        """``(G, 3)`` the grid points in the order they are tried (angle, dx, dy), capped at the
        threat's query budget; in ``like``'s dtype and device (default float32 on the CPU)."""
        angles = _axis(self.threat.epsilon, self.rotations)
        shifts = _axis(self.threat.translation, self.translations)
        points = [(a, u, v) for a in angles for u in shifts for v in shifts]
        budgets = (self.threat.epsilon, self.threat.translation, self.threat.translation)

        def shares(p: tuple[float, float, float]) -> list[float]:
            return [abs(c) / b if b else 0.0 for c, b in zip(p, budgets, strict=True)]

        points.sort(key=lambda p: (max(shares(p)), sum(shares(p)), p))
        if self.threat.query_budget is not None:
            points = points[: self.threat.query_budget]
        ref = like if like is not None else torch.zeros(())
        return torch.tensor(points, dtype=ref.dtype, device=ref.device)

    def _run_detailed(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        loss_fn = LOSSES[self.loss]
        low_high = self.threat.bounds
        best = torch.zeros(n, 3, dtype=x.dtype, device=x.device)
        best_loss = torch.full((n,), -math.inf, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for point in self.grid(x):
                idx = (~found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                params = point.expand(idx.numel(), 3)
                logits = model(spatial_adversarial(x[idx], params, low_high))
                queries[idx] += 1
                t = targets[idx] if targets is not None else None
                loss = loss_fn(logits, y[idx], t).to(best_loss.dtype)
                hit = is_adversarial(logits, y[idx], t)
                better = hit | (loss > best_loss[idx])
                best[idx[better]] = point
                best_loss[idx[better]] = loss[better]
                found[idx[hit]] = True
        return spatial_adversarial(x, best, low_high), queries, best


@register_attack
class SpatialPGD(_SpatialAttack):
    """First-order spatial attack (Engstrom et al. 2019): projected signed-gradient ascent on
    the rotation angle and the two shifts, white-box.

    Each restart draws the parameters uniformly in the budget box ``[-epsilon, epsilon] ×
    [-translation, translation]²`` and takes ``steps`` steps ``p ← clip(p + step_size · budget ·
    sign(∇_p loss))``, the gradient flowing through the bilinear resampling. Every evaluated
    point is judged: a sample leaves the batch at its first adversarial point; otherwise it keeps
    the point of highest loss over all steps and restarts (the last point of a restart is judged
    by one more forward pass). Restarts run only on the samples still not adversarial. Queries:
    up to ``restarts * (steps + 1)`` per sample (a forward+backward pass counts as one).

    The paper finds this attack clearly weaker than :class:`SpatialGrid` (the loss is highly
    non-concave in these parameters); use it as the first-order baseline.

    Args:
        threat: a ``spatial`` threat (degrees, pixels, bounds, goal).
        steps: gradient steps per restart.
        step_size: the step per coordinate as a fraction of that coordinate's budget; default
            ``2.5 / steps`` (PGD's rule).
        restarts: random starts.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"`` (to the target when targeted).
        seed: seeds the random starts.
    """

    name = "spatial-pgd"
    knowledge = "white-box"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 20,
        step_size: float | None = None,
        restarts: int = 3,
        loss: Literal["ce", "margin", "dlr"] = "ce",
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
        self.loss = loss

    def _run_detailed(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        loss_fn = LOSSES[self.loss]
        bounds = self.threat.bounds
        budget = self._budget(x)
        alpha = (self.step_size if self.step_size is not None else 2.5 / self.steps) * budget
        best = torch.zeros(n, 3, dtype=x.dtype, device=x.device)
        best_loss = torch.full((n,), -math.inf, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        rnd = SampleRandomness(
            x, f"spatial-pgd|{self.seed}|{self.steps}|{self.step_size}|{self.loss}"
        )
        params_like = best  # one (angle, dx, dy) draw per sample

        def judge(idx: Tensor, params: Tensor, logits: Tensor, loss: Tensor) -> Tensor:
            """Record each sample's best point; the mask of the samples still running."""
            t = targets[idx] if targets is not None else None
            hit = is_adversarial(logits, y[idx], t)
            better = hit | (loss.to(best_loss.dtype) > best_loss[idx])
            best[idx[better]] = params[better].detach()
            best_loss[idx[better]] = loss[better].to(best_loss.dtype)
            found[idx[hit]] = True
            queries[idx] += 1
            return ~hit

        for _ in range(self.restarts):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            u = rnd.rand(idx, params_like)
            params = (2 * u - 1) * budget
            for _ in range(self.steps):
                params = params.detach().requires_grad_(True)
                t = targets[idx] if targets is not None else None
                logits = model(spatial_adversarial(x[idx], params, bounds))
                loss = loss_fn(logits, y[idx], t)
                (grad,) = torch.autograd.grad(loss.sum(), params)
                keep = judge(idx, params, logits.detach(), loss.detach())
                idx, params, grad = idx[keep], params.detach()[keep], grad[keep]
                if idx.numel() == 0:
                    break
                params = torch.maximum(torch.minimum(params + alpha * grad.sign(), budget), -budget)
            if idx.numel():
                with torch.no_grad():
                    t = targets[idx] if targets is not None else None
                    logits = model(spatial_adversarial(x[idx], params, bounds))
                    judge(idx, params, logits, loss_fn(logits, y[idx], t))
        return spatial_adversarial(x, best, bounds), queries, best
