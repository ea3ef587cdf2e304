"""The bottom-level helpers every layer shares: the strict pydantic base and the share
formatters."""

from __future__ import annotations

import pytest
from pydantic import ConfigDict, ValidationError

from robustops.format import percent, points
from robustops.schema import StrictModel


class _Point(StrictModel):
    x: int


class _Frozen(StrictModel):
    model_config = ConfigDict(frozen=True)

    x: int


def test_strict_model_refuses_unknown_fields() -> None:
    assert _Point(x=1).x == 1
    with pytest.raises(ValidationError, match="extra"):
        _Point.model_validate({"x": 1, "y": 2})


def test_frozen_subclass_keeps_the_strict_base() -> None:
    assert _Frozen.model_config["extra"] == "forbid"
    with pytest.raises(ValidationError):
        _Frozen(x=1).x = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        _Frozen.model_validate({"x": 1, "y": 2})


@pytest.mark.parametrize("share", [0.0, 0.125, 1 / 3, 0.99949, 0.0005, 1.0, 0.91234])
def test_percent_matches_both_old_spellings(share: float) -> None:
    assert percent(share) == f"{share:.1%}" == f"{100 * share:.1f}%"


def test_percent_digits_and_significant() -> None:
    assert percent(0.125, 0) == "12%"
    assert percent(0.2, 4, significant=True) == "20%"
    assert percent(0.125, 4, significant=True) == "12.5%"


def test_points() -> None:
    assert points(0.031) == "3.1 points"
    assert points(-0.031, sign=True) == "-3.1 points"
    assert points(0.031, sign=True) == "+3.1 points"
    assert points(0.031, sign=True, unit=False) == "+3.1"
