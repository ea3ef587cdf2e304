"""Feature schemas: validation errors name the field, serving-time validation names the
feature, the registry resolves names, and the breast cancer schema tells its story."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tabular_helpers import feasible_rows, schemas

from robustops import SpecError
from robustops.tabular import (
    BREAST_CANCER_SCHEMA,
    FeatureSchema,
    available_schemas,
    get_schema,
    register_schema,
    resolve_schema,
)
from robustops.tabular.constraints import violating_rows, violation_masks


def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "loans",
        "features": [
            {"name": "age", "kind": "integer", "range": [18, 100], "immutable": True},
            {"name": "income", "range": [0, 1e6], "monotone": "increase"},
            {"name": "ch_web", "kind": "categorical"},
            {"name": "ch_app", "kind": "categorical"},
        ],
        "groups": [{"name": "channel", "features": ["ch_web", "ch_app"]}],
    }
    spec.update(over)
    return spec


def _feature(i: int, **over: Any) -> dict[str, Any]:
    spec = _spec()
    spec["features"][i] = {**spec["features"][i], **over}
    return spec


def test_a_valid_schema_parses() -> None:
    s = FeatureSchema.parse(_spec())
    assert s.dim == 4 and s.names == ["age", "income", "ch_web", "ch_app"]
    assert s.feature("age").levels == 82


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        (_feature(0, step=5), "features.0", ["'age'", "`step`", "divide"]),
        (_feature(1, range=[3, 3]), "features.1", ["'income'", "`range`"]),
        (_feature(1, step=1), "features.1", ["'income'", "`step`", "integer"]),
        (_feature(2, monotone="increase"), "features.2", ["'ch_web'", "`monotone`"]),
        (_feature(2, range=[0, 2]), "features.2", ["'ch_web'", "`range`"]),
        (_feature(0, neutral=17), "features.0", ["'age'", "`neutral`", "outside"]),
        (_feature(0, neutral=20.5), "features.0", ["'age'", "`neutral`", "grid"]),
        (_feature(1, monotone="sideways"), "features.1.monotone", ["increase"]),
        (_feature(3, name="ch_web"), "<root>", ["`features`", "unique", "ch_web"]),
        (
            _spec(groups=[{"name": "channel", "features": ["ch_web", "age"]}]),
            "<root>",
            ["groups.0", "'channel'", "`features`", "'age'", "categorical"],
        ),
        (
            _spec(groups=[{"name": "channel", "features": ["ch_web", "nope"]}]),
            "<root>",
            ["groups.0", "unknown feature 'nope'"],
        ),
        (_spec(groups=[]), "<root>", ["`groups`", "ch_web", "no one-hot group"]),
        (
            _spec(groups=[{"name": "channel", "features": ["ch_web", "ch_app"], "neutral": "x"}]),
            "<root>",
            ["groups.0", "`neutral`"],
        ),
    ],
)
def test_schema_errors_name_the_field(spec: dict[str, Any], path: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        FeatureSchema.parse(spec)
    paths = [p or "<root>" for p, _ in info.value.errors]
    assert path in paths, info.value.errors
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)


def test_partly_immutable_group_is_refused() -> None:
    spec = _feature(2, immutable=True)
    with pytest.raises(SpecError, match=r"groups\.0 \('channel'\), field `immutable`"):
        FeatureSchema.parse(spec)


def test_serving_validation_names_the_feature_in_raw_units() -> None:
    s = FeatureSchema.parse(_spec())
    good = [40, 52_000.0, 1, 0]
    bad = [40.5, 2e6, 1, 1]
    assert s.validate([good], raw=True) == []
    found = s.validate([good, bad], raw=True)
    assert [(v.row, v.feature) for v in found] == [(1, "age"), (1, "income"), (1, "channel")]
    assert "not on the integer grid" in found[0].reason and "40.5" in found[0].reason
    assert "outside the range [0, 1e+06]" in found[1].reason and "2e+06" in found[1].reason
    assert "exactly one member equal to 1" in found[2].reason
    # against the submitted original: immutable and monotone columns
    moved = s.validate([[41, 50_000.0, 1, 0]], [good], raw=True)
    assert [(v.feature, v.reason) for v in moved] == [
        ("age", "immutable, but changed from 40 to 41"),
        ("income", "may only increase, but went from 52000 down to 50000"),
    ]
    nan = s.validate([[40, float("nan"), 1, 0]], raw=True)
    assert nan[0].feature == "income" and "finite" in nan[0].reason
    with pytest.raises(SpecError, match=r"x: .*4 features"):
        s.validate([[1.0, 2.0]])


def test_is_feasible_and_scaling_round_trip() -> None:
    s = FeatureSchema.parse(_spec())
    raw = torch.tensor([[18.0, 0.0, 1.0, 0.0], [100.0, 1e6, 0.0, 1.0]], dtype=torch.float64)
    x = s.scale(raw)
    assert x.tolist() == [[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]]
    assert torch.allclose(s.unscale(x), raw)
    assert s.is_feasible(x.float()).tolist() == [True, True]
    moved = x.clone()
    moved[0, 1] = 0.5  # income may increase
    moved[1, 0] = 0.5  # age is immutable (and off the grid)
    assert s.is_feasible(moved, x).tolist() == [True, False]


def test_registry_and_resolution() -> None:
    assert "breast_cancer" in available_schemas()
    assert get_schema("breast_cancer") is BREAST_CANCER_SCHEMA
    assert resolve_schema("breast_cancer") is BREAST_CANCER_SCHEMA
    assert resolve_schema(None) is None
    assert resolve_schema(_spec()).name == "loans"  # type: ignore[union-attr]
    with pytest.raises(SpecError) as info:
        resolve_schema("nope")
    assert info.value.errors[0][0] == "schema" and "breast_cancer" in info.value.errors[0][1]
    with pytest.raises(SpecError) as info:
        resolve_schema(_feature(0, step=5))
    assert info.value.errors[0][0] == "schema.features.0"
    other = BREAST_CANCER_SCHEMA.model_copy(update={"description": "changed"})
    with pytest.raises(SpecError, match="already registered"):
        register_schema(other)
    assert register_schema(BREAST_CANCER_SCHEMA) is BREAST_CANCER_SCHEMA  # same one: fine


def test_breast_cancer_schema_story() -> None:
    s = BREAST_CANCER_SCHEMA
    assert s.dim == 32
    immutable = [f.name for f in s.features if f.immutable]
    assert immutable == [
        "mean radius",
        "mean perimeter",
        "mean area",
        "radius error",
        "perimeter error",
        "area error",
    ]
    increase = [f.name for f in s.features if f.monotone == "increase"]
    assert len(increase) == 10 and all(n.startswith("worst ") for n in increase)
    texture = s.feature("mean texture")
    assert texture.kind == "integer" and texture.range == (9.0, 40.0) and texture.levels == 31
    (group,) = s.groups
    assert group.name == "mean symmetry grade" and len(group.features) == 3
    assert group.neutral == "mean symmetry grade: typical"
    units = [name for name, _ in s.constraints().units()]
    assert len(units) == 32 - 6 - 3 + 1 and "mean symmetry grade" in units


def test_breast_cancer_serving_payload_in_raw_units() -> None:
    from sklearn.datasets import load_breast_cancer

    from robustops.tabular import encode_breast_cancer

    raw = encode_breast_cancer(load_breast_cancer().data[:5])
    assert BREAST_CANCER_SCHEMA.validate(raw, raw=True) == []
    edited = raw.copy()
    edited[2, BREAST_CANCER_SCHEMA.index("mean texture")] += 0.5
    edited[3, BREAST_CANCER_SCHEMA.index("worst area")] -= 1.0
    edited[4, BREAST_CANCER_SCHEMA.index("mean area")] = 3000.0
    found = BREAST_CANCER_SCHEMA.validate(edited, raw, raw=True)
    assert [(v.row, v.feature) for v in found] == [
        (2, "mean texture"),
        (3, "worst area"),
        (4, "mean area"),
        (4, "mean area"),
    ]
    assert "integer grid" in found[0].reason and "may only increase" in found[1].reason
    assert {found[2].reason.split(" ")[0], found[3].reason.split(" ")[0]} == {"value", "immutable,"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas(), seed=st.integers(0, 2**31 - 1))
def test_check_raw_finds_what_validate_finds(schema: FeatureSchema, seed: int) -> None:
    """The whole-column check of a loaded table (``check_raw``, ``violating_rows``) flags the
    rows ``violation_masks`` flags and reports ``validate``'s first violation, with
    ``scale``'s values."""
    gen = torch.Generator().manual_seed(seed)
    x = feasible_rows(schema, 12, gen).double()
    rng = np.random.default_rng(seed)
    odd = [-0.5, 1.5, 0.5, 0.3333, float("nan"), float("inf"), -float("inf"), 1e-12, 1 + 1e-12]
    for _ in range(int(rng.integers(0, 6))):  # break a few cells (some rows stay feasible)
        x[int(rng.integers(0, 12)), int(rng.integers(0, schema.dim))] = float(rng.choice(odd))
    raw = schema.unscale(x).numpy()
    scaled_t = schema.scale(raw)
    want_rows = torch.zeros(12, dtype=torch.bool)
    for m in violation_masks(scaled_t, None, schema.constraints(torch.float64)).values():
        want_rows |= m.any(dim=1)
    scaled, first = schema.check_raw(raw)
    assert np.array_equal(scaled, scaled_t.numpy(), equal_nan=True)  # bit for bit
    got_rows = violating_rows(scaled, schema.constraints(torch.float64))
    assert got_rows.tolist() == want_rows.tolist()
    found = schema.validate(raw, raw=True, limit=1)
    assert first == (found[0] if found else None)
