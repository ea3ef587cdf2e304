"""Expectation over Transformation (Athalye et al. 2018) in the gradient attacks: averaging the
gradient of a stochastic model over passes makes PGD stronger against it, every pass is paid
for in queries, and ``eot_samples=1`` is the plain attack, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from model_helpers import NoisyInput
from robustops import SpecError, ThreatModel
from robustops.attacks import PGD, build_attack, project
from robustops.attacks.eot import LOSSES, loss_and_grad
from robustops.attacks.losses import ce_loss
from robustops.models import SmallCNN, mlp

Batch = tuple[Tensor, Tensor]
GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")


@pytest.fixture(scope="module")
def batch(correct_batch: Batch) -> Batch:
    x, y = correct_batch
    return x[:64], y[:64]


def _expected_success(model: nn.Module, adv: Tensor, y: Tensor, passes: int = 32) -> Tensor:
    """``(N,)`` bool: the class of highest mean probability over ``passes`` passes is wrong."""
    with torch.no_grad():
        probs = sum(torch.softmax(model(adv), dim=1) for _ in range(passes))
    assert isinstance(probs, Tensor)
    return probs.argmax(dim=1) != y


def test_eot_beats_single_sample_pgd_on_a_noisy_model(trained_cnn: SmallCNN, batch: Batch) -> None:
    x, y = batch
    noisy = NoisyInput(trained_cnn, sigma=0.5).eval()
    threat = ThreatModel(name="linf-0.1", epsilon=0.1)
    rates = {}
    with torch.random.fork_rng(devices=[]):
        for eot in (1, 8):
            torch.manual_seed(1)
            res = PGD(threat, steps=10, eot_samples=eot)(noisy, x, y)
            torch.manual_seed(2)  # same noise for judging both
            rates[eot] = float(_expected_success(noisy, res.adversarial, y).float().mean())
            assert bool((res.queries % eot == 0).all())
    # With one pass, early stop trusts lucky noise and the step follows a noisy gradient.
    assert rates[8] > rates[1], rates


def test_averaged_gradient_is_closer_to_the_expected_one(
    trained_cnn: SmallCNN, batch: Batch
) -> None:
    x, y = batch[0][:32], batch[1][:32]
    noisy = NoisyInput(trained_cnn, sigma=0.5).eval()
    for p in noisy.parameters():
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, _, reference = loss_and_grad(noisy, x, y, None, ce_loss, 64)
            cos = {}
            for samples in (1, 8):
                _, _, grad = loss_and_grad(noisy, x, y, None, ce_loss, samples)
                cos[samples] = float(
                    nn.functional.cosine_similarity(grad.flatten(1), reference.flatten(1)).mean()
                )
    finally:
        for p in noisy.parameters():
            p.requires_grad_(True)
    assert cos[8] > cos[1] + 0.05, cos


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_queries_count_every_pass(name: str, batch: Batch, trained_cnn: SmallCNN) -> None:
    x, y = batch[0][:16], batch[1][:16]
    threat = ThreatModel(name="linf-0.02", epsilon=0.02)  # too small to fool many: full budgets
    extra = {} if name == "fgsm" else {"steps": 4}
    if name == "pgd":
        extra["early_stop"] = False
    plain = build_attack(name, threat, **extra)(trained_cnn, x, y)
    eot = build_attack(name, threat, eot_samples=3, **extra)(trained_cnn, x, y)
    # PGD without early stop also judges its last iterate (one more pass).
    full = {"fgsm": 1, "pgd": 5}.get(name, 4)
    assert bool((plain.queries <= full).all()) and bool((eot.queries <= 3 * full).all())
    assert torch.equal(eot.queries % 3, torch.zeros_like(eot.queries))
    assert bool((eot.queries[~eot.success] == 3 * full).all())
    if name in ("fgsm", "pgd"):  # no early stop: every sample pays everything
        assert bool((plain.queries == full).all()) and bool((eot.queries == 3 * full).all())


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eot_on_a_deterministic_model_only_costs_more(name: str, norm: str) -> None:
    """Two identical passes average to the single pass exactly ((g + g) / 2 == g in floating
    point), so on a deterministic model eot_samples=2 finds the same points at twice the cost."""
    model = mlp(input_dim=36, hidden=(16,), num_classes=10, seed=3).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((12, 1, 6, 6), generator=gen)
    y = torch.randint(0, 10, (12,), generator=gen)
    threat = ThreatModel(name="t", norm=norm, epsilon=0.5 if norm == "l2" else 0.05)  # type: ignore[arg-type]
    extra = {} if name == "fgsm" else {"steps": 6}
    one = build_attack(name, threat, seed=4, **extra)(model, x, y)
    two = build_attack(name, threat, seed=4, eot_samples=2, **extra)(model, x, y)
    assert torch.equal(one.adversarial, two.adversarial)
    assert torch.equal(one.success, two.success)
    assert torch.equal(two.queries, 2 * one.queries)


def _madry_pgd(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, steps: int) -> Tensor:
    """PGD written out from the paper (no random start, no early stop), answering with its best
    iterate (an adversarial one first, then the highest loss; the last one judged too)."""
    alpha = 2.5 * threat.epsilon / steps
    adv = x.clone()
    best, best_loss = x.clone(), torch.full((x.shape[0],), -torch.inf)
    best_hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for step in range(steps + 1):
        z = adv.detach().requires_grad_(True)
        logits = model(z)
        loss = ce_loss(logits, y)
        hit = logits.argmax(1) != y
        better = (hit & ~best_hit) | ((hit == best_hit) & (loss > best_loss))
        best[better], best_loss[better] = adv[better], loss.detach()[better]
        best_hit |= hit
        if step == steps:
            return best
        (grad,) = torch.autograd.grad(loss.sum(), z)
        adv = project(adv + alpha * grad.sign(), x, threat)
    raise AssertionError("unreachable")


def test_eot_samples_one_is_the_plain_attack(trained_cnn: SmallCNN, batch: Batch) -> None:
    x, y = batch[0][:32], batch[1][:32]
    threat = ThreatModel(name="linf-0.08", epsilon=0.08)
    res = PGD(threat, steps=5, random_start=False, early_stop=False, eot_samples=1)(
        trained_cnn, x, y
    )
    assert torch.equal(res.adversarial, _madry_pgd(trained_cnn, x, y, threat, 5))
    assert bool((res.queries == 5 + 1).all())  # every step, and the last iterate judged
    # the gradient helper's single pass is the plain forward+backward pass
    z = x.clone().requires_grad_(True)
    logits = trained_cnn(z)
    (grad,) = torch.autograd.grad(LOSSES["ce"](logits, y, None).sum(), z)
    got_logits, _, got_grad = loss_and_grad(trained_cnn, x, y, None, LOSSES["ce"])
    assert torch.equal(got_grad, grad) and torch.equal(got_logits, logits.detach())
    # the default is 1
    default = PGD(threat, steps=5, random_start=False, early_stop=False)(trained_cnn, x, y)
    assert torch.equal(default.adversarial, res.adversarial)


@pytest.mark.parametrize("name", GRADIENT_ATTACKS)
def test_params_report_and_validate_eot_samples(name: str) -> None:
    threat = ThreatModel(name="t", epsilon=0.1)
    assert build_attack(name, threat).params()["eot_samples"] == 1
    attack = build_attack(name, threat, eot_samples=4)
    assert attack.params()["eot_samples"] == 4 and "eot_samples=4" in repr(attack)
    for bad in (0, -2, 1.5, True, "8"):
        with pytest.raises(SpecError) as info:
            build_attack(name, threat, eot_samples=bad)
        assert info.value.errors[0][0] == "eot_samples", info.value.errors
