"""Common corruptions at severities 1–5 (the ``corruption`` threat family): Gaussian noise, shot
(Poisson) noise, Gaussian blur, JPEG compression, brightness, contrast and elastic transform.

The functions and their severity constants follow the scripts that built the benchmarks:

* colour images (3 channels): CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network
  Robustness to Common Corruptions and Perturbations", ICLR 2019),
  ``hendrycks/robustness``, ``ImageNet-C/create_c/make_cifar_c.py``;
* one-channel images: MNIST-C (Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer
  Vision", 2019), ``google-research/mnist-c``, ``corruptions.py``, whose tables are made for
  28 × 28 digits on black. MNIST-C has no usable five-level elastic table (its
  ``elastic_transform`` is not among the released corruptions and its levels are not ordered:
  level 2 displaces most), so elastic uses the CIFAR-10-C table for every image.

====================  ================================  =================================
corruption            CIFAR-10-C (3 channels)           MNIST-C (1 channel)
====================  ================================  =================================
``gaussian_noise``    σ = .04 .06 .08 .09 .10           σ = .08 .12 .18 .26 .38
``shot_noise``        λ = 500 250 100 75 50             λ = 60 25 12 5 3
``gaussian_blur``     σ = .4 .6 .7 .8 1 px              σ = 1 2 3 4 6 px
``jpeg_compression``  quality 80 65 58 50 40            quality 25 18 15 10 7
``brightness``        +V = .05 .1 .15 .2 .3             +V = .1 .2 .3 .4 .5
``contrast``          c = .75 .5 .4 .3 .15              c = .4 .3 .2 .1 .05
``elastic_transform`` (α, σ, affine) × side: (0, 0, .08), (.05, .2, .07), (.08, .06, .06),
                      (.1, .04, .05), (.1, .03, .03) for both
====================  ================================  =================================

How the originals are adapted:

* Inputs in ``bounds = (low, high)`` are mapped linearly to [0, 1] (the originals' scale), so
  the constants keep their meaning; the result is clipped to [0, 1], as every original does,
  and mapped back (clamped to the bounds).
* Gaussian noise adds ``σ · N(0, 1)``; shot noise draws ``Poisson(λ · x) / λ``; blur is
  skimage's ``gaussian`` (kernel truncated at 4 σ, edges repeated); JPEG encodes each image with
  Pillow at the quality after rounding it to 8 bits, as the originals do with their uint8
  images; contrast scales the distance to each image's channel means by ``c``.
* Brightness adds to the HSV value channel: with hue and saturation fixed, that scales each
  pixel's RGB by ``V' / V`` (``V`` its largest channel, ``V' = min(V + c, 1)``; black becomes
  grey ``V'``), which is exactly the original's HSV round trip; for one channel it is
  ``min(x + c, 1)``, as MNIST-C's gray → HSV → gray round trip.
* Elastic: the original's random affine (the three points ``centre ± side // 3`` moved by
  ``U(-affine, affine)``, reflect-101 border) then a displacement field ``α ·
  gaussian(U(-1, 1), σ, truncated at 3 σ, symmetric edges)`` per axis, sampled bilinearly with
  symmetric edges; the constants scale with the image's shorter side (32 in CIFAR-10-C).

Randomness is per sample: each sample's generator is seeded from the corruption, the severity,
the seed and a sha256 of the sample's bytes, so a sample is corrupted the same way whatever
batch it comes in, and :func:`corruption_within_budget` can recompute an attack's output. Draws
use torch's generators on the input's device (CPU and CUDA draws differ; each is reproducible).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn
from robustops.attacks.randomness import SampleRandomness
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import CORRUPTION_SEVERITIES

__all__ = [
    "CORRUPTIONS",
    "Blur",
    "Brightness",
    "Contrast",
    "CorruptionAttack",
    "CorruptionFn",
    "Elastic",
    "GaussianNoise",
    "Jpeg",
    "ShotNoise",
    "corrupt",
    "corruption_within_budget",
]

_RTOL, _ATOL = 1e-5, 1e-6
"""How close an output must be to the recomputed corruption (per entry, input units)."""


CorruptionFn = Callable[[Tensor, int, SampleRandomness], Tensor]
"""A corruption on the [0, 1] scale: ``(images (N, C, H, W) in [0, 1], severity 1..5,
per-sample randomness) -> (N, C, H, W)`` (clipped to [0, 1] by :func:`corrupt`)."""

CORRUPTIONS: dict[str, CorruptionFn] = {}
"""Every corruption function by name (the benchmarks' function names)."""


def _corruption(name: str) -> Callable[[CorruptionFn], CorruptionFn]:
    def register(fn: CorruptionFn) -> CorruptionFn:
        CORRUPTIONS[name] = fn
        return fn

    return register


def _level(u: Tensor, severity: int, colour: tuple[float, ...], grey: tuple[float, ...]) -> float:
    """The constant at ``severity``: CIFAR-10-C's for 3 channels, MNIST-C's for one."""
    return (colour if u.shape[1] == 3 else grey)[severity - 1]


@_corruption("gaussian_noise")
def _gaussian_noise(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    sigma = _level(u, severity, (0.04, 0.06, 0.08, 0.09, 0.10), (0.08, 0.12, 0.18, 0.26, 0.38))

    def draw(_: int, g: torch.Generator) -> Tensor:
        return torch.randn(u.shape[1:], generator=g, device=u.device, dtype=u.dtype)

    return u + sigma * rnd.per_sample(draw)


@_corruption("shot_noise")
def _shot_noise(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    lam = _level(u, severity, (500, 250, 100, 75, 50), (60, 25, 12, 5, 3))
    rates = u * lam
    return rnd.per_sample(lambda i, g: torch.poisson(rates[i], generator=g)) / lam


def _pad_index(length: int, radius: int, mode: str, device: torch.device) -> Tensor:
    """Indices ``(length + 2 radius,)`` into a signal of ``length`` padded by ``radius`` on each
    side: ``"nearest"`` repeats the edge, ``"symmetric"`` mirrors about it (``d c b a | a b c
    d``, scipy's ``reflect``), for any radius."""
    i = torch.arange(-radius, length + radius, device=device)
    if mode == "nearest":
        return i.clamp(0, length - 1)
    m = i.remainder(2 * length)
    return torch.where(m >= length, 2 * length - 1 - m, m)


def _gaussian_filter(img: Tensor, sigma: float, truncate: float, mode: str) -> Tensor:
    """Separable Gaussian filter of ``img`` ``(N, C, H, W)`` over its last two axes, channels
    apart (scipy's ``gaussian_filter``: radius ``int(truncate * sigma + 0.5)``); ``mode`` as in
    :func:`_pad_index`. ``sigma <= 0`` returns ``img``."""
    if sigma <= 0:
        return img
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = img.shape
    rows = _pad_index(h, radius, mode, img.device)
    cols = _pad_index(w, radius, mode, img.device)
    padded = img.index_select(2, rows).index_select(3, cols).reshape(n * c, 1, *rows.shape, -1)
    out = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return out.view(n, c, h, w)


@_corruption("gaussian_blur")
def _gaussian_blur(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    sigma = _level(u, severity, (0.4, 0.6, 0.7, 0.8, 1.0), (1.0, 2.0, 3.0, 4.0, 6.0))
    return _gaussian_filter(u, sigma, truncate=4.0, mode="nearest")


@_corruption("jpeg_compression")
def _jpeg(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    quality = int(_level(u, severity, (80, 65, 58, 50, 40), (25, 18, 15, 10, 7)))
    pixels = (u * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, format="JPEG", quality=quality
        )
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            decoded.append(np.asarray(jpeg.convert("L" if image.shape[-1] == 1 else "RGB")))
    out = torch.from_numpy(np.stack(decoded)).to(device=u.device, dtype=u.dtype) / 255
    return out.view(u.shape[0], u.shape[2], u.shape[3], -1).permute(0, 3, 1, 2)


@_corruption("brightness")
def _brightness(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    shift = _level(u, severity, (0.05, 0.1, 0.15, 0.2, 0.3), (0.1, 0.2, 0.3, 0.4, 0.5))
    if u.shape[1] == 1:
        return u + shift
    value = u.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1.0)
    return torch.where(value > 0, u * brighter / value.clamp_min(1e-12), brighter.expand_as(u))


@_corruption("contrast")
def _contrast(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    factor = _level(u, severity, (0.75, 0.5, 0.4, 0.3, 0.15), (0.4, 0.3, 0.2, 0.1, 0.05))
    means = u.mean(dim=(2, 3), keepdim=True)
    return (u - means) * factor + means


_ELASTIC = (
    (0.0, 0.0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
)
"""CIFAR-10-C's elastic table, (α, σ, affine shift) as multiples of the image side."""


def _pixel_grid(u: Tensor) -> tuple[Tensor, Tensor]:
    """``(H, W)`` column and row coordinates of every pixel centre, in ``u``'s dtype."""
    h, w = u.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(h, device=u.device, dtype=u.dtype),
        torch.arange(w, device=u.device, dtype=u.dtype),
        indexing="ij",
    )
    return cols, rows


def _sample(u: Tensor, cols: Tensor, rows: Tensor, align_corners: bool) -> Tensor:
    """Bilinear samples of ``u`` ``(N, C, H, W)`` at pixel coordinates ``cols``, ``rows``
    ``(N, H, W)``, mirrored at the border (about the edge pixels' centres with
    ``align_corners``, reflect-101; about the image edges without, scipy's ``reflect``)."""
    h, w = u.shape[-2:]
    if align_corners:
        gx = 2 * cols / max(w - 1, 1) - 1
        gy = 2 * rows / max(h - 1, 1) - 1
    else:
        gx = (2 * cols + 1) / w - 1
        gy = (2 * rows + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(
        u, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners
    )


def _elastic_scales(severity: int, height: int, width: int) -> tuple[float, float, float]:
    """``(alpha, sigma, shift)`` in pixels at ``severity`` for an image of ``height × width``:
    CIFAR-10-C's table scaled by the shorter side. Along the levels the random affine shrinks
    (``shift``: 2.56 to 0.96 px at 32 px) while the local elastic field grows (``alpha / sigma``
    from 0 to 3.3): the severity ranks the benchmark's harm to CIFAR-10 models, not the size of
    the pixel change."""
    side = min(height, width)
    alpha, sigma, shift = (f * side for f in _ELASTIC[severity - 1])
    return alpha, sigma, shift


def _displacement(noise: Tensor, alpha: float, sigma: float) -> Tensor:
    """The elastic displacement fields in pixels from uniform noise ``(N, 2, H, W)`` in [-1, 1]:
    ``alpha · gaussian(noise, sigma)``, truncated at 3 sigma with symmetric edges (scipy's
    ``reflect``), as the original."""
    return _gaussian_filter(noise, sigma, truncate=3.0, mode="symmetric") * alpha


@_corruption("elastic_transform")
def _elastic(u: Tensor, severity: int, rnd: SampleRandomness) -> Tensor:
    n, _, h, w = u.shape
    side = min(h, w)
    alpha, sigma, shift = _elastic_scales(severity, h, w)
    noise = rnd.uniform((6 + 2 * h * w,), u)
    # Random affine: three points around the centre, each moved by U(-shift, shift); the warp
    # maps them onto their moved copies (cv2.getAffineTransform / warpAffine in the original).
    cx, cy, sq = float(w // 2), float(h // 2), float(side // 3)
    src = torch.tensor(
        [[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]],
        dtype=torch.float64,
        device=u.device,
    )
    dst = src + shift * noise[:, :6].view(n, 3, 2).double()
    ones = torch.ones(3, 1, dtype=torch.float64, device=u.device)
    m = torch.linalg.solve(torch.cat([src, ones], dim=1).expand(n, 3, 3), dst)  # (N, 3, 2)
    a_inv = torch.linalg.inv(m[:, :2, :].transpose(1, 2))  # (N, 2, 2): dst = A p + b
    offset = m[:, 2, :]  # b
    cols, rows = _pixel_grid(u)
    pts = torch.stack([cols, rows], dim=-1).double().view(1, h * w, 2) - offset[:, None, :]
    pre = torch.einsum("nij,npj->npi", a_inv, pts).to(u.dtype).view(n, h, w, 2)
    warped = _sample(u, pre[..., 0], pre[..., 1], align_corners=True)
    # Elastic displacement: smoothed uniform noise per axis, scaled by alpha.
    fields = _displacement(noise[:, 6:].view(n, 2, h, w), alpha, sigma)
    return _sample(warped, cols + fields[:, 0], rows + fields[:, 1], align_corners=False)


def corrupt(
    name: str,
    x: Tensor,
    severity: int,
    seed: int = 0,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Corrupt images with the corruption ``name`` at ``severity``, deterministically.

    Args:
        name: a key of :data:`CORRUPTIONS`.
        x: images ``(N, C, H, W)`` with ``C`` 1 or 3 (``(N, H, W)`` is one channel), inside
            ``bounds``, on any device.
        severity: an int from 1 to 5.
        seed: with the corruption, the severity and each sample's bytes, seeds that sample's
            random draws: a sample's corruption depends on nothing else in the batch.
        bounds: the valid input range; images are mapped to [0, 1] for the benchmark's
            constants and the result is clamped to it.

    Returns:
        ``x``'s shape, dtype and device.

    Raises:
        SpecError: an unknown corruption or a severity outside 1..5.
        ValueError: images that are not ``(N, C, H, W)`` with one or three channels.
    """
    if name not in CORRUPTIONS:
        raise SpecError.single("corruption", f"unknown {name!r}; known: {sorted(CORRUPTIONS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int)
        or not 1 <= severity <= CORRUPTION_SEVERITIES
    ):
        raise SpecError.single(
            "severity", f"must be an int from 1 to {CORRUPTION_SEVERITIES}, got {severity!r}"
        )
    images = x.unsqueeze(1) if x.dim() == 3 else x
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not x.is_floating_point():
        raise ValueError(f"corruptions need float images (N, 1 or 3, H, W), got {tuple(x.shape)}")
    low, high = bounds
    u = ((images - low) / (high - low)).clamp(0.0, 1.0)
    rnd = SampleRandomness(images, f"{name}|{severity}|{seed}")
    out = CORRUPTIONS[name](u, severity, rnd).clamp(0.0, 1.0)
    return (low + out * (high - low)).clamp(low, high).to(x.dtype).reshape(x.shape)


def corruption_within_budget(attack: Any, x: Tensor, adv: Tensor) -> Tensor:
    """``(N,)`` bool: each output equals the corruption ``attack`` declares, recomputed on ``x``.

    The corruption is ``attack.corruption`` (a key of :data:`CORRUPTIONS`) at severity
    ``attack.threat.epsilon`` with ``attack.seed`` and the threat's bounds; outputs must match
    it within ``1e-6 + 1e-5 · |expected|`` per entry. An attack without a known ``corruption``,
    outputs of another shape, or inputs the corruption refuses fail every sample (never raise).
    """
    n = x.shape[0]
    fail = torch.zeros(n, dtype=torch.bool, device=x.device)
    name = getattr(attack, "corruption", None)
    threat = getattr(attack, "threat", None)
    seed = getattr(attack, "seed", None)
    if (
        not isinstance(name, str)
        or name not in CORRUPTIONS
        or threat is None
        or not isinstance(seed, int)
        or not isinstance(adv, Tensor)
        or adv.shape != x.shape
    ):
        return fail
    try:
        expected = corrupt(name, x, int(threat.epsilon), seed, bounds=threat.bounds)
        close = torch.isclose(adv.to(device=x.device, dtype=x.dtype), expected, _RTOL, _ATOL)
    except (ValueError, RuntimeError, TypeError):
        return fail
    return close.flatten(1).all(dim=1)


class CorruptionAttack(Attack):
    """A common corruption at the threat's severity, as an attack: the output is
    ``corrupt(corruption, x, severity, seed)``, whatever the model (decision-based: it needs
    nothing from the model).

    Queries: 0. The corruption is fixed in advance and never looks at the model; the one forward
    pass that judges it is the base's verification pass, which the contract does not count.
    Subclasses set ``name`` and ``corruption`` (a key of :data:`CORRUPTIONS`).

    Args:
        threat: a ``corruption`` threat (severity 1–5 as ``epsilon``, bounds, goal).
        seed: seeds the random draws of the noisy corruptions (with each sample's bytes).
    """

    knowledge = "decision-based"
    norms = ("corruption",)
    corruption: ClassVar[str] = ""

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        adv = corrupt(
            self.corruption, x, int(self.threat.epsilon), self.seed, bounds=self.threat.bounds
        )
        return adv, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        return adv  # already inside the bounds; a norm-ball projection would undo it

    def _perturbation(self, adv: Tensor, x: Tensor, details: Any) -> Tensor:
        return torch.full((x.shape[0],), float(self.threat.epsilon), dtype=x.dtype, device=x.device)


@register_attack
class GaussianNoise(CorruptionAttack):
    """Additive Gaussian noise (``gaussian_noise``)."""

    name = "gaussian-noise"
    corruption = "gaussian_noise"


@register_attack
class ShotNoise(CorruptionAttack):
    """Shot (Poisson) noise (``shot_noise``)."""

    name = "shot-noise"
    corruption = "shot_noise"


@register_attack
class Blur(CorruptionAttack):
    """Gaussian blur (``gaussian_blur``)."""

    name = "blur"
    corruption = "gaussian_blur"


@register_attack
class Jpeg(CorruptionAttack):
    """JPEG compression (``jpeg_compression``)."""

    name = "jpeg"
    corruption = "jpeg_compression"


@register_attack
class Brightness(CorruptionAttack):
    """Brightness increase (``brightness``)."""

    name = "brightness"
    corruption = "brightness"


@register_attack
class Contrast(CorruptionAttack):
    """Contrast reduction (``contrast``)."""

    name = "contrast"
    corruption = "contrast"


@register_attack
class Elastic(CorruptionAttack):
    """Elastic transform (``elastic_transform``)."""

    name = "elastic"
    corruption = "elastic_transform"
