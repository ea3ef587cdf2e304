"""Common corruptions: the functions against their references (scipy, matplotlib's HSV),
determinism and batch independence, severities ordered as the benchmarks intend, the budget
check against forged outputs, and the corruption attacks on MNIST and colour images."""

from __future__ import annotations

import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from scipy.ndimage import gaussian_filter
from torch import Tensor, nn

from robustops import SpecError, ThreatModel
from robustops.attacks import CorruptionAttack, build_attack, corrupt, get_attack
from robustops.attacks.budget import check_budget
from robustops.attacks.corruptions import (
    CORRUPTIONS,
    _displacement,
    _elastic_scales,
    corruption_within_budget,
)

ATTACKS = {
    "gaussian-noise": "gaussian_noise",
    "shot-noise": "shot_noise",
    "blur": "gaussian_blur",
    "jpeg": "jpeg_compression",
    "brightness": "brightness",
    "contrast": "contrast",
    "elastic": "elastic_transform",
}
Data = tuple[nn.Module, Tensor, Tensor]


def _threat(severity: int = 3, **kw: object) -> ThreatModel:
    return ThreatModel(name="c", norm="corruption", epsilon=severity, **kw)  # type: ignore[arg-type]


def _colour(n: int = 6, seed: int = 0) -> Tensor:
    """Smooth-ish random colour images ``(n, 3, 16, 16)`` in [0, 1]."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def data(half_width_cnn: tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]) -> Data:
    """The MNIST CNN and 100 test digits it classifies correctly."""
    net, _, _, x, y = half_width_cnn
    return net, x[:100], y[:100]


# 1. the functions ------------------------------------------------------------------------


def test_registry_and_attacks_agree() -> None:
    assert set(ATTACKS.values()) == set(CORRUPTIONS)
    for name, corruption in ATTACKS.items():
        cls = get_attack(name)
        assert issubclass(cls, CorruptionAttack) and cls.corruption == corruption
        assert cls.knowledge == "decision-based" and cls.norms == ("corruption",)


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_matches_scipy(channels: int) -> None:
    x = _colour(2)[:, :channels].double()
    sigma = {1: 2.0, 3: 0.7}[channels]  # severity 2 (MNIST-C) / 3 (CIFAR-10-C)
    out = corrupt("gaussian_blur", x, {1: 2, 3: 3}[channels])
    ref = torch.from_numpy(
        gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
    )
    assert torch.allclose(out, ref, atol=1e-10)


def test_brightness_is_the_hsv_value_shift() -> None:
    x = _colour(3).double()
    x[0, :, :2, :2] = 0.0  # black pixels become grey
    out = corrupt("brightness", x, 4)  # CIFAR-10-C: V + 0.2
    hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = (hsv[..., 2] + 0.2).clip(0, 1)
    ref = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
    assert torch.allclose(out, ref, atol=1e-9)
    grey = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(corrupt("brightness", grey, 2), (grey + 0.2).clamp(max=1))


def test_contrast_and_jpeg_values() -> None:
    x = _colour(2)
    out = corrupt("contrast", x, 5)  # c = 0.15
    means = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, (x - means) * 0.15 + means, atol=1e-6)
    jpeg = corrupt("jpeg_compression", x, 3)
    assert torch.allclose(jpeg * 255, (jpeg * 255).round(), atol=1e-4)  # 8-bit levels
    assert not torch.equal(jpeg, x)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("channels", [1, 3])
def test_deterministic_batch_independent_and_in_bounds(name: str, channels: int) -> None:
    x = _colour(5, seed=1)[:, :channels]
    out = corrupt(name, x, 3, seed=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, corrupt(name, x, 3, seed=4))
    # a sample's corruption does not depend on its batch: alone, or in a shuffled batch
    alone = torch.cat([corrupt(name, x[i : i + 1], 3, seed=4) for i in range(5)])
    assert torch.allclose(alone, out, atol=1e-6)
    order = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(corrupt(name, x[order], 3, seed=4), out[order], atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "elastic_transform"])
def test_the_seed_changes_the_random_corruptions(name: str) -> None:
    x = _colour(2)
    assert not torch.equal(corrupt(name, x, 4, seed=0), corrupt(name, x, 4, seed=1))


def test_other_bounds_are_mapped_to_the_unit_scale() -> None:
    x = _colour(3)
    for name in ("gaussian_blur", "contrast", "brightness", "jpeg_compression"):
        shifted = corrupt(name, 2 * x - 1, 3, bounds=(-1.0, 1.0))
        assert torch.allclose(shifted, 2 * corrupt(name, x, 3) - 1, atol=1e-5), name
    noisy = corrupt("gaussian_noise", 2 * x - 1, 5, bounds=(-1.0, 1.0))
    assert float(noisy.min()) >= -1 and float(noisy.max()) <= 1


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - {"elastic_transform"}))
def test_severity_grows_the_change(data: Data, name: str) -> None:
    _, digits, _ = data
    for images in (digits[:40], _colour(40, seed=2)):
        change = [float((corrupt(name, images, s) - images).abs().mean()) for s in range(1, 6)]
        assert change == sorted(change), (name, images.shape[1], change)
        assert change[0] < change[-1]


def test_elastic_severity_trades_affine_for_local_distortion() -> None:
    noise = torch.rand(4, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scales = [_elastic_scales(s, 32, 32) for s in range(1, 6)]
    field = [float(_displacement(noise, a, s).abs().mean()) for a, s, _ in scales]
    shift = [affine for _, _, affine in scales]
    assert field == sorted(field) and field[0] == 0 < field[-1]
    assert shift == sorted(shift, reverse=True)


def test_bad_arguments() -> None:
    x = _colour(2)
    with pytest.raises(SpecError, match="corruption"):
        corrupt("fog", x, 1)
    with pytest.raises(SpecError, match="severity"):
        corrupt("contrast", x, 6)
    with pytest.raises(ValueError, match="1 or 3"):
        corrupt("contrast", torch.rand(2, 2, 8, 8), 1)


# 2. the attacks and the budget check -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_pass_the_budget_check(data: Data, name: str) -> None:
    net, x, y = data
    attack = build_attack(name, _threat(4), seed=2)
    res = attack(net, x, y)
    check = check_budget(attack, x, res)
    assert check.ok.all()
    assert bool((res.queries == 0).all()) and bool((res.perturbation == 4).all())
    assert torch.equal(res.adversarial, corrupt(ATTACKS[name], x, 4, seed=2))
    again = attack(net, x, y)
    assert torch.equal(again.adversarial, res.adversarial)
    assert attack.with_params().params() == attack.params() == {"seed": 2}
    assert attack.with_params(seed=5).seed == 5


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_colour_images_pass_the_budget_check(name: str) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    x = 0.25 + _colour(4) / 2
    attack = build_attack(name, _threat(2, bounds=(0.25, 0.75)))
    res = attack(net, x, torch.zeros(4, dtype=torch.int64))
    assert check_budget(attack, x, res).ok.all()


def test_the_check_rejects_forged_outputs(data: Data) -> None:
    net, x, y = data
    x, y = x[:6], y[:6]
    attack = build_attack("gaussian-noise", _threat(3), seed=0)
    res = attack(net, x, y)
    forged = res.adversarial.clone()
    forged[1, 0, 5, 5] = (forged[1, 0, 5, 5] + 0.01).clamp(max=1)  # one pixel moved
    forged[2] = corrupt("gaussian_noise", x[2:3], 4)[0]  # a stronger severity
    forged[3] = corrupt("gaussian_noise", x[3:4], 3, seed=1)[0]  # another seed's noise
    assert corruption_within_budget(attack, x, forged).tolist() == [
        True,
        False,
        False,
        False,
        True,
        True,
    ]
    # another seed's attack, an attack without a known corruption, a malformed output
    other = build_attack("gaussian-noise", _threat(3), seed=1)
    assert not corruption_within_budget(other, x, res.adversarial).any()
    pgd = build_attack("pgd", ThreatModel(name="l", epsilon=0.1))
    assert not corruption_within_budget(pgd, x, res.adversarial).any()
    assert not corruption_within_budget(attack, x, res.adversarial[:, :, :5]).any()
    two_channels = torch.rand(3, 2, 8, 8)
    assert not corruption_within_budget(attack, two_channels, two_channels).any()


def test_severity_hurts_the_mnist_cnn(data: Data) -> None:
    net, x, y = data
    rates = [
        build_attack("blur", _threat(s))(net, x, y).success.float().mean().item() for s in (1, 5)
    ]
    assert rates[0] < rates[1]


def test_targeted_threats_judge_the_target(data: Data) -> None:
    net, x, y = data
    targets = (y + 1) % 10
    attack = build_attack("contrast", _threat(5, targeted=True))
    res = attack(net, x, y, targets=targets)
    assert check_budget(attack, x, res).ok.all()
    assert torch.equal(res.success, res.predictions == targets)
