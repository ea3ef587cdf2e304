"""Patch attacks: patch_side, the budget check against forged outputs, the white-box patch
against the occlusion baseline on an MNIST CNN, targeted threats, query accounting and
reproducibility."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from model_helpers import Counting
from robustops import SpecError, ThreatModel
from robustops.attacks import AdversarialPatch, Occlusion, build_attack, patch_side
from robustops.attacks.budget import check_budget
from robustops.attacks.patch import patch_positions

Data = tuple[nn.Module, Tensor, Tensor]


def _threat(k: int = 6, **kw: Any) -> ThreatModel:
    return ThreatModel(name="p", norm="patch", epsilon=k, **kw)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def data(half_width_cnn: tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]) -> Data:
    """The MNIST CNN and 60 test digits it classifies correctly."""
    net, _, _, x, y = half_width_cnn
    return net, x[:60], y[:60]


# 1. patch_side and the budget check ------------------------------------------------------


def test_patch_side_is_the_bounding_square_of_the_changes() -> None:
    x = torch.zeros(4, 3, 10, 12)
    adv = x.clone()
    adv[1, 0, 4, 7] = 1.0  # one pixel
    adv[2, 2, 2, 3] = 0.5  # rows 2..5, columns 3..4 (different channels)
    adv[2, 1, 5, 4] = 0.5
    adv[3, :, 0, 0] = 1.0  # opposite corners
    adv[3, :, 9, 11] = 1.0
    assert patch_side(adv, x).tolist() == [0, 1, 4, 12]
    assert patch_side(adv, x).dtype == torch.int64
    assert patch_side(adv[:, 0], x[:, 0]).tolist() == [0, 1, 0, 12]  # (N, H, W): one channel


def test_check_rejects_a_change_outside_the_square() -> None:
    attack = Occlusion(_threat(4))
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    res = attack(nn.Sequential(nn.Flatten(), nn.Linear(144, 10)).eval(), x, torch.zeros(3).long())
    assert check_budget(attack, x, res).ok.all()
    forged = x.clone()
    forged[:, :, 2:6, 2:6] = 1.0  # a legal 4 × 4 square ...
    forged[1, 0, 10, 10] = 1.0 - x[1, 0, 10, 10]  # ... and one stray pixel
    forged[2, 0, 2:7, 2] = 0.0  # a 5-row square
    fake = type(res)(
        adversarial=forged,
        success=res.success,
        queries=res.queries,
        perturbation=res.perturbation,
        predictions=res.predictions,
        details=res.details,
    )
    check = check_budget(attack, x, fake)
    assert check.ok.tolist() == [True, False, False]
    assert check.size.tolist() == [4.0, 9.0, 5.0]


def test_positions_cover_both_edges() -> None:
    assert patch_positions(10, 4, 3) == [0, 3, 6]
    assert patch_positions(11, 4, 3) == [0, 3, 6, 7]
    assert patch_positions(4, 6, 2) == [0]


# 2. the attacks on an MNIST CNN ----------------------------------------------------------


def _inside_details(adv: Tensor, x: Tensor, corners: Tensor, k: int) -> Tensor:
    """Every changed pixel lies in the k × k square at each sample's reported corner."""
    changed = (adv != x).any(dim=1)
    rows = torch.arange(x.shape[-2])[None, :, None]
    cols = torch.arange(x.shape[-1])[None, None, :]
    r, c = corners[:, 0, None, None], corners[:, 1, None, None]
    inside = (rows >= r) & (rows < r + k) & (cols >= c) & (cols < c + k)
    return ~(changed & ~inside).flatten(1).any(dim=1)


