"""Learning-rate schedules and the epsilon curriculum, as pure functions of training progress.

Progress ``t`` is measured in epochs and may be fractional (``epoch + batch / n_batches``), so a
schedule is evaluated every batch and a resumed run sees exactly the values an uninterrupted
one would. The adaptive curriculum is the only one with state (its current factor), which the
trainer checkpoints.
"""

from __future__ import annotations

import math

from robustops.training.recipe import CurriculumSpec, ScheduleSpec

__all__ = ["adaptive_update", "curriculum_factor", "learning_rate"]


def learning_rate(spec: ScheduleSpec, lr: float, t: float, total: float) -> float:
    """The learning rate at progress ``t`` (epochs, in ``[0, total]``) for peak ``lr``."""
    if total <= 0:
        return lr
    t = min(max(t, 0.0), total)
    low = spec.min_factor * lr
    if spec.kind == "cyclic":
        peak = spec.peak * total
        if t <= peak:
            return low + (lr - low) * t / peak
        return low + (lr - low) * max(0.0, (total - t) / (total - peak))
    if spec.warmup_epochs > 0 and t < spec.warmup_epochs:
        return lr * t / spec.warmup_epochs
    if spec.kind == "constant":
        return lr
    if spec.kind == "cosine":
        span = total - spec.warmup_epochs
        frac = (t - spec.warmup_epochs) / span if span > 0 else 1.0
        return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * frac))
    # piecewise
    passed = sum(1 for m in spec.milestones if t >= m)
    return lr * spec.factor**passed


def curriculum_factor(spec: CurriculumSpec, t: float, adaptive_state: float) -> float:
    """The share of each perturbation budget in use at progress ``t`` (epochs), in [0, 1].

    ``adaptive_state`` is the current factor of an ``adaptive`` curriculum (ignored otherwise).
    """
    if spec.kind == "constant":
        return 1.0
    if spec.kind == "linear":
        return min(1.0, spec.start + (1.0 - spec.start) * max(t, 0.0) / spec.ramp_epochs)
    if spec.kind == "step":
        passed = sum(1 for m in spec.milestones if t >= m)
        return spec.values[passed]
    return adaptive_state


def adaptive_update(spec: CurriculumSpec, state: float, robust_accuracy: float | None) -> float:
    """The adaptive curriculum's next factor after an epoch with validation ``robust_accuracy``
    measured at the current factor (unchanged when it is below ``target`` or unknown)."""
    if spec.kind != "adaptive" or robust_accuracy is None or robust_accuracy < spec.target:
        return state
    return min(1.0, state + spec.increment)
