"""Figures of a suite result, drawn with matplotlib's non-interactive Agg canvas (no display).

Figures are built as :class:`matplotlib.figure.Figure` objects attached to an Agg canvas, never
through ``pyplot``: no global state, nothing to close, safe to call from any thread and without
changing the backend of an interactive session. Each ``*_figure`` function returns such a
figure; :func:`figure_png` renders one to PNG bytes (for self-contained HTML) and
:func:`save_figure` writes it to a file. ``plot_*`` functions write one PNG and return its path.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustops.evaluation.certification import CertificationResult, certified_accuracy_curve
from robustops.evaluation.metrics import CalibrationMetrics
from robustops.io import atomic_path

if TYPE_CHECKING:
    from robustops.evaluation.result import SuiteResult

__all__ = [
    "certified_accuracy_figure",
    "figure_png",
    "mpl_text",
    "new_figure",
    "plot_certified_accuracy",
    "plot_reliability",
    "plot_result",
    "reliability_curves",
    "reliability_figure",
    "save_figure",
]


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
