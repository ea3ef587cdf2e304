"""Learning-rate schedules and the epsilon curriculum."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from robustops.training import (
    CurriculumSpec,
    ScheduleSpec,
    adaptive_update,
    curriculum_factor,
    learning_rate,
)


def test_cyclic_is_a_triangle() -> None:
    s = ScheduleSpec(kind="cyclic", peak=0.5)
    assert learning_rate(s, 0.2, 0.0, 10) == 0.0
    assert learning_rate(s, 0.2, 5.0, 10) == pytest.approx(0.2)
    assert learning_rate(s, 0.2, 2.5, 10) == pytest.approx(0.1)
    assert learning_rate(s, 0.2, 10.0, 10) == pytest.approx(0.0)


def test_cosine_with_warmup() -> None:
    s = ScheduleSpec(kind="cosine", warmup_epochs=1.0, min_factor=0.1)
    assert learning_rate(s, 1.0, 0.5, 11) == pytest.approx(0.5)
    assert learning_rate(s, 1.0, 1.0, 11) == pytest.approx(1.0)
    assert learning_rate(s, 1.0, 6.0, 11) == pytest.approx(0.55)
    assert learning_rate(s, 1.0, 11.0, 11) == pytest.approx(0.1)


def test_piecewise() -> None:
    s = ScheduleSpec(kind="piecewise", milestones=[2, 4], factor=0.1)
    assert [learning_rate(s, 1.0, t, 6) for t in (0, 1.9, 2, 4.5)] == pytest.approx(
        [1, 1, 0.1, 0.01]
    )


@given(
    kind=st.sampled_from(["constant", "cosine", "piecewise", "cyclic"]),
    t=st.floats(0, 10),
    lr=st.floats(1e-5, 1.0),
)
def test_lr_stays_between_zero_and_peak(kind: str, t: float, lr: float) -> None:
    s = ScheduleSpec(kind=kind)  # type: ignore[arg-type]
    value = learning_rate(s, lr, t, 10)
    assert 0.0 <= value <= lr * (1 + 1e-12) and math.isfinite(value)


def test_curricula() -> None:
    lin = CurriculumSpec(kind="linear", start=0.2, ramp_epochs=2)
    assert [curriculum_factor(lin, t, 0) for t in (0, 1, 2, 5)] == pytest.approx([0.2, 0.6, 1, 1])
    step = CurriculumSpec(kind="step", milestones=[1, 3], values=[0.25, 0.5, 1.0])
    assert [curriculum_factor(step, t, 0) for t in (0, 1.5, 3)] == [0.25, 0.5, 1.0]
    ada = CurriculumSpec(kind="adaptive", start=0.3, target=0.6, increment=0.5)
    assert curriculum_factor(ada, 7.0, 0.3) == 0.3
    assert adaptive_update(ada, 0.3, 0.5) == 0.3
    assert adaptive_update(ada, 0.3, 0.7) == 0.8
    assert adaptive_update(ada, 0.8, 0.7) == 1.0
    assert adaptive_update(ada, 0.3, None) == 0.3
