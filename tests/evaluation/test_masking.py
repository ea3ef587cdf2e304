"""The gradient-masking audit: an honest CNN passes; a saturated softmax, a non-differentiable
front and a stochastic model are caught by the right checks; results are deterministic and
round-trip through JSON."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from model_helpers import NoisyInput
from robustops import SpecError, ThreatModel
from robustops.data import Dataset
from robustops.evaluation.masking import AuditResult, audit_gradient_masking
from robustops.models import SmallCNN, mlp

Batch = tuple[Tensor, Tensor]
N = 48
LINF = ThreatModel(name="linf-0.1", epsilon=0.1)
L2 = ThreatModel(name="l2-1.0", norm="l2", epsilon=1.0)
CHECKS = [
    "iterative_beats_single_step",
    "white_box_beats_black_box",
    "monotone_in_epsilon",
    "noise_never_beats_gradient",
    "gradient_health",
    "stochastic_model",
    "more_iterations_change_little",
]


class ScaledLogits(nn.Module):
    """``model(x) * scale``: same decisions, but the softmax saturates and float32 CE gradients
    underflow to exactly zero (a classic accidental masking)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x) * self.scale
        return out


class Quantized(nn.Module):
    """``model(round(4x) / 4)``: a non-differentiable front whose gradient is zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(torch.round(x * 4) / 4)
        return out


@pytest.fixture(scope="module")
def audited(trained_cnn: SmallCNN, mnist: Dataset) -> Callable[[str, ThreatModel], AuditResult]:
    """``audited(kind, threat)``: the audit of the CNN variant ``kind`` on the first ``N`` test
    images, computed once per module (the honest model misclassifies a few: they are dropped)."""
    cache: dict[tuple[str, str], AuditResult] = {}
    variants: dict[str, nn.Module] = {
        "honest": trained_cnn,
        "scaled": ScaledLogits(trained_cnn, 1e4),
        "quantized": Quantized(trained_cnn),
    }

    def get(kind: str, threat: ThreatModel) -> AuditResult:
        key = (kind, threat.name)
        if key not in cache:
            x, y = mnist.x_test[:N], mnist.y_test[:N]
            # Reduced budgets so the file stays fast; the thresholds are the audit's own.
            cache[key] = audit_gradient_masking(
                variants[kind], x, y, threat, steps=10, square_queries=200, noise_draws=50
            )
        return cache[key]

    return get


def _show(result: AuditResult) -> str:
    return "\n".join(
        [result.summary, *(f"[{c.status}] {c.name}: {c.reason}" for c in result.checks)]
    )


@pytest.mark.parametrize("threat", [LINF, L2], ids=["linf-0.1", "l2-1.0"])
def test_honest_cnn_passes(
    audited: Callable[[str, ThreatModel], AuditResult], threat: ThreatModel
) -> None:
    result = audited("honest", threat)
    assert result.verdict == "pass", _show(result)
    assert [c.name for c in result.checks] == CHECKS
    assert not result.stochastic and result.eot_samples == 1
    assert result.n_inputs == N and 0.85 * N <= result.n_samples < N
    sweep = result.check("monotone_in_epsilon").figures
    assert sweep["success_unbounded"] == 1.0
    assert sweep["success_x0.25"] <= sweep["success_x1"] <= sweep["success_x4"]
    assert result.check("gradient_health").figures["dead_share"] == 0.0
    assert result.summary.startswith("pass:")


def test_saturated_softmax_fails_on_its_gradients(
    audited: Callable[[str, ThreatModel], AuditResult],
) -> None:
    result = audited("scaled", LINF)
    n = result.n_samples
    assert result.verdict == "fail", _show(result)
    assert {"gradient_health", "monotone_in_epsilon"} <= set(result.failed()), _show(result)
    health = result.check("gradient_health")
    # CE gradients vanish, the scale-free margin loss's do not: that is saturation, not flatness
    assert health.figures["ce_dead_share"] == 1.0 and health.figures["margin_dead_share"] == 0.0
    assert f"{n}/{n} samples (100.0%)" in health.reason and "saturates" in health.reason
    sweep = result.check("monotone_in_epsilon")
    assert sweep.figures["success_unbounded"] < 0.95
    assert f"{100 * sweep.figures['success_unbounded']:.1f}%" in sweep.reason
    # the decisions are the honest model's: the scale-free APGD-DLR still breaks as many samples
    honest = audited("honest", LINF)
    white = result.check("noise_never_beats_gradient").figures["white_box_success"]
    assert white >= honest.check("noise_never_beats_gradient").figures["white_box_success"] - 0.05
    assert result.check("stochastic_model").status == "pass"
    assert "gradient_health" in result.summary and "fail:" in result.summary


@pytest.mark.parametrize("threat", [LINF, L2], ids=["linf-0.1", "l2-1.0"])
def test_non_differentiable_front_fails(
    audited: Callable[[str, ThreatModel], AuditResult], threat: ThreatModel
) -> None:
    result = audited("quantized", threat)
    n = result.n_samples
    assert result.verdict == "fail", _show(result)
    assert {"gradient_health", "monotone_in_epsilon"} <= set(result.failed()), _show(result)
    health = result.check("gradient_health")
    assert health.figures["ce_dead_share"] == 1.0 and health.figures["margin_dead_share"] == 1.0
    assert f"{n}/{n} samples (100.0%)" in health.reason and "non-differentiable" in health.reason
    # PGD is stuck at its random start; the black-box attacks are not
    assert result.check("monotone_in_epsilon").figures["success_unbounded"] < 0.95
    assert result.check("iterative_beats_single_step").figures["pgd_success"] <= 0.05
    black = result.check("white_box_beats_black_box")
    if threat.norm == "l2":
        assert black.status in ("warn", "fail") and black.figures["square_only"] > 0


def test_stochastic_model_gets_eot_and_is_deterministic(
    trained_cnn: SmallCNN, correct_batch: Batch
) -> None:
    noisy = NoisyInput(trained_cnn, sigma=0.3).eval()
    x, y = correct_batch[0][:24], correct_batch[1][:24]

    def audit() -> AuditResult:
        return audit_gradient_masking(
            noisy, x, y, LINF, steps=5, square_queries=100, noise_draws=20, eot_samples=4, seed=3
        )

    rng = torch.get_rng_state()
    first = audit()
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator is left alone
    assert first.stochastic and first.eot_samples == 4
    check = first.check("stochastic_model")
    assert check.status == "warn" and "EOT over 4 passes" in check.reason
    assert check.figures["max_logit_difference"] > 0 and check.figures["eot_samples"] == 4
    assert first.verdict in ("warn", "fail") and first.summary.startswith(first.verdict)
    assert [c.name for c in first.checks] == CHECKS
    # with EOT the unbounded attack still breaks everything (no spurious masking verdict)
    assert first.check("monotone_in_epsilon").figures["success_unbounded"] >= 0.95, _show(first)

    again = audit()
    assert again.model_dump(exclude={"wall_time_s"}) == first.model_dump(exclude={"wall_time_s"})
    restored = AuditResult.model_validate_json(first.model_dump_json())
    assert restored == first


def test_json_round_trip(audited: Callable[[str, ThreatModel], AuditResult]) -> None:
    first = audited("scaled", LINF)
    assert AuditResult.model_validate_json(first.model_dump_json(indent=2)) == first
    schema = AuditResult.model_json_schema()
    assert {"verdict", "checks", "eot_samples", "stochastic"} <= set(schema["properties"])


# cheap contract tests on a tiny model -------------------------------------------------------


def _tiny() -> tuple[nn.Module, Tensor, Tensor]:
    model = mlp(input_dim=36, hidden=(16,), num_classes=10, seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((40, 1, 6, 6), generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct
    y[:4] = (y[:4] + 1) % 10  # but four
    return model, x, y


def _tiny_audit(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel = LINF, seed: int = 0
) -> AuditResult:
    return audit_gradient_masking(
        model, x, y, threat, steps=3, square_queries=20, noise_draws=5, batch_size=16, seed=seed
    )


def test_mode_restored_and_wrong_samples_dropped() -> None:
    model, x, y = _tiny()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    model.train()
    model.net[1].eval()  # a submodule in its own mode stays so
    result = _tiny_audit(model, x, y)
    assert model.training and seen and not any(seen)
    assert [m.training for m in model.net] == [True, False, True, True]
    assert result.n_inputs == 40 and result.n_samples == 36
    assert all(p.requires_grad for p in model.parameters())
    assert result.verdict == "pass" and len(result.checks) == len(CHECKS)


def test_same_seed_same_result() -> None:
    model, x, y = _tiny()
    a, b = _tiny_audit(model, x, y, seed=5), _tiny_audit(model, x, y, seed=5)
    assert a.model_dump(exclude={"wall_time_s"}) == b.model_dump(exclude={"wall_time_s"})
    assert a.seed == 5 and AuditResult.model_validate_json(a.model_dump_json()) == a


class Jitter(nn.Module):
    """Logits plus noise of size ``scale``: numerical jitter when tiny, a random model when not."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        return out + self.scale * torch.randn_like(out)


