"""Every figure of RobustOps, drawn with matplotlib's non-interactive Agg canvas (no display):
reliability diagrams, certified accuracy against radius, robust accuracy against epsilon and
adversarial-example panels. The CLI's ``--plots`` and the reports both draw through here.

Figures are built as :class:`matplotlib.figure.Figure` objects attached to an Agg canvas, never
through ``pyplot``: no global state, nothing to close, safe to call from any thread and without
changing the backend of an interactive session. Each ``*_figure`` function returns such a
figure; :func:`figure_png` renders one to PNG bytes (for self-contained HTML) and
:func:`save_figure` writes it to a file. ``plot_*`` functions write one PNG and return its path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robustops.evaluation.certification import CertificationResult, certified_accuracy_curve
from robustops.evaluation.metrics import CalibrationMetrics
from robustops.io import atomic_path

if TYPE_CHECKING:
    from robustops.evaluation.result import SuiteResult

__all__ = [
    "DIVERGING",
    "AccuracyPoint",
    "SweepSeries",
    "certified_accuracy_figure",
    "figure_png",
    "image_example_figure",
    "mpl_text",
    "new_figure",
    "plot_certified_accuracy",
    "plot_reliability",
    "plot_result",
    "reliability_curves",
    "reliability_figure",
    "robustness_curve_figure",
    "save_figure",
]

DIVERGING = "RdBu_r"
"""Colormap of signed maps: blue negative, white 0, red positive."""


def new_figure(figsize: tuple[float, float] = (5.0, 5.0), dpi: int = 110) -> Any:
    """An empty figure on its own Agg canvas (no pyplot, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def mpl_text(text: str) -> str:
    """``text`` shown literally by matplotlib (``$`` would start mathtext, which can raise on
    arbitrary names)."""
    return str(text).replace("$", r"\$")


def figure_png(fig: Any) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def reliability_figure(
    curves: Sequence[tuple[str, CalibrationMetrics]], *, title: str = "", dpi: int = 110
) -> Any:
    """Reliability diagram: accuracy against mean confidence per bin, one line per
    ``(label, metrics)``, with the diagonal of perfect calibration and each curve's ECE in the
    legend. Empty bins are skipped."""
    fig = new_figure((5.0, 5.0), dpi)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    for label, m in curves:
        pts = [(b.confidence, b.accuracy) for b in m.bins if b.count]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        t = f", T={m.temperature:.2g}" if m.temperature != 1.0 else ""
        ax.plot(xs, ys, marker="o", label=mpl_text(f"{label} (ECE {m.ece:.3f}{t})"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(mpl_text(title) if title else "reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_reliability(
    curves: Sequence[tuple[str, CalibrationMetrics]], path: str | Path, *, title: str = ""
) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, one line per
    ``(label, metrics)`` (e.g. clean and each threat's attacked inputs), with the diagonal of
    perfect calibration and each curve's ECE in the legend. Empty bins are skipped."""
    return save_figure(reliability_figure(curves, title=title), path)


def certified_accuracy_figure(
    results: Sequence[CertificationResult], *, title: str | None = None, dpi: int = 110
) -> Any:
    """Certified accuracy against L2 radius: the exact step curve per result (labelled by its
    sigma), the reported radii (``certified_accuracy``) as points and the largest radius ``n``
    and ``alpha`` allow as a dotted vertical line."""
    fig = new_figure((6.0, 4.0), dpi)
    ax = fig.add_subplot()
    right = 0.0
    for res in results:
        pts = certified_accuracy_curve(res)
        xs = [r for r, _ in pts]
        ys = [a for _, a in pts]
        end = max(xs[-1] * 1.05, xs[-1] + 0.05)
        xs.append(end)
        ys.append(0.0)
        right = max(right, end)
        (line,) = ax.step(
            xs, ys, where="pre", label=f"σ = {res.sigma:g} (n = {res.n}, α = {res.alpha:g})"
        )
        grid = sorted((float(r), acc) for r, acc in res.certified_accuracy.items())
        if grid:
            ax.plot(*zip(*grid, strict=True), "o", color=line.get_color())
            right = max(right, grid[-1][0] * 1.05)
        ax.axvline(res.max_certifiable_radius, linestyle=":", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_xlim(0.0, right or 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if results:
        ax.legend()
    if title:
        ax.set_title(mpl_text(title))
    fig.tight_layout()
    return fig


def plot_certified_accuracy(
    results: Sequence[CertificationResult], path: str | Path, *, title: str | None = None
) -> Path:
    """Plot certified accuracy against L2 radius (a step curve per result, labelled by its
    sigma, with the reported radii and the largest certifiable radius marked, see
    :func:`certified_accuracy_figure`) and save it as a PNG at ``path``; returns the path."""
    return save_figure(certified_accuracy_figure(results, title=title), path)


def plot_result(result: SuiteResult, out_dir: str | Path) -> list[Path]:
    """Every figure the result supports, written to ``out_dir``: the reliability diagram (clean
    and attacked per threat, before and, when fitted, after temperature scaling) and the
    certified-accuracy curve when the run certified."""
    out = Path(out_dir)
    written: list[Path] = []
    raw, scaled = reliability_curves(result)
    if raw:
        written.append(
            plot_reliability(raw, out / "reliability.png", title=f"{result.name}: uncalibrated")
        )
        if scaled:
            written.append(
                plot_reliability(
                    scaled,
                    out / "reliability_scaled.png",
                    title=f"{result.name}: temperature-scaled",
                )
            )
    if result.certification is not None:
        written.append(
            plot_certified_accuracy([result.certification], out / "certified_accuracy.png")
        )
    return written


def reliability_curves(
    result: SuiteResult,
) -> tuple[list[tuple[str, CalibrationMetrics]], list[tuple[str, CalibrationMetrics]]]:
    """``(raw, scaled)`` reliability curves of a result: clean then each threat's attacked
    inputs, before and after temperature scaling (``scaled`` empty when no temperature was
    fitted; both empty when the run has no calibration)."""
    cal = result.calibration
    raw: list[tuple[str, CalibrationMetrics]] = []
    scaled: list[tuple[str, CalibrationMetrics]] = []
    if cal is None:
        return raw, scaled
    raw.append(("clean", cal.clean))
    if cal.clean_scaled is not None:
        scaled.append(("clean", cal.clean_scaled))
    for t in result.threats:
        if t.calibration is None:
            continue
        raw.append((t.name, t.calibration.attacked))
        if t.calibration.attacked_scaled is not None:
            scaled.append((t.name, t.calibration.attacked_scaled))
    return raw, scaled


# -- robust accuracy against the budget ----------------------------------------------------------


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
    right = max(_accuracy_curve(ax, points), _sweep_curves(ax, sweeps))
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


def _accuracy_curve(ax: Any, points: Sequence[AccuracyPoint]) -> float:
    """Draw ``points`` in order of epsilon with Wilson error bars and labels; returns the
    largest epsilon drawn (0 without points)."""
    pts = sorted(points, key=lambda p: p.epsilon)
    if not pts:
        return 0.0
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
    return float(xs.max())


def _sweep_curves(ax: Any, sweeps: Sequence[SweepSeries]) -> float:
    """Draw each non-empty sweep dashed; returns the largest epsilon drawn (0 without any)."""
    right = 0.0
    for s in sweeps:
        if not s.points:
            continue
        sx, sy = zip(*sorted(s.points), strict=True)
        ax.plot(sx, sy, linestyle="--", marker="s", markersize=4, label=mpl_text(s.label))
        right = max(right, float(max(sx)))
    return right


# -- adversarial-example panels ------------------------------------------------------------------


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
