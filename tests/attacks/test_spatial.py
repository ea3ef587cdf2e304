"""Spatial attacks (rotation + translation, Engstrom et al. 2019): the transform, the budget
check and its refusal of forged outputs, strength of the grid search on an MNIST CNN, the
first-order attack, targeted threats, query accounting and reproducibility."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from model_helpers import Counting
from robustops import ThreatModel
from robustops.attacks import SpatialGrid, SpatialPGD, build_attack, spatial_transform
from robustops.attacks.budget import check_budget
from robustops.attacks.spatial import budget_share, spatial_adversarial, spatial_within_budget

Data = tuple[nn.Module, Tensor, Tensor]


def _threat(eps: float = 30.0, translation: float = 3.0, **kw: Any) -> ThreatModel:
    return ThreatModel(name="s", norm="spatial", epsilon=eps, translation=translation, **kw)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def data(half_width_cnn: tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]) -> Data:
    """The MNIST CNN and 60 test digits it classifies correctly."""
    net, _, _, x, y = half_width_cnn
    return net, x[:60], y[:60]


# 1. the transform ------------------------------------------------------------------------


def test_zero_parameters_give_the_image_back() -> None:
    x = torch.rand(3, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    out = spatial_transform(x, torch.zeros(3, 3))
    assert out.shape == x.shape and torch.allclose(out, x, atol=1e-6)


def test_shifts_move_pixels_and_shift_zeros_in() -> None:
    x = torch.rand(1, 1, 6, 8, generator=torch.Generator().manual_seed(1)) + 0.5
    right = spatial_transform(x, torch.tensor([[0.0, 2.0, 0.0]]))
    assert torch.allclose(right[..., 2:], x[..., :-2], atol=1e-6)
    assert float(right[..., :2].abs().max()) < 1e-6
    down = spatial_transform(x, torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(down[..., 1:, :], x[..., :-1, :], atol=1e-6)


def test_rotation_is_counter_clockwise_about_the_centre() -> None:
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # right of the centre
    out = spatial_transform(x, torch.tensor([[90.0, 0.0, 0.0]]))
    expect = torch.zeros(1, 1, 5, 5)
    expect[0, 0, 0, 2] = 1.0  # above it
    assert torch.allclose(out, expect, atol=1e-5)


def test_transform_is_differentiable_in_its_parameters() -> None:
    x = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    params = torch.tensor([[10.0, 0.5, -0.5], [-5.0, 1.0, 0.3]], requires_grad=True)
    spatial_transform(x, params).pow(2).sum().backward()
    assert params.grad is not None and bool((params.grad.abs() > 0).all())


# 2. the budget check ---------------------------------------------------------------------


def test_check_accepts_an_honest_transform_and_measures_its_share() -> None:
    threat = _threat(30.0, 3.0)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    params = torch.tensor([[15.0, 0.0, 0.0], [-30.0, 3.0, -1.5], [0.0, 0.0, 0.0]])
    ok, size = spatial_within_budget(threat, x, spatial_adversarial(x, params, (0, 1)), params)
    assert ok.tolist() == [True, True, True]
    assert torch.allclose(size, torch.tensor([0.5, 1.0, 0.0]))


def test_check_rejects_forged_outputs() -> None:
    threat = _threat(30.0, 3.0)
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    honest = torch.tensor([[10.0, 1.0, 1.0]] * 4)
    beyond = torch.tensor([[45.0, 0.0, 0.0], [0.0, 3.5, 0.0], [0.0, 0.0, -4.0], [31.0, 0.0, 0.0]])
    # a rotation or shift beyond the budget, reported truthfully
    ok, size = spatial_within_budget(threat, x, spatial_adversarial(x, beyond, (0, 1)), beyond)
    assert not ok.any() and bool((size <= 1).all())
    # an output that is not the transform its details describe
    other = spatial_adversarial(x, torch.tensor([[20.0, 1.0, 1.0]] * 4), (0, 1))
    assert not spatial_within_budget(threat, x, other, honest)[0].any()
    # a within-budget transform plus a small additive change
    tweaked = spatial_adversarial(x, honest, (0, 1)) + 1e-3
    assert not spatial_within_budget(threat, x, tweaked, honest)[0].any()


@pytest.mark.parametrize(
    "details",
    [None, torch.zeros(4, 2), torch.zeros(3, 3), torch.zeros(4, 3, dtype=torch.int64), "x"],
)
def test_check_fails_malformed_details_without_raising(details: Any) -> None:
    x = torch.rand(4, 1, 8, 8)
    ok, size = spatial_within_budget(_threat(), x, x.clone(), details)
    assert ok.shape == (4,) and not ok.any() and size.shape == (4,)


def test_check_fails_nan_details_per_sample() -> None:
    x = torch.rand(2, 1, 8, 8)
    details = torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])
    ok, size = spatial_within_budget(
        _threat(), x, spatial_adversarial(x, details.nan_to_num(), (0, 1)), details
    )
    assert ok.tolist() == [False, True] and bool(((size >= 0) & (size <= 1)).all())


def test_budget_share_skips_zero_budgets() -> None:
    params = torch.tensor([[0.0, 2.0, -1.0]])
    assert budget_share(_threat(0.0, 4.0), params).item() == 0.5
    assert budget_share(_threat(10.0, 0.0), torch.tensor([[5.0, 0.0, 0.0]])).item() == 0.5


# 3. the attacks on an MNIST CNN ----------------------------------------------------------


def test_grid_breaks_a_fair_share_of_the_mnist_cnn(data: Data) -> None:
    net, x, y = data
    attack = SpatialGrid(_threat(30.0, 3.0))
    model = Counting(net)
    res = attack(model, x, y)
    check = check_budget(attack, x, res)
    assert check.ok.all()
    assert res.success.float().mean().item() >= 0.5
    assert torch.allclose(res.perturbation, check.size)
    assert res.details.shape == (60, 3) and res.details.dtype == x.dtype
    # one query per grid point tried, stopping at the first success; exactly what the model saw
    assert int(res.queries.max()) <= 31 * 5 * 5 and int(res.queries.min()) >= 1
    assert model.rows == int(res.queries.sum()) + x.shape[0]


def test_grid_tries_the_smallest_transforms_first() -> None:
    grid = SpatialGrid(_threat(30.0, 3.0), rotations=7, translations=3).grid()
    assert grid.shape == (7 * 3 * 3, 3)
    assert grid[0].abs().sum().item() == 0
    shares = budget_share(_threat(30.0, 3.0), grid)
    assert bool((shares[1:] >= shares[:-1]).all())
    capped = SpatialGrid(_threat(30.0, 3.0, query_budget=10)).grid()
    assert capped.shape == (10, 3)


def test_pgd_stays_within_budget_and_fools_some(data: Data) -> None:
    net, x, y = data
    attack = SpatialPGD(_threat(30.0, 3.0), steps=5, restarts=2)
    res = attack(net, x[:30], y[:30])
    assert check_budget(attack, x[:30], res).ok.all()
    assert res.success.float().mean().item() >= 0.3
    assert int(res.queries.max()) <= 2 * (5 + 1)


@pytest.mark.parametrize(
    ("name", "options"),
    [("spatial-grid", {"rotations": 11, "translations": 3}), ("spatial-pgd", {"steps": 5})],
)
def test_targeted_threats_reach_the_target(data: Data, name: str, options: dict[str, int]) -> None:
    net, x, y = data
    x, y = x[:20], y[:20]
    targets = (y + 1) % 10
    attack = build_attack(name, _threat(30.0, 3.0, targeted=True), seed=0, **options)
    res = attack(net, x, y, targets=targets)
    assert check_budget(attack, x, res).ok.all()
    assert res.success.any()
    assert torch.equal(res.predictions[res.success], targets[res.success])


@pytest.mark.parametrize("name", ["spatial-grid", "spatial-pgd"])
def test_bounds_without_zero_clamp_what_is_shifted_in(name: str) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = 0.25 + torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    attack = build_attack(
        name, _threat(20.0, 2.0, bounds=(0.25, 1.25)), **({"steps": 3} if "pgd" in name else {})
    )
    res = attack(net, x, torch.zeros(5, dtype=torch.int64))
    assert check_budget(attack, x, res).ok.all()


def test_attacks_are_reproducible_and_round_trip_their_params(data: Data) -> None:
    net, x, y = data
    x, y = x[:10], y[:10]
    attack = SpatialPGD(_threat(), steps=3, restarts=2, seed=7)
    a, b = attack(net, x, y), attack(net, x, y)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.details, b.details)
    clone = attack.with_params()
    assert clone.params() == attack.params() and clone is not attack
    assert attack.with_params(steps=4).params() == {**attack.params(), "steps": 4}
    grid = SpatialGrid(_threat(), rotations=5, translations=3)
    assert grid.with_params(loss="ce").params() == {**grid.params(), "loss": "ce"}


def test_bad_options_name_the_parameter() -> None:
    from robustops import SpecError

    with pytest.raises(SpecError, match="rotations"):
        SpatialGrid(_threat(), rotations=0)
    with pytest.raises(SpecError, match="step_size"):
        SpatialPGD(_threat(), step_size=-1.0)
    with pytest.raises(SpecError, match=r"threat\.norm"):
        SpatialGrid(ThreatModel(name="l", norm="linf", epsilon=0.1))


def test_spatial_pgd_gives_a_sample_the_same_result_in_any_batch(data: Data) -> None:
    net, x, y = data
    threat = ThreatModel(name="s", norm="spatial", epsilon=30, translation=3)
    attack = build_attack("spatial-pgd", threat, steps=3, restarts=2)
    whole = attack(net, x[:24], y[:24])
    part = attack(net, x[8:24:2], y[8:24:2])
    assert torch.equal(part.details, whole.details[8:24:2])
    assert torch.equal(part.adversarial, whole.adversarial[8:24:2])
