from __future__ import annotations

import pytest

from robustops import SpecError, ThreatModel


def test_valid_threat_defaults() -> None:
    t = ThreatModel(name="linf", epsilon=0.3)
    assert t.norm == "linf" and t.knowledge == "white-box" and t.bounds == (0.0, 1.0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "a", "epsilon": -1}, "epsilon"),
        ({"name": "a", "epsilon": 0.1, "norm": "l1"}, "norm"),
        ({"name": "a", "epsilon": 0.1, "knowledge": "psychic"}, "knowledge"),
        ({"name": "a", "epsilon": 0.1, "query_budget": 0}, "query_budget"),
        ({"name": "a", "epsilon": 0.1, "colour": "red"}, "colour"),
        ({"epsilon": 0.1}, "name"),
        ({"name": "a", "epsilon": float("nan")}, "epsilon"),
    ],
)
def test_invalid_threat_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        ThreatModel.parse(data)
    assert any(path == field for path, _ in info.value.errors), info.value.errors


def test_bounds_order() -> None:
    with pytest.raises(SpecError, match="low < high"):
        ThreatModel.parse({"name": "a", "epsilon": 0.1, "bounds": [1, 0]})
