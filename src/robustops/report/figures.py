"""The report's own figures (robust accuracy against epsilon, adversarial-example panels), drawn
on Agg canvases with the helpers of :mod:`robustops.evaluation.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustops.evaluation.plots import mpl_text, new_figure

__all__ = ["AccuracyPoint", "SweepSeries", "image_example_figure", "robustness_curve_figure"]

DIVERGING = "RdBu_r"
"""Colormap of signed maps: blue negative, white 0, red positive."""


@dataclass(frozen=True)
class AccuracyPoint:
    """Accuracy at one budget with its confidence interval; ``label`` annotates the point."""

    epsilon: float
    accuracy: float
    low: float
    high: float
    label: str


@dataclass(frozen=True)
class SweepSeries:
    """A dashed curve ``[(epsilon, value)]`` drawn over the accuracy curve (an audit sweep)."""

    label: str
    points: tuple[tuple[float, float], ...]


def robustness_curve_figure(
    points: Sequence[AccuracyPoint],
    sweeps: Sequence[SweepSeries] = (),
    *,
    title: str = "",
    norm: str = "",
    xlabel: str = "",
    percent: bool = False,
    dpi: int = 100,
) -> Any:
    """Accuracy against epsilon: ``points`` (clean at 0 and each threat) joined in order of
    epsilon with their confidence intervals as error bars, and each of ``sweeps`` dashed.
    ``xlabel`` replaces the default ``epsilon (norm)`` axis label; ``percent`` shows the budget
    as a percentage (a share, e.g. of the words edited)."""
    fig = new_figure((6.4, 4.2), dpi)
    ax = fig.add_subplot()
    pts = sorted(points, key=lambda p: p.epsilon)
    right = 0.0
    if pts:
        xs = np.array([p.epsilon for p in pts])
        ys = np.array([p.accuracy for p in pts])
        err = np.array(
            [
                [max(p.accuracy - p.low, 0.0) for p in pts],
                [max(p.high - p.accuracy, 0.0) for p in pts],
            ]
        )
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            marker="o",
            capsize=3,
            label="accuracy on all evaluated samples (95% Wilson interval)",
        )
        for p in pts:
            ax.annotate(
                mpl_text(p.label),
                (p.epsilon, p.accuracy),
                textcoords="offset points",
                xytext=(6, -12 if p.accuracy > 0.9 else 5),
                fontsize="x-small",
            )
        right = float(xs.max())
    for s in sweeps:
        if not s.points:
            continue
        sx, sy = zip(*sorted(s.points), strict=True)
        ax.plot(sx, sy, linestyle="--", marker="s", markersize=4, label=mpl_text(s.label))
        right = max(right, float(max(sx)))
    right = right if right > 0 else 1.0
    ax.set_xlim(-0.02 * right, right * 1.1)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(mpl_text(xlabel) if xlabel else f"epsilon ({norm})" if norm else "epsilon")
    if percent:
        from matplotlib.ticker import PercentFormatter  # matplotlib is imported when drawing

        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")
    if title:
        ax.set_title(mpl_text(title), fontsize="medium")
    fig.tight_layout()
    return fig


def _image(x: np.ndarray, bounds: tuple[float, float]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(C, H, W)`` as what ``imshow`` takes, with its keyword arguments."""
    low, high = bounds
    if x.shape[0] == 1:
        return x[0], {"cmap": "gray", "vmin": low, "vmax": high}
    return np.clip((x.transpose(1, 2, 0) - low) / (high - low), 0.0, 1.0), {}


def _signed(ax: Any, fig: Any, m: np.ndarray, title: str) -> None:
    scale = float(np.abs(m).max()) if m.size else 0.0
    scale = scale if scale > 0 and np.isfinite(scale) else 1.0
    im = ax.imshow(m, cmap=DIVERGING, vmin=-scale, vmax=scale, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize="x-small")
    ax.set_title(title, fontsize="small")


def image_example_figure(
    clean: np.ndarray,
    adversarial: np.ndarray,
    attribution: np.ndarray,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    dpi: int = 90,
) -> Any:
    """Four panels for one image ``(C, H, W)``: clean, adversarial, the perturbation (per pixel
    the signed channel change of largest magnitude) and the attribution (summed over channels),
    the last two on a diverging colormap symmetric around 0."""
    fig = new_figure((9.6, 2.6), dpi)
    axes = fig.subplots(1, 4)
    for ax, x, title in ((axes[0], clean, "clean"), (axes[1], adversarial, "adversarial")):
        img, kw = _image(x, bounds)
        ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(title, fontsize="small")
    delta = adversarial - clean
    pick = np.abs(delta).argmax(axis=0)[None]
    _signed(axes[2], fig, np.take_along_axis(delta, pick, axis=0)[0], "perturbation δ")
    _signed(axes[3], fig, attribution.sum(axis=0), "attribution δ⊙∇margin")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
