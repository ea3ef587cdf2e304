"""The schema projection lands exactly on the feasible set ∩ the threat's ball and bounds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tabular_helpers import feasible_rows, schemas

from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.models import mlp
from robustops.tabular import BREAST_CANCER_SCHEMA, Feature, FeatureSchema, OneHotGroup
from robustops.tabular.constraints import in_threat

BOUNDS = [(0.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (0.0, 2.0)]


def _threat(norm: str, eps: float, bounds: tuple[float, float], **kw: Any) -> ThreatModel:
    return ThreatModel(name="t", norm=norm, epsilon=eps, bounds=bounds, **kw)  # type: ignore[arg-type]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schema=schemas(),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.one_of(
        st.just(0.0),
        st.floats(min_value=1e-5, max_value=3.0, allow_subnormal=False),
        st.sampled_from([0.5, 1.0, 2.0**0.5, 2.0]),
    ),
    bounds=st.sampled_from(BOUNDS),
    scale=st.floats(min_value=0.0, max_value=5.0),
    seed=st.integers(0, 2**16),
)
def test_project_satisfies_every_constraint_and_the_ball(
    schema: FeatureSchema,
    norm: str,
    eps: float,
    bounds: tuple[float, float],
    scale: float,
    seed: int,
) -> None:
    threat = _threat(norm, eps, bounds)
    gen = torch.Generator().manual_seed(seed)
    x = feasible_rows(schema, 8, gen)
    v = x + scale * torch.randn(x.shape, generator=gen)
    out = schema.project(v, x, threat)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not schema.validate(out, x), schema.validate(out, x)[:3]
    assert bool(schema.is_feasible(out, x, threat).all())
    # the contract test of the attacks, verbatim: exact in float32
    delta = out - x
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps).all()), (size.max().item(), eps)
    assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
    # a feasible point is left alone (so the projection is idempotent)
    assert torch.equal(schema.project(out, x, threat), out)
    assert torch.equal(schema.project(x, x, threat), x)


def _grid_schema() -> FeatureSchema:
    return FeatureSchema(
        name="grid",
        features=[
            Feature(name="n", kind="integer", range=(0, 10)),
            Feature(name="a", kind="categorical"),
            Feature(name="b", kind="categorical"),
            Feature(name="c", kind="categorical"),
            Feature(name="m", kind="continuous"),
        ],
        groups=[OneHotGroup(name="abc", features=["a", "b", "c"])],
    )


def test_integers_round_towards_the_original_when_rounding_would_leave_the_ball() -> None:
    s = _grid_schema()
    x = torch.tensor([[0.5, 1.0, 0.0, 0.0, 0.5]])
    v = torch.tensor([[0.57, 1.0, 0.0, 0.0, 0.5]])
    # nearest grid point 0.6 is 0.1 away: outside an L∞ ball of 0.07, so it stays at 0.5
    assert s.project(v, x, _threat("linf", 0.07, (0, 1)))[0, 0] == 0.5
    assert s.project(v, x, _threat("linf", 0.12, (0, 1)))[0, 0] == torch.tensor(0.6)
    # L2: rounding the integer up to 0.6 would make the row 0.14 long; towards the original
    # it fits (0.1 <= 0.105) and the continuous column keeps its whole move
    v2 = torch.tensor([[0.57, 1.0, 0.0, 0.0, 0.6]])
    out = s.project(v2, x, _threat("l2", 0.105, (0, 1)))
    assert out[0, 0] == 0.5 and out[0, 4] == v2[0, 4]
    # with less room the continuous move is scaled down too
    out = s.project(v2, x, _threat("l2", 0.05, (0, 1)))
    assert out[0, 0] == 0.5 and 0.5 < float(out[0, 4]) < 0.55


@pytest.mark.parametrize(
    ("norm", "eps", "changes"),
    [("linf", 0.99, False), ("linf", 1.0, True), ("l2", 1.41, False), ("l2", 2.0**0.5, True)],
)
def test_category_changes_cost_what_they_should(norm: str, eps: float, changes: bool) -> None:
    s = _grid_schema()
    x = torch.tensor([[0.5, 1.0, 0.0, 0.0, 0.5]])
    v = torch.tensor([[0.5, 0.2, 0.9, 0.1, 0.5]])  # the relaxation prefers category b
    out = s.project(v, x, _threat(norm, eps, (0, 1)))
    expect = [0.0, 1.0, 0.0] if changes else [1.0, 0.0, 0.0]
    assert out[0, 1:4].tolist() == expect
    assert bool(in_threat(out, x, _threat(norm, eps, (0, 1))).all())


def test_l2_changes_at_most_floor_eps_squared_over_two_groups() -> None:
    feats = [Feature(name=f"{g}{j}", kind="categorical") for g in "pqr" for j in range(2)]
    groups = [OneHotGroup(name=g, features=[f"{g}0", f"{g}1"]) for g in "pqr"]
    s = FeatureSchema(name="three", features=feats, groups=groups)
    x = torch.tensor([[1.0, 0.0] * 3])
    v = torch.tensor([[0.0, 0.9, 0.0, 0.5, 0.0, 0.7]])  # wants all three, p most, q least
    out = s.project(v, x, _threat("l2", 2.1, (0, 1)))  # room for two changes (cost 2 each)
    assert out.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]]


def test_immutable_and_monotone_columns() -> None:
    s = BREAST_CANCER_SCHEMA
    x = torch.full((1, s.dim), 0.5)
    for g in s.groups:
        x[0, [s.index(m) for m in g.features]] = torch.tensor([0.0, 1.0, 0.0])
    x[0, s.index("mean texture")] = 10 / 31
    v = torch.zeros_like(x)  # push everything down
    out = s.project(v, x, _threat("linf", 0.3, (0, 1)))
    assert out[0, s.index("mean radius")] == x[0, s.index("mean radius")]  # immutable
    assert out[0, s.index("worst area")] == x[0, s.index("worst area")]  # increase only
    assert out[0, s.index("texture error")] == pytest.approx(0.2)  # free: down by ε
    assert out[0, s.index("mean texture")] == torch.tensor(1 / 31)  # 9 steps of 1/31 fit in 0.3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schema=schemas(),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(min_value=1e-3, max_value=2.5, allow_subnormal=False),
    targeted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_tabular_attack_returns_feasible_rows(
    schema: FeatureSchema, norm: str, eps: float, targeted: bool, seed: int
) -> None:
    threat = _threat(norm, eps, (0.0, 1.0), targeted=targeted)
    gen = torch.Generator().manual_seed(seed)
    x = feasible_rows(schema, 6, gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    targets = (y + 1 + torch.randint(0, 2, (6,), generator=gen)) % 3 if targeted else None
    model = mlp(input_dim=schema.dim, hidden=(8,), num_classes=3, seed=seed % 7).eval()
    for name, kw in (
        ("tabular-pgd", {"steps": 5, "restarts": 2}),
        ("tabular-noise", {"draws": 5}),
        ("feature-masking", {"k": 2}),
    ):
        res = build_attack(name, threat, schema=schema, seed=seed, **kw)(
            model, x, y, targets=targets
        )
        assert not schema.validate(res.adversarial, x), (
            name,
            schema.validate(res.adversarial, x)[:3],
        )
        assert bool(schema.is_feasible(res.adversarial, x, threat).all()), name
        with torch.no_grad():
            pred = model(res.adversarial).argmax(1)
        assert torch.equal(res.success, pred == targets if targeted else pred != y)