def test_floating_point_jitter_is_not_a_stochastic_model() -> None:
    model, x, y = _tiny()
    quiet = _tiny_audit(Jitter(model, 1e-9), x, y)
    check = quiet.check("stochastic_model")
    assert not quiet.stochastic and quiet.eot_samples == 1 and check.status == "pass"
    assert 0 < check.figures["max_logit_difference"] < 1e-6
    noisy = audit_gradient_masking(
        Jitter(model, 0.1), x, y, LINF, steps=2, square_queries=5, noise_draws=2, eot_samples=3
    )
    assert noisy.stochastic and noisy.eot_samples == 3
    assert noisy.check("stochastic_model").status == "warn"


def test_targeted_threat_and_flat_inputs() -> None:
    model, x, y = _tiny()
    targeted = ThreatModel(name="linf-0.3-t", epsilon=0.3, targeted=True, query_budget=7)
    result = _tiny_audit(model.eval(), x, y, targeted)
    assert result.threat == "linf-0.3-t" and result.n_samples == 36
    # flat (N, D) inputs: Square needs images, so its check is skipped, the rest runs
    flat = _tiny_audit(model, x.flatten(1), y)
    assert flat.check("white_box_beats_black_box").status == "skip"
    assert len(flat.checks) == len(CHECKS)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("steps", 0),
        ("square_queries", -1),
        ("noise_draws", 1.5),
        ("eot_samples", 0),
        ("batch_size", True),
    ],
)
def test_invalid_arguments_name_the_parameter(param: str, value: object) -> None:
    model, x, y = _tiny()
    with pytest.raises(SpecError) as info:
        audit_gradient_masking(model, x, y, LINF, **{param: value})  # type: ignore[arg-type]
    assert info.value.errors[0][0] == param


def test_nothing_to_audit() -> None:
    model, x, y = _tiny()
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    with pytest.raises(SpecError, match="none of the attacked ones"):
        _tiny_audit(model, x, wrong)
    with pytest.raises(SpecError, match="labels"):
        audit_gradient_masking(model, x, y[:3], LINF)
