"""The attack contract, checked once for every registered attack (Foolbox / check_estimator style)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustops import SpecError, ThreatModel
from robustops.attacks import Attack, available_attacks, build_attack, get_attack, project
from robustops.models import mlp

# Cheap settings so the contract runs fast on a tiny model; everything else is the default.
FAST: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 5},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 3},
    "square": {"queries": 40},
    "uniform_noise": {"draws": 3},
}
SHAPE = (1, 6, 6)


def _tiny_model() -> torch.nn.Module:
    return mlp(input_dim=36, hidden=(16,), num_classes=10, seed=1).eval()


def _ball(name: str) -> Any:
    return next(norm for norm in get_attack(name).norms if norm in BALLS)


def _build(name: str, threat: ThreatModel, seed: int = 0) -> Attack:
    return build_attack(name, threat, seed=seed, **FAST.get(name, {}))


# A valid budget per family (word-edits, patch, spatial and corruption attacks have their own
# contract tests with models of their kind; the checks here on norm balls are for linf and l2).
EPSILON = {"linf": 0.1, "l2": 0.1, "word-edits": 0.2, "patch": 3, "spatial": 10, "corruption": 2}
BALLS = ("linf", "l2")


def _all_cases() -> list[tuple[str, str]]:
    return [(n, norm) for n in available_attacks() for norm in get_attack(n).norms]


def _cases() -> list[tuple[str, str]]:
    return [(n, norm) for n, norm in _all_cases() if norm in BALLS]


def _ball_attacks() -> list[str]:
    return sorted({n for n, _ in _cases()})


def test_registry_has_the_foundation_attacks() -> None:
    assert {"fgsm", "pgd", "uniform_noise"} <= set(available_attacks())


@pytest.mark.parametrize(("name", "norm"), _cases())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    eps=st.floats(min_value=1e-4, max_value=3.0, allow_subnormal=False),
    low=st.sampled_from([0.0, -1.0, 0.25]),
    width=st.sampled_from([1.0, 0.5, 2.0]),
    seed=st.integers(0, 2**16),
    targeted=st.booleans(),
)
def test_adversarials_stay_in_ball_and_bounds(
    name: str, norm: str, eps: float, low: float, width: float, seed: int, targeted: bool
) -> None:
    high = low + width
    threat = ThreatModel(name="t", norm=norm, epsilon=eps, bounds=(low, high), targeted=targeted)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    x = low + width * torch.rand((6, *SHAPE), generator=gen)
    x[0] = low  # corners of the box are the hard case for projection
    x[1] = high
    y = torch.randint(0, 10, (6,), generator=gen)
    targets = (y + 1 + torch.randint(0, 9, (6,), generator=gen)) % 10 if targeted else None
    res = _build(name, threat, seed)(_tiny_model(), x, y, targets=targets)
    delta = (res.adversarial - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps).all()), (size.max().item(), eps)
    assert float(res.adversarial.min()) >= low and float(res.adversarial.max()) <= high
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert res.success.shape == (6,) and res.success.dtype == torch.bool
    assert torch.allclose(res.perturbation, size)
    assert bool((res.queries >= 0).all())
    # success is verified by re-prediction
    with torch.no_grad():
        pred = _tiny_model()(res.adversarial).argmax(1)
    expect = pred == targets if targeted else pred != y
    assert torch.equal(res.success, expect)


@pytest.mark.parametrize("name", _ball_attacks())
def test_same_seed_same_result(name: str) -> None:
    threat = ThreatModel(name="t", norm=_ball(name), epsilon=0.2)
    x = torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    a = _build(name, threat, seed=5)(_tiny_model(), x, y)
    b = _build(name, threat, seed=5)(_tiny_model(), x, y)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.queries, b.queries)


@pytest.mark.parametrize("name", _ball_attacks())
def test_call_validation(name: str) -> None:
    threat = ThreatModel(name="t", norm=_ball(name), epsilon=0.1)
    attack = _build(name, threat)
    model = _tiny_model()
    x, y = torch.rand((2, *SHAPE)), torch.tensor([0, 1])
    with pytest.raises(SpecError, match="inputs"):
        attack(model, x + 2.0, y)
    with pytest.raises(SpecError, match="labels"):
        attack(model, x, torch.tensor([0]))
    with pytest.raises(SpecError, match="targets"):
        attack(model, x, y, targets=y)
    with pytest.raises(SpecError, match="targets"):
        _build(name, threat.model_copy(update={"targeted": True}))(model, x, y)


def test_unknown_attack_and_parameter() -> None:
    threat = ThreatModel(name="t", epsilon=0.1)
    with pytest.raises(SpecError, match="unknown attack"):
        build_attack("deepfool9000", threat)
    with pytest.raises(SpecError) as info:
        build_attack("pgd", threat, stepz=3)
    assert info.value.errors[0][0] == "stepz"
    with pytest.raises(SpecError) as info:
        build_attack("pgd", threat, steps=0)
    assert info.value.errors[0][0] == "steps"


def test_knowledge_is_enforced() -> None:
    score_only = ThreatModel(name="t", epsilon=0.1, knowledge="score-based")
    with pytest.raises(SpecError, match="white-box"):
        build_attack("pgd", score_only)
    build_attack("uniform_noise", score_only)


@settings(max_examples=60, deadline=None)
@given(
    eps=st.floats(min_value=1e-6, max_value=10.0, allow_subnormal=False),
    norm=st.sampled_from(["linf", "l2"]),
    scale=st.floats(min_value=0.0, max_value=100.0),
    seed=st.integers(0, 2**16),
)
def test_project_is_exact_in_float32(eps: float, norm: str, scale: float, seed: int) -> None:
    threat = ThreatModel(name="t", norm=norm, epsilon=eps)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((4, 3, 5, 5), generator=gen)
    x[0] = 0.0
    x[1] = 1.0
    out = project(x + scale * torch.randn(x.shape, generator=gen), x, threat)
    delta = (out - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # a point already inside is left alone
    inside = project(x, x, threat)
    assert torch.equal(inside, x)


@pytest.mark.parametrize(("name", "norm"), _all_cases())
def test_with_params_rebuilds_through_the_constructor(name: str, norm: str) -> None:
    """What the suite uses to give an attack EOT on a stochastic model: a new attack built and
    validated by the constructor from the stored parameters; the original is left alone. Every
    registered attack, whatever its modality."""
    knowledge = "score-based" if norm == "word-edits" else "white-box"
    threat = ThreatModel(name="t", norm=norm, epsilon=EPSILON[norm], knowledge=knowledge)  # type: ignore[arg-type]
    attack = _build(name, threat, seed=5)
    same = attack.with_params()
    assert type(same) is type(attack) and same is not attack
    assert same.params() == attack.params() and same.threat == attack.threat
    with pytest.raises(SpecError, match="nonsense"):
        attack.with_params(nonsense=1)
    if "eot_samples" in attack.params():
        assert attack.with_params(eot_samples=3).params()["eot_samples"] == 3
        assert attack.params()["eot_samples"] == 1
        with pytest.raises(SpecError, match="eot_samples"):
            attack.with_params(eot_samples=0)