@pytest.mark.parametrize("k", [4, 6])
def test_patch_beats_occlusion(data: Data, k: int) -> None:
    net, x, y = data
    threat = _threat(k)
    patch, occlusion = AdversarialPatch(threat), Occlusion(threat)
    res_p, res_o = patch(net, x, y), occlusion(net, x, y)
    for attack, res in ((patch, res_p), (occlusion, res_o)):
        check = check_budget(attack, x, res)
        assert check.ok.all()
        assert torch.equal(res.perturbation, check.size)
        assert res.details.shape == (60, 2) and res.details.dtype == torch.int64
    assert res_p.success.float().mean() >= res_o.success.float().mean()
    assert res_p.success.float().mean().item() >= (0.4 if k == 4 else 0.6)
    assert bool(_inside_details(res_p.adversarial, x, res_p.details, k).all())
    hit = res_o.success
    assert bool(_inside_details(res_o.adversarial[hit], x[hit], res_o.details[hit], k).all())
    # occlusion returns the robust images unchanged, without a place
    assert torch.equal(res_o.adversarial[~hit], x[~hit])
    assert bool((res_o.details[~hit] == -1).all())


@pytest.mark.parametrize("name", ["patch", "occlusion"])
def test_queries_are_what_the_model_saw(data: Data, name: str) -> None:
    net, x, y = data
    x, y = x[:20], y[:20]
    model = Counting(net)
    attack = build_attack(name, _threat(6), **({"locations": 4} if name == "patch" else {}))
    res = attack(model, x, y)
    assert model.rows == int(res.queries.sum()) + x.shape[0]
    if name == "patch":
        assert int(res.queries.max()) <= 1 + 4 * (5 + 1)


def test_occlusion_honours_the_query_budget(data: Data) -> None:
    net, x, y = data
    res = Occlusion(_threat(4, query_budget=7))(net, x[:20], y[:20])
    assert int(res.queries.max()) <= 7


@pytest.mark.parametrize("name", ["patch", "occlusion"])
def test_targeted_threats_reach_the_target(data: Data, name: str) -> None:
    net, x, y = data
    x, y = x[:20], y[:20]
    targets = (y + 1) % 10
    attack = build_attack(name, _threat(8, targeted=True))
    res = attack(net, x, y, targets=targets)
    assert check_budget(attack, x, res).ok.all()
    assert res.success.any()
    assert torch.equal(res.predictions[res.success], targets[res.success])


def test_patch_respects_other_bounds() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 10)).eval()
    x = -1 + 2 * torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for attack in (
        AdversarialPatch(_threat(3, bounds=(-1.0, 1.0))),
        Occlusion(_threat(3, bounds=(-1.0, 1.0))),
    ):
        res = attack(net, x, torch.zeros(4, dtype=torch.int64))
        assert check_budget(attack, x, res).ok.all()


def test_reproducible_under_a_seed_and_params_round_trip(data: Data) -> None:
    net, x, y = data
    x, y = x[:10], y[:10]
    attack = AdversarialPatch(_threat(4), locations=3, steps=2, seed=3)
    a, b = attack(net, x, y), attack(net, x, y)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.details, b.details)
    assert attack.with_params().params() == attack.params()
    assert attack.with_params(stride=1).params() == {**attack.params(), "stride": 1}
    occlusion = Occlusion(_threat(4), stride=3)
    assert occlusion.with_params().params() == {"stride": 3, "seed": 0}


def test_bad_options_name_the_parameter() -> None:
    with pytest.raises(SpecError, match="locations"):
        AdversarialPatch(_threat(), locations=0)
    with pytest.raises(SpecError, match="stride"):
        Occlusion(_threat(), stride=0)
    with pytest.raises(SpecError, match="knowledge"):
        AdversarialPatch(_threat(knowledge="decision-based"))


def test_a_sample_gets_the_same_patch_in_any_batch(data: Data) -> None:
    """Per-sample randomness: what the suite finds for a sample does not depend on which other
    samples an earlier attack left in its batch (the worst case never loses to one attack run
    alone) or on how the samples are sharded."""
    net, x, y = data
    attack = build_attack("patch", _threat(4), locations=4, steps=3)
    whole = attack(net, x[:24], y[:24])
    part = attack(net, x[8:24:2], y[8:24:2])
    assert torch.equal(part.adversarial, whole.adversarial[8:24:2])
    assert torch.equal(part.queries, whole.queries[8:24:2])
