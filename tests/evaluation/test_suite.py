"""The suite's numbers must be honest: strong on an undefended model, not fooled by noise, at
least as strong as the peer libraries' PGD, reproducible, and immune to a cheating attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from model_helpers import NoisyInput
from robustops import ThreatModel
from robustops.attacks import Attack, AttackResult, ModelFn, build_attack
from robustops.data import Dataset
from robustops.evaluation import SuiteOptions, SuiteResult, SuiteThreat, run_suite
from robustops.models import SmallCNN

FOUNDATION = [
    ("fgsm", {}),
    ("pgd", {"steps": 40}),
    ("apgd-ce", {"steps": 100}),
    ("apgd-dlr", {"steps": 100}),
    ("square", {"queries": 1000}),
]


# Same attacks, cheaper budgets: for tests of bookkeeping, not of strength.
LIGHT = [
    ("fgsm", {}),
    ("pgd", {"steps": 10}),
    ("apgd-ce", {"steps": 20}),
    ("apgd-dlr", {"steps": 20}),
    ("square", {"queries": 100}),
]


def _suite_threat(
    threat: ThreatModel, seed: int = 0, attacks: list[tuple[str, dict[str, int]]] = FOUNDATION
) -> SuiteThreat:
    return SuiteThreat(threat, [build_attack(n, threat, seed=seed, **p) for n, p in attacks])


def test_undefended_cnn_is_broken_at_linf_03(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    threat = ThreatModel(name="linf-0.3", norm="linf", epsilon=0.3)
    res = run_suite(trained_cnn, mnist.x_test[:300], mnist.y_test[:300], [_suite_threat(threat)])
    assert res.clean_accuracy > 0.9
    t = res.threat("linf-0.3")
    assert t.robust_accuracy < 0.05
    assert t.robust_accuracy == sum(t.robust) / 300
    assert all(
        (b is None) == r or not c
        for b, r, c in zip(t.broken_by, t.robust, res.samples.clean_correct, strict=True)
    )


def test_uniform_noise_of_the_same_budget_barely_moves_accuracy(
    trained_cnn: SmallCNN, mnist: Dataset
) -> None:
    threat = ThreatModel(name="noise", norm="linf", epsilon=0.3)
    noise = SuiteThreat(threat, [build_attack("uniform_noise", threat, draws=1)])
    res = run_suite(trained_cnn, mnist.x_test[:500], mnist.y_test[:500], [noise])
    assert res.clean_accuracy - res.threat("noise").robust_accuracy < 0.03


def _torchattacks_pgd_robust(
    model: SmallCNN, x: Tensor, y: Tensor, eps: float, steps: int = 40
) -> float:
    torchattacks = pytest.importorskip("torchattacks")
    atk = torchattacks.PGD(model, eps=eps, alpha=eps / 10, steps=steps, random_start=True)
    torch.manual_seed(0)
    adv = atk(x, y)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def _art_pgd_robust(model: SmallCNN, x: Tensor, y: Tensor, eps: float, steps: int = 40) -> float:
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    atk = ProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=eps / 10,
        max_iter=steps,
        num_random_init=1,
        batch_size=256,
        verbose=False,
    )
    np.random.seed(0)
    adv = atk.generate(x.numpy(), y=y.numpy())
    pred = clf.predict(adv).argmax(1)
    return float((pred == y.numpy()).mean())


@pytest.mark.slow
def test_suite_is_at_least_as_strong_as_peer_pgd(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    eps = 0.1  # a budget where the undefended CNN keeps a measurable robust accuracy
    x, y = mnist.x_test[:300], mnist.y_test[:300]
    # The gradient attacks of the suite (Square, score-based, adds little against a white-box
    # peer and costs most of the time here).
    gradient = [a for a in FOUNDATION if a[0] != "square"]
    ours = run_suite(
        trained_cnn, x, y, [_suite_threat(ThreatModel(name="t", epsilon=eps), 0, gradient)]
    )
    ours_acc = ours.threat("t").robust_accuracy
    ta_acc = _torchattacks_pgd_robust(trained_cnn, x, y, eps)
    art_acc = _art_pgd_robust(trained_cnn, x, y, eps)
    assert ta_acc > 0.0  # the comparison is not vacuous
    assert ours_acc <= ta_acc, (ours_acc, ta_acc)
    assert ours_acc <= art_acc + 0.005, (ours_acc, art_acc)


def test_suite_is_at_least_as_strong_as_peer_pgd_quick(
    trained_cnn: SmallCNN, mnist: Dataset
) -> None:
    """The headline claim in the default run: on 80 samples, the suite's light attacks leave no
    more robust samples than torchattacks' and ART's PGD-20 (a weakened attack fails CI)."""
    eps = 0.1
    x, y = mnist.x_test[300:380], mnist.y_test[300:380]
    light = [("fgsm", {}), ("pgd", {"steps": 20}), ("apgd-ce", {"steps": 20})]
    ours = run_suite(
        trained_cnn,
        x,
        y,
        [_suite_threat(ThreatModel(name="t", epsilon=eps), 0, light)],
        SuiteOptions(latency_calls=0, calibration=False),
    ).threat("t")
    ta_acc = _torchattacks_pgd_robust(trained_cnn, x, y, eps, steps=20)
    art_acc = _art_pgd_robust(trained_cnn, x, y, eps, steps=20)
    assert ta_acc > 0.0  # the comparison is not vacuous
    assert ours.robust_accuracy <= min(ta_acc, art_acc), (ours.robust_accuracy, ta_acc, art_acc)


@pytest.mark.slow
def test_same_seed_same_result(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    x, y = mnist.x_test[:60], mnist.y_test[:60]

    def run(seed: int) -> SuiteResult:
        threats = [
            _suite_threat(ThreatModel(name="linf", epsilon=0.1), seed, LIGHT),
            _suite_threat(ThreatModel(name="l2", norm="l2", epsilon=1.0), seed, LIGHT),
            _suite_threat(ThreatModel(name="tgt", epsilon=0.2, targeted=True), seed, LIGHT),
        ]
        return run_suite(trained_cnn, x, y, threats, SuiteOptions(seed=seed, batch_size=25))

    a, b = run(3), run(3)
    for ta, tb in zip(a.threats, b.threats, strict=True):
        assert ta.robust == tb.robust and ta.queries == tb.queries and ta.broken_by == tb.broken_by
        assert ta.targets == tb.targets
    assert a.threat("tgt").targets is not None
    assert all(
        t != lab for t, lab in zip(a.threat("tgt").targets or [], a.samples.labels, strict=True)
    )


class _Liar(Attack):
    """Returns the inputs unchanged (inside the ball) but claims every sample was broken."""

    name = "liar"

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return x.clone(), torch.ones(x.shape[0], dtype=torch.int64)

    def __call__(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, *, targets: Tensor | None = None
    ) -> AttackResult:
        res = super().__call__(model, inputs, labels, targets=targets)
        return AttackResult(
            res.adversarial,
            torch.ones_like(res.success),
            res.queries,
            res.perturbation,
            res.predictions,
        )


def test_claimed_successes_are_re_predicted(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    threat = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
    res = run_suite(
        trained_cnn, mnist.x_test[:50], mnist.y_test[:50], [SuiteThreat(threat, [_Liar(threat)])]
    )
    assert res.threats[0].robust_accuracy == res.clean_accuracy
    assert res.threats[0].attacks[0].n_broken == 0


class _Cheat(Attack):
    """Claims success with points far outside the ball."""

    name = "cheat"

    def __call__(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, *, targets: Tensor | None = None
    ) -> AttackResult:
        adv = torch.zeros_like(inputs)
        n = inputs.shape[0]
        return AttackResult(
            adv,
            torch.ones(n, dtype=torch.bool),
            torch.ones(n, dtype=torch.int64),
            torch.ones(n),
            labels,
        )

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def test_out_of_ball_successes_are_not_counted(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    threat = ThreatModel(name="t", epsilon=0.01)
    res = run_suite(
        trained_cnn, mnist.x_test[:50], mnist.y_test[:50], [SuiteThreat(threat, [_Cheat(threat)])]
    )
    assert res.threat("t").robust_accuracy == res.clean_accuracy


def test_result_round_trip(tmp_path: object, trained_cnn: SmallCNN, mnist: Dataset) -> None:
    from pathlib import Path

    threat = ThreatModel(name="t", epsilon=0.1)
    res = run_suite(
        trained_cnn,
        mnist.x_test[:20],
        mnist.y_test[:20],
        [SuiteThreat(threat, [build_attack("fgsm", threat)])],
    )
    path = res.save(Path(str(tmp_path)) / "r.json")
    back = SuiteResult.load(path)
    assert back == res.sealed()  # the saved file carries its content hash
    assert back.content_sha256 is not None and res.content_sha256 is None
    assert back.environment["torch"].startswith("2.")
    assert set(SuiteResult.model_json_schema()["properties"]) >= {
        "clean_accuracy",
        "threats",
        "schema_version",
    }


def test_same_seed_same_result_quick(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    """The default-run version of the determinism check (cheap attacks, 40 samples)."""
    x, y = mnist.x_test[:40], mnist.y_test[:40]
    quick = [("fgsm", {}), ("pgd", {"steps": 5}), ("square", {"queries": 20})]

    def run() -> SuiteResult:
        threats = [
            _suite_threat(ThreatModel(name="l2", norm="l2", epsilon=1.0), 3, quick),
            _suite_threat(ThreatModel(name="tgt", epsilon=0.2, targeted=True), 3, quick),
        ]
        return run_suite(trained_cnn, x, y, threats, SuiteOptions(seed=3, batch_size=16))

    a, b = run(), run()
    for ta, tb in zip(a.threats, b.threats, strict=True):
        assert ta.robust == tb.robust and ta.queries == tb.queries and ta.targets == tb.targets


def test_calibration_clean_and_under_attack(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    from robustops.defenses import fit_temperature_on

    threat = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
    # Without early stop PGD keeps raising the loss after the label flips: confident mistakes,
    # what an attacker who wants to be believed produces.
    pgd = build_attack("pgd", threat, steps=10, early_stop=False, seed=0)
    fit = fit_temperature_on(
        trained_cnn, mnist.x_test[500:700], mnist.y_test[500:700], fit_on="mix", attack=pgd
    )
    res = run_suite(
        trained_cnn,
        mnist.x_test[:200],
        mnist.y_test[:200],
        [SuiteThreat(threat, [pgd])],
        temperature=fit,
    )
    cal = res.calibration
    assert cal is not None and cal.clean_scaled is not None and cal.temperature == fit
    assert cal.clean.n == 200 and cal.clean.accuracy == res.clean_accuracy
    t = res.threat("linf-0.1")
    assert t.calibration is not None and t.calibration.attacked_scaled is not None
    attacked = t.calibration.attacked
    # Each sample's worst-case input is the one that broke it, so accuracy on them is exactly
    # the robust accuracy of an untargeted threat.
    assert attacked.accuracy == pytest.approx(t.robust_accuracy)
    # Attacked inputs are confidently misclassified; temperature scaling fitted on a clean +
    # adversarial mix softens that without touching a prediction.
    assert attacked.ece > cal.clean.ece + 0.05
    assert attacked.nll > 2 * cal.clean.nll
    assert t.calibration.attacked_scaled.ece < attacked.ece
    assert t.calibration.attacked_scaled.accuracy == attacked.accuracy
    again = SuiteResult.model_validate_json(res.model_dump_json())
    assert again.threat("linf-0.1").calibration == t.calibration
    off = run_suite(
        trained_cnn,
        mnist.x_test[:20],
        mnist.y_test[:20],
        [_suite_threat(threat, attacks=LIGHT[:1])],
        SuiteOptions(calibration=False),
    )
    assert off.calibration is None and off.threats[0].calibration is None


def test_latency_is_measured(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    res = run_suite(
        trained_cnn, mnist.x_test[:50], mnist.y_test[:50], [], SuiteOptions(latency_calls=30)
    )
    lat = res.latency
    assert lat is not None and lat.n_calls == 30 and lat.batch_size == 500
    assert 0 < lat.p50_ms <= lat.p95_ms <= lat.p99_ms
    assert lat.throughput_per_s > 0
    none = run_suite(
        trained_cnn, mnist.x_test[:5], mnist.y_test[:5], [], SuiteOptions(latency_calls=0)
    )
    assert none.latency is None


def test_examples_show_what_changed_and_why(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    threat = ThreatModel(name="linf-0.2", norm="linf", epsilon=0.2)
    res = run_suite(
        trained_cnn,
        mnist.x_test[:60],
        mnist.y_test[:60],
        [_suite_threat(threat, attacks=LIGHT[:2])],
        SuiteOptions(n_examples=3),
    )
    t = res.threats[0]
    assert len(t.examples) == 3
    for ex in t.examples:
        assert t.broken_by[ex.index] == ex.attack and not t.robust[ex.index]
        assert ex.label == res.samples.labels[ex.index] == ex.clean_prediction
        assert ex.adversarial_prediction != ex.label
        assert ex.shape == [1, 28, 28] and len(ex.clean) == len(ex.adversarial) == 784
        clean, adv = torch.tensor(ex.clean), torch.tensor(ex.adversarial)
        assert torch.allclose(clean, mnist.x_test[ex.index].flatten(), atol=1e-5)
        assert float((adv - clean).abs().max()) <= 0.2 + 1e-4
        assert ex.perturbation_norm <= 0.2 + 1e-6
        # The attribution is zero where nothing changed, and its total (first-order margin
        # gain) is positive: the changes pushed towards the wrong class.
        attr = torch.tensor(ex.attribution)
        assert bool((attr[(adv - clean).abs() < 1e-6] == 0).all())
        assert float(attr.sum()) > 0
    none = run_suite(
        trained_cnn,
        mnist.x_test[:20],
        mnist.y_test[:20],
        [_suite_threat(threat, attacks=LIGHT[:1])],
        SuiteOptions(n_examples=0),
    )
    assert none.threats[0].examples == []


def test_stochastic_model_is_judged_on_mean_logits_and_attacked_with_eot(
    trained_cnn: SmallCNN, mnist: Dataset
) -> None:
    """Single noisy passes overstate the robustness of a randomized model: an outside attacker
    (PGD without EOT but without early stop, judged on the mean of 50 passes) beats that figure;
    the suite's adaptation (mean logits + EOT) does not leave it that room."""
    from robustops.attacks.eot import mean_logits

    noisy = NoisyInput(trained_cnn, sigma=0.3).eval()
    x, y = mnist.x_test[:100], mnist.y_test[:100]
    threat = ThreatModel(name="linf", epsilon=0.1)
    pgd = build_attack("pgd", threat, steps=10, seed=0)

    def suite(eot: int) -> SuiteResult:
        torch.manual_seed(0)
        return run_suite(
            noisy,
            x,
            y,
            [SuiteThreat(threat, [pgd])],
            SuiteOptions(eot_samples=eot, latency_calls=0, calibration=False),
        )

    naive, adapted = suite(1), suite(10)
    torch.manual_seed(0)
    adv = build_attack("pgd", threat, steps=10, seed=0, early_stop=False)(noisy, x, y).adversarial
    outside = float(
        ((mean_logits(noisy, adv, 50).argmax(1) == y) & (mean_logits(noisy, x, 50).argmax(1) == y))
        .float()
        .mean()
    )
    assert naive.threats[0].robust_accuracy >= outside + 0.08  # the problem is real
    assert adapted.threats[0].robust_accuracy <= outside + 0.02
    st = adapted.stochastic
    assert st is not None and st.detected and st.eot_samples == 10
    assert st.adapted_attacks == ["pgd"] and st.max_logit_gap > 0.1
    params = adapted.threats[0].attacks[0].params
    assert params["eot_samples"] == 10 and params["early_stop"] is False
    assert pgd.eot_samples == 1 and pgd.early_stop  # the caller's attack is left alone
    assert naive.stochastic is not None and naive.stochastic.eot_samples == 1


def test_deterministic_model_is_left_alone(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    threat = ThreatModel(name="linf", epsilon=0.1)
    res = run_suite(
        trained_cnn,
        mnist.x_test[:20],
        mnist.y_test[:20],
        [SuiteThreat(threat, [build_attack("pgd", threat, steps=3)])],
        SuiteOptions(latency_calls=0),
    )
    assert res.stochastic is not None and not res.stochastic.detected
    assert res.stochastic.eot_samples == 1 and res.stochastic.adapted_attacks == []
    assert res.threats[0].attacks[0].params["eot_samples"] == 1
