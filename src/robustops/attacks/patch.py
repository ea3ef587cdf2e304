"""Patch attacks: every changed pixel lies in one ``k × k`` square placed anywhere in the image,
where it may take any value within the bounds (a sticker, an occluder).

* ``patch`` (white-box): a localized adversarial patch per image, in the spirit of the
  adversarial patch of Brown, Mané, Roy, Abadi & Gilmer ("Adversarial Patch", 2017) and of its
  localized, small-footprint form LaVAN (Karmon, Zoran & Goldberg, "LaVAN: Localized and
  Visible Adversarial Noise", ICML 2018): the content is optimised by signed-gradient steps with
  the location fixed, at the locations an input-gradient saliency map ranks first. Unlike
  Brown et al. the patch is per image, not universal, and is not trained over transformations.
* ``occlusion`` (decision-based): the baseline any patch attack must beat, a grey and a black
  square slid over the image.

Both report the patch's top-left corner in ``AttackResult.details``; the budget itself is
checked from the pixels alone (:func:`patch_side`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial
from robustops.attacks.eot import LOSSES, loss_and_grad
from robustops.attacks.randomness import SampleRandomness
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["AdversarialPatch", "Occlusion", "patch_positions", "patch_side"]


def _as_images(x: Tensor) -> Tensor:
    """``x`` as ``(N, C, H, W)``: ``(N, H, W)`` is one channel, ``(N, D)`` one row of pixels,
    more leading dimensions are channels."""
    if x.dim() == 2:
        return x[:, None, None, :]
    if x.dim() == 3:
        return x[:, None]
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def _extent(changed: Tensor) -> Tensor:
    """``(N,)`` int64: for ``changed`` ``(N, L)`` bool, last minus first changed index plus one
    (0 when none changed)."""
    length = changed.shape[1]
    pos = torch.arange(length, device=changed.device).expand_as(changed)
    first = torch.where(changed, pos, length).amin(dim=1)
    last = torch.where(changed, pos, -1).amax(dim=1)
    return (last - first + 1).clamp_min(0)


def patch_side(adv: Tensor, x: Tensor) -> Tensor:
    """``(N,)`` int64: the side of the smallest square holding every pixel where ``adv``
    differs from ``x`` in any channel (the larger of the height and width of their bounding
    box), 0 when nothing changed.

    ``adv`` and ``x`` are images ``(N, C, H, W)`` of one shape (``(N, H, W)`` is read as one
    channel). A NaN in ``adv`` counts as a change.
    """
    changed = (_as_images(adv) != _as_images(x)).any(dim=1)  # (N, H, W)
    height = _extent(changed.any(dim=2))
    width = _extent(changed.any(dim=1))
    return torch.maximum(height, width)


def patch_positions(length: int, side: int, stride: int) -> list[int]:
    """The start offsets of a window of ``side`` pixels sliding along ``length`` pixels by
    ``stride``: ``0, stride, 2·stride, …`` plus the last offset ``length - side`` so that the
    far edge is covered too."""
    last = max(length - side, 0)
    return sorted({*range(0, last + 1, stride), last})


def _square_masks(corners: Tensor, side_h: int, side_w: int, height: int, width: int) -> Tensor:
    """``(N, 1, H, W)`` bool: the ``side_h × side_w`` window at each top-left ``corners``
    ``(N, 2)`` (row, column)."""
    rows = torch.arange(height, device=corners.device)[None, :] - corners[:, :1]
    cols = torch.arange(width, device=corners.device)[None, :] - corners[:, 1:]
    in_rows = (rows >= 0) & (rows < side_h)
    in_cols = (cols >= 0) & (cols < side_w)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


class _PatchAttack(Attack):
    """What both patch attacks share: the threat family, the window and its positions, the final
    clamp (a projection onto a norm ball would move pixels outside the patch) and the size (the
    patch side measured from the pixels)."""

    norms = ("patch",)

    def _window(self, x: Tensor) -> tuple[int, int]:
        """The patch's height and width in pixels: the threat's side, capped by the image."""
        k = int(self.threat.epsilon)
        return min(k, x.shape[-2]), min(k, x.shape[-1])

    def _corners(self, x: Tensor, stride: int) -> Tensor:
        """``(P, 2)`` int64 every top-left corner (row, column) on the stride grid, row-major."""
        kh, kw = self._window(x)
        rows = patch_positions(x.shape[-2], kh, stride)
        cols = patch_positions(x.shape[-1], kw, stride)
        grid = [(r, c) for r in rows for c in cols]
        return torch.tensor(grid, dtype=torch.int64, device=x.device)

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        low, high = self.threat.bounds
        return adv.clamp(low, high)  # x is in bounds: pixels outside the patch stay as they are

    def _perturbation(self, adv: Tensor, x: Tensor, details: Any) -> Tensor:
        return patch_side(adv, x).to(x.dtype)


@register_attack
class AdversarialPatch(_PatchAttack):
    """White-box localized adversarial patch (after Brown et al. 2017 and Karmon et al. 2018's
    LaVAN), one patch per image.

    The algorithm, per image, batched over images:

    1. Locations: one forward+backward pass gives the input gradient ``g`` of ``loss`` at the
       clean image. Each pixel's first-order gain from the best content it could take is
       ``relu(g) · (high - x) + relu(-g) · (x - low)`` (summed over channels); summed over each
       ``k × k`` window it scores every top-left corner on the ``stride`` grid (plus the last
       row and column so the edges are covered). The ``locations`` best-scoring corners are
       tried in order (ties: the first in row-major order).
    2. Content: at a location, the patch starts uniformly random in the bounds and takes
       ``steps`` signed-gradient steps ``patch ← clip(patch + step_size · (high - low) ·
       sign(∇ loss), low, high)``, the image outside the window left untouched.
    3. Selection: every evaluated point is judged; an image leaves the batch at its first
       adversarial patch; otherwise it keeps the patch of highest loss over all steps and
       locations (the last point at a location is judged by one more forward pass). Only the
       images still not adversarial move on to the next location.

    Queries: up to ``1 + locations * (steps + 1)`` per image (a forward+backward pass counts as
    one). Details: ``(N, 2)`` int64, the kept patch's top-left (row, column).

    The defaults spend the queries on many locations and few steps: on an MNIST CNN a small
    patch's place matters more than its content (32 locations × 5 steps fooled 57% of the images
    with a 4 × 4 patch, 16 × 10 only 35%, 3 × 40 18%; occlusion 28% with twice the queries).

    Args:
        threat: a ``patch`` threat (side ``k`` in pixels, bounds, goal).
        steps: signed-gradient steps per location.
        step_size: the step as a fraction of the bounds' width ``high - low``.
        locations: how many of the best-ranked locations to try.
        stride: the spacing of candidate corners in pixels; default ``max(1, k // 2)``.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"`` (to the target when targeted).
        seed: seeds the random initial patches.
    """

    name = "patch"
    knowledge = "white-box"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 5,
        step_size: float = 0.25,
        locations: int = 32,
        stride: int | None = None,
        loss: Literal["ce", "margin", "dlr"] = "ce",
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("steps", steps, integer=True)
        self._check_positive("step_size", step_size)
        self._check_positive("locations", locations, integer=True)
        if stride is not None:
            self._check_positive("stride", stride, integer=True)
        if loss not in LOSSES:
            raise SpecError.single("loss", f"must be one of {sorted(LOSSES)}, got {loss!r}")
        self.steps = steps
        self.step_size = step_size
        self.locations = locations
        self.stride = stride
        self.loss = loss

    def _ranked_corners(self, model: ModelFn, x: Tensor, y: Tensor, t: Tensor | None) -> Tensor:
        """``(N, L, 2)`` int64: per image, the ``L <= locations`` corners of highest saliency."""
        kh, kw = self._window(x)
        stride = self.stride if self.stride is not None else max(1, int(self.threat.epsilon) // 2)
        corners = self._corners(x, stride)  # (P, 2)
        _, _, grad = loss_and_grad(model, x, y, t, LOSSES[self.loss])
        low, high = self.threat.bounds
        # The first-order gain of the best content at each pixel: push up where the gradient
        # is positive (room: high - x), down where it is negative (room: x - low).
        gain = grad.clamp_min(0) * (high - x) + (-grad).clamp_min(0) * (x - low)
        saliency = _as_images(gain).sum(dim=1, keepdim=True)
        window_sums = F.avg_pool2d(saliency, (kh, kw), stride=1)[:, 0]  # (N, H-kh+1, W-kw+1)
        scores = window_sums[:, corners[:, 0], corners[:, 1]]  # (N, P)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        return corners[order[:, : min(self.locations, corners.shape[0])]]

    def _run_detailed(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        low, high = self.threat.bounds
        alpha = self.step_size * (high - low)
        loss_fn = LOSSES[self.loss]
        kh, kw = self._window(x)
        ranked = self._ranked_corners(model, x, y, targets)
        best = x.clone()
        best_corner = torch.full((n, 2), -1, dtype=torch.int64, device=x.device)
        best_loss = torch.full((n,), -math.inf, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = torch.ones(n, dtype=torch.int64, device=x.device)  # the saliency pass
        rnd = SampleRandomness(x, f"patch|{self.seed}|{self.steps}|{self.step_size}|{self.loss}")

        def judge(idx: Tensor, adv: Tensor, corner: Tensor, logits: Tensor, loss: Tensor) -> Tensor:
            """Record each image's best patch; the mask of the images still running."""
            t = targets[idx] if targets is not None else None
            hit = is_adversarial(logits, y[idx], t)
            better = hit | (loss.to(best_loss.dtype) > best_loss[idx])
            best[idx[better]] = adv[better]
            best_corner[idx[better]] = corner[better]
            best_loss[idx[better]] = loss[better].to(best_loss.dtype)
            found[idx[hit]] = True
            queries[idx] += 1
            return ~hit

        for rank in range(ranked.shape[1]):
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0 = x[idx]
            corner = ranked[idx, rank]
            mask = _square_masks(corner, kh, kw, x.shape[-2], x.shape[-1]).view(
                idx.numel(), *([1] * (x.dim() - 3)), x.shape[-2], x.shape[-1]
            )
            patch = low + (high - low) * rnd.rand(idx, x0)
            for _ in range(self.steps):
                adv = torch.where(mask, patch, x0)
                t = targets[idx] if targets is not None else None
                logits, loss, grad = loss_and_grad(model, adv, y[idx], t, loss_fn)
                keep = judge(idx, adv, corner, logits, loss)
                idx, x0, corner, mask = idx[keep], x0[keep], corner[keep], mask[keep]
                patch, grad = patch[keep], grad[keep]
                if idx.numel() == 0:
                    break
                patch = torch.add(patch, grad.sign(), alpha=alpha).clamp_(low, high)
            if idx.numel():
                adv = torch.where(mask, patch, x0)
                t = targets[idx] if targets is not None else None
                with torch.no_grad():
                    logits = model(adv)
                judge(idx, adv, corner, logits, loss_fn(logits, y[idx], t))
        return best, queries, best_corner


@register_attack
class Occlusion(_PatchAttack):
    """Decision-based occlusion baseline: a uniform ``k × k`` square, grey (the middle of the
    bounds) then black (the low bound), at every top-left corner of the ``stride`` grid (plus
    the last row and column), corners in row-major order.

    Each candidate is one forward pass over the images still not adversarial; an image stops at
    the first candidate that fools the model (one query per candidate tried) and is otherwise
    returned unchanged. With ``threat.query_budget`` set, only the first ``query_budget``
    candidates are tried. Details: ``(N, 2)`` int64, the fooling square's top-left (row,
    column), ``-1`` for an image no square fooled.

    Args:
        threat: a ``patch`` threat (side ``k`` in pixels, bounds, goal).
        stride: the spacing of corners in pixels; default ``max(1, k // 2)``.
        seed: unused (the search is deterministic), kept for the common contract.
    """

    name = "occlusion"
    knowledge = "decision-based"

    def __init__(self, threat: ThreatModel, *, stride: int | None = None, seed: int = 0) -> None:
        super().__init__(threat, seed=seed)
        if stride is not None:
            self._check_positive("stride", stride, integer=True)
        self.stride = stride

    def _run_detailed(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        low, high = self.threat.bounds
        kh, kw = self._window(x)
        stride = self.stride if self.stride is not None else max(1, int(self.threat.epsilon) // 2)
        candidates = [(c, v) for c in self._corners(x, stride) for v in ((low + high) / 2, low)]
        if self.threat.query_budget is not None:
            candidates = candidates[: self.threat.query_budget]
        best = x.clone()
        best_corner = torch.full((n, 2), -1, dtype=torch.int64, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        with torch.no_grad():
            for corner, value in candidates:
                idx = (~found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                mask = _square_masks(corner[None], kh, kw, x.shape[-2], x.shape[-1])
                mask = mask.view(*([1] * (x.dim() - 2)), x.shape[-2], x.shape[-1])
                adv = x[idx].masked_fill(mask, value)
                queries[idx] += 1
                t = targets[idx] if targets is not None else None
                hit = is_adversarial(model(adv), y[idx], t)
                best[idx[hit]] = adv[hit]
                best_corner[idx[hit]] = corner
                found[idx[hit]] = True
        return best, queries, best_corner
