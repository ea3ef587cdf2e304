"""The geometry of a threat's budget on tensors: per-sample norms, exact projection onto the
ball intersected with the bounds, and random points of the ball. Attacks, the tabular schema
projection and the suite's checks share these (they sit with the threat model, below them all).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from robustops.threats.model import ThreatModel

__all__ = [
    "RowDraws",
    "eps_as",
    "linf_box",
    "per_sample",
    "perturbation_norm",
    "project",
    "random_point",
    "random_start",
]


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``delta`` ``(N, ...)``: ``(N,)`` float."""
    flat = delta.flatten(1)
    out: Tensor = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)
    return out


def eps_as(eps: float | Tensor, ref: Tensor) -> Tensor:
    """Epsilon as a tensor broadcastable against ``ref`` ``(N, ...)``."""
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    return e.view(-1, *([1] * (ref.dim() - 1))) if e.dim() == 1 else e


def per_sample(values: Tensor, ref: Tensor) -> Tensor:
    """``(N,)`` ``values`` viewed as ``(N, 1, ..., 1)`` to broadcast against ``ref`` ``(N, ...)``."""
    return values.view(-1, *([1] * (ref.dim() - 1)))


# Why one ulp is enough (round to nearest, which torch uses): ``b = fl(x + e)`` is the float
# nearest to the real ``x + e``. If ``b <= x + e`` then ``b - x <= e`` and, rounding being
# monotone and ``e`` a float, ``fl(b - x) <= e``. Otherwise the float just below ``b`` is
# ``<= x + e`` and the same argument holds. Likewise for ``x - e``, and clamping a bound towards
# ``x`` (to ``low``/``high``) keeps it good. The loops below still re-check, so the guarantee
# does not rest on the argument; they just never nudge an entry twice.
_NUDGES = 4
_L2_RETRIES = 8


def linf_box(x: Tensor, e: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Entry-wise bounds ``(lo, hi)`` of the L∞ ball of radius ``e`` around ``x`` intersected
    with ``[low, high]``, exact in ``x``'s dtype: every ``v`` with ``lo <= v <= hi`` has
    ``|v - x| <= e`` when evaluated in that dtype (the rounded difference is monotone in ``v``).

    For ``x`` inside the bounds, ``torch.clamp(v, lo, hi)`` equals :func:`project` of ``v``
    (same values, one pass): attacks that project many times around one ``x`` build the box once.
    ``e`` is a tensor in ``x``'s dtype, broadcastable against it (see ``eps_as``).
    """
    lo = (x - e).clamp_(low, high)
    hi = (x + e).clamp_(low, high)
    for _ in range(_NUDGES):
        lo_out = (x - lo) > e
        hi_out = (hi - x) > e
        if not bool((lo_out | hi_out).any()):
            break
        lo = torch.where(lo_out, torch.nextafter(lo, x), lo)
        hi = torch.where(hi_out, torch.nextafter(hi, x), hi)
    return lo, hi


def project(
    x_adv: Tensor, x: Tensor, threat: ThreatModel, eps: float | Tensor | None = None
) -> Tensor:
    """Project ``x_adv`` onto the threat's ball around ``x`` intersected with its bounds.

    Exact in the input's floating-point type: afterwards ``perturbation_norm(result - x)`` is
    ``<= eps`` when evaluated in that type and every entry lies in ``threat.bounds``.
    ``eps`` overrides ``threat.epsilon`` (a float or an ``(N,)`` tensor of per-sample radii).
    """
    low, high = threat.bounds
    radius = threat.epsilon if eps is None else eps
    e = eps_as(radius, x)
    if threat.norm == "linf":
        out = torch.clamp(x_adv, x - e, x + e).clamp_(low, high)
        # x ± e is rounded; nudge the few entries it left one ulp outside the ball back in.
        for _ in range(_NUDGES):
            over = (out - x).abs_() > e
            if not bool(over.any()):
                break
            out = torch.where(over, torch.nextafter(out, x), out)
        return out
    n = x.shape[0]
    e_flat = e.reshape(-1) if e.dim() else e.expand(n)
    if e_flat.numel() == 1:
        e_flat = e_flat.expand(n)
    delta = x_adv - x
    norms = perturbation_norm(delta, "l2")
    factor = torch.where(
        norms > e_flat, e_flat / norms.clamp_min(1e-30) * (1.0 - 1e-6), torch.ones_like(norms)
    )
    out = (x + delta * per_sample(factor, x)).clamp_(low, high)
    for attempt in range(_L2_RETRIES):
        delta = out - x
        norms = perturbation_norm(delta, "l2")
        over = norms > e_flat
        if not bool(over.any()):
            return out
        # Rounding x + delta costs up to half an ulp of x per entry, an absolute error that the
        # 1e-6 margin does not cover when eps is small: aim these samples below eps by a
        # growing multiple of their measured excess (the others keep their result).
        target = (e_flat - (norms - e_flat) * 2.0 ** (attempt + 1)).clamp_min(0.0)
        shrink = torch.where(over, target / norms.clamp_min(1e-30), torch.ones_like(norms))
        retry = (x + delta * per_sample(shrink, x)).clamp_(low, high)
        out = torch.where(per_sample(over, x), retry, out)
    # Exact by construction: a sample still outside falls back to the input itself.
    over = perturbation_norm(out - x, "l2") > e_flat
    return torch.where(per_sample(over, x), x.clamp(low, high), out)


class RowDraws(Protocol):
    """Random draws whose first dimension is one row per sample, each row from that sample's own
    source (see ``robustops.attacks.randomness.SampleRandomness.rows``), so a sample's draws do
    not depend on the other rows."""

    def rand(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``shape`` (``shape[0]`` rows) uniform in [0, 1), in ``like``'s dtype and device."""
        ...

    def randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``shape`` (``shape[0]`` rows) standard normal, in ``like``'s dtype and device."""
        ...


def _rand(gen: torch.Generator | RowDraws, shape: tuple[int, ...], like: Tensor) -> Tensor:
    if isinstance(gen, torch.Generator):
        return torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype)
    return gen.rand(shape, like)


def _randn(gen: torch.Generator | RowDraws, shape: tuple[int, ...], like: Tensor) -> Tensor:
    if isinstance(gen, torch.Generator):
        return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)
    return gen.randn(shape, like)


def random_start(
    x: Tensor, threat: ThreatModel, gen: torch.Generator | RowDraws, scale: float = 1.0
) -> Tensor:
    """A random point of the ball of radius ``scale * epsilon`` around ``x``, projected.

    L∞: uniform in the cube. L2: uniform direction, radius ``eps * u**(1/d)`` (uniform in the
    ball). ``gen``: one generator for the batch, or per-sample :class:`RowDraws` (one row per
    sample of ``x``).
    """
    return project(random_point(x, threat, gen, scale), x, threat)


def random_point(
    x: Tensor, threat: ThreatModel, gen: torch.Generator | RowDraws, scale: float
) -> Tensor:
    """:func:`random_start` before its projection (callers holding an L∞ box clamp instead)."""
    eps = threat.epsilon * scale
    shape = tuple(x.shape)
    if threat.norm == "linf":
        noise = _rand(gen, shape, x)
        # x + eps * (2u - 1), computed in place (same rounding as the out-of-place expression).
        return noise.mul_(2).sub_(1).mul_(eps).add_(x)
    direction = _randn(gen, shape, x)
    direction = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
    d = x[0].numel()
    u = _rand(gen, (x.shape[0],), x)
    radius = eps * u ** (1.0 / d)
    return x + per_sample(radius, x) * direction
