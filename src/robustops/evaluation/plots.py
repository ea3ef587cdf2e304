"""Figures of a suite result, drawn with matplotlib's non-interactive Agg backend (no display).

Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustops.evaluation.metrics import CalibrationMetrics

if TYPE_CHECKING:
    from robustops.evaluation.result import SuiteResult

__all__ = ["plot_reliability", "plot_result"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(
    curves: Sequence[tuple[str, CalibrationMetrics]], path: str | Path, *, title: str = ""
) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, one line per
    ``(label, metrics)`` (e.g. clean and each threat's attacked inputs), with the diagonal of
    perfect calibration and each curve's ECE in the legend. Empty bins are skipped."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 5.0), dpi=110)
    try:
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
        for label, m in curves:
            pts = [(b.confidence, b.accuracy) for b in m.bins if b.count]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            t = f", T={m.temperature:.2g}" if m.temperature != 1.0 else ""
            ax.plot(xs, ys, marker="o", label=f"{label} (ECE {m.ece:.3f}{t})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(title or "reliability diagram")
        ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_result(result: SuiteResult, out_dir: str | Path) -> list[Path]:
    """Every figure the result supports, written to ``out_dir``: the reliability diagram (clean
    and attacked per threat, before and, when fitted, after temperature scaling) and the
    certified-accuracy curve when the run certified."""
    out = Path(out_dir)
    written: list[Path] = []
    cal = result.calibration
    if cal is not None:
        raw: list[tuple[str, CalibrationMetrics]] = [("clean", cal.clean)]
        scaled: list[tuple[str, CalibrationMetrics]] = []
        if cal.clean_scaled is not None:
            scaled.append(("clean", cal.clean_scaled))
        for t in result.threats:
            if t.calibration is None:
                continue
            raw.append((t.name, t.calibration.attacked))
            if t.calibration.attacked_scaled is not None:
                scaled.append((t.name, t.calibration.attacked_scaled))
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
        from robustops.defenses.smoothing import plot_certified_accuracy

        written.append(
            plot_certified_accuracy([result.certification], out / "certified_accuracy.png")
        )
    return written
