"""The tabular attacks on a trained MLP: strength, sanity against unconstrained PGD, query
budgets, masking semantics, and construction from specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustops import SpecError, ThreatModel
from robustops.attacks import PGD, ModelFn, build_attack, project
from robustops.attacks.tabular import FeatureMasking, TabularNoise, TabularPGD
from robustops.config import load_spec
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import MLP
from robustops.tabular import BREAST_CANCER_SCHEMA

Batch = tuple[torch.Tensor, torch.Tensor]
ROOT = Path(__file__).resolve().parents[2]
S = BREAST_CANCER_SCHEMA


def _threat(norm: str, eps: float, **kw: object) -> ThreatModel:
    return ThreatModel(name=f"{norm}-{eps}", norm=norm, epsilon=eps, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("norm", "eps"), [("linf", 0.05), ("linf", 0.1), ("linf", 0.2), ("l2", 0.4)]
)
def test_constrained_pgd_is_real_but_never_beats_unconstrained_pgd(
    cancer_mlp: MLP, cancer_correct: Batch, norm: str, eps: float
) -> None:
    x, y = cancer_correct
    threat = _threat(norm, eps)
    con = TabularPGD(threat, schema="breast_cancer", steps=20)(cancer_mlp, x, y)
    unc = PGD(threat, steps=20)(cancer_mlp, x, y)
    assert bool(S.is_feasible(con.adversarial, x, threat).all())
    # a real share of the correctly classified rows falls to the constrained attack …
    assert float(con.success.float().mean()) >= 0.2
    # … but the schema's feasible set lies inside the ball, so on the same rows it never does
    # better than unconstrained PGD (the model is deterministic: checked per sample)
    assert int((con.success & ~unc.success).sum()) == 0
    assert float(con.success.float().mean()) < float(unc.success.float().mean())
    # and unconstrained PGD gets there with rows the submitter could not produce
    violates = ~S.is_feasible(unc.adversarial, x)
    assert float(violates[unc.success].float().mean()) >= 0.5
    assert {v.feature for v in S.validate(unc.adversarial, x, limit=200)} & {
        "mean radius",
        "worst area",
        "mean texture",
    }


def test_noise_and_masking_break_something_feasibly(cancer_mlp: MLP, cancer_correct: Batch) -> None:
    x, y = cancer_correct
    threat = _threat("linf", 0.2)
    for attack in (
        TabularNoise(threat, schema=S, draws=100),
        FeatureMasking(threat, schema=S, k=5),
    ):
        res = attack(cancer_mlp, x, y)
        assert bool(S.is_feasible(res.adversarial, x, threat).all())
        assert int(res.success.sum()) >= 3, attack.name


@pytest.mark.parametrize("budget", [1, 7, 40])
def test_query_budgets_are_respected(cancer_mlp: MLP, cancer_correct: Batch, budget: int) -> None:
    x, y = cancer_correct
    threat = _threat("linf", 0.2, knowledge="score-based", query_budget=budget)
    noise = TabularNoise(threat, schema=S, draws=500)
    assert noise.draws == budget
    for attack in (noise, FeatureMasking(threat, schema=S, k=10)):
        res = attack(cancer_mlp, x, y)
        assert int(res.queries.max()) <= budget, attack.name
        assert int(res.queries.min()) >= 1
    pgd = TabularPGD(_threat("linf", 0.2), schema=S, steps=6, restarts=3)(cancer_mlp, x, y)
    assert int(pgd.queries.max()) <= 18


def test_feature_masking_blanks_to_neutral_values(cancer_mlp: MLP, cancer_correct: Batch) -> None:
    x, y = cancer_correct
    res = FeatureMasking(_threat("linf", 1.0), schema=S, k=2)(cancer_mlp, x, y)
    neutral = S.constraints().neutral.float()
    changed = res.adversarial != x
    assert bool(changed.any())
    # with ε = 1 a blanked column lands on its neutral value (monotone columns stop at their
    # original value instead); at most k units change and never an immutable one
    moved = changed & ~S.constraints().categorical
    assert torch.allclose(res.adversarial[moved], neutral.expand_as(x)[moved])
    units = S.constraints().units()
    per_row = torch.stack([changed[:, cols].any(1) for _, cols in units], 1).sum(1)
    assert int(per_row.max()) <= 2
    assert not bool(changed[:, S.constraints().immutable].any())


def test_inputs_must_fit_the_schema(cancer_mlp: MLP, cancer_correct: Batch) -> None:
    x, y = cancer_correct
    attack = TabularPGD(_threat("linf", 0.1), schema=S, steps=2)
    bad = x[:3].clone()
    bad[1, S.index("mean texture")] = 0.5  # between grid points
    with pytest.raises(SpecError, match=r"inputs: .*row 1, 'mean texture': .*integer grid"):
        attack(cancer_mlp, bad, y[:3])
    with pytest.raises(SpecError, match=r"inputs: .*\(N, 32\)"):
        attack(cancer_mlp, x[:3, :10], y[:3])


def test_build_from_spec_params(tmp_path: Path) -> None:
    threat = _threat("l2", 0.4)
    attack = build_attack("tabular-pgd", threat, schema="breast_cancer", steps=5, loss="margin")
    assert isinstance(attack, TabularPGD) and attack.schema_ is S
    assert attack.params() == {
        "seed": 0,
        "schema": "breast_cancer",
        "steps": 5,
        "step_size": None,
        "restarts": 1,
        "random_start": True,
        "loss": "margin",
        "early_stop": True,
    }
    inline = {
        "name": "two",
        "features": [{"name": "a"}, {"name": "b", "immutable": True}],
    }
    assert build_attack("feature-masking", threat, schema=inline).params()["schema"] == "two"
    with pytest.raises(SpecError) as info:
        build_attack("tabular-noise", threat, schema="nope")
    assert info.value.errors[0][0] == "schema"
    with pytest.raises(SpecError) as info:
        build_attack("tabular-noise", threat, schema="breast_cancer", draws=0)
    assert info.value.errors[0][0] == "draws"
    with pytest.raises(SpecError, match="white-box"):
        build_attack("tabular-pgd", _threat("linf", 0.1, knowledge="score-based"))

    spec = load_spec(ROOT / "configs" / "tabular.yaml")
    names = {a.name for st in spec.build_threats() for a in st.attacks}
    assert names == {"tabular-pgd", "tabular-noise", "feature-masking", "pgd"}
    text = (ROOT / "configs" / "tabular.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        text.replace("out: ../artifacts", f"out: {ROOT}/artifacts").replace(
            "{name: tabular-pgd, schema: breast_cancer, steps: 50, restarts: 2}",
            "{name: tabular-pgd, schema: breast_cancr, steps: 50, restarts: 2}",
            1,
        )
    )
    with pytest.raises(SpecError) as info:
        load_spec(broken)
    assert info.value.errors[0][0] == "evaluation.threats.0.attacks.0.schema"


def test_suite_counts_the_tabular_attacks(cancer_mlp: MLP, cancer: object) -> None:
    from robustops.data import Dataset

    assert isinstance(cancer, Dataset)
    threat = _threat("linf", 0.1)
    result = run_suite(
        cancer_mlp,
        cancer.x_test[:40],
        cancer.y_test[:40],
        [
            SuiteThreat(
                threat,
                [
                    TabularPGD(threat, schema=S, steps=10),
                    TabularNoise(threat, schema=S, draws=20),
                    FeatureMasking(threat, schema=S, k=3),
                ],
            )
        ],
        SuiteOptions(calibration=False, latency_calls=0),
    )
    (tr,) = result.threats
    assert tr.attacks[0].n_broken >= 5
    assert tr.robust_accuracy < result.clean_accuracy
    assert tr.attacks[0].params["schema"] == "breast_cancer"


def test_the_tabular_spec_trains_and_evaluates_end_to_end(tmp_path: Path) -> None:
    """configs/tabular.yaml through the runner (fewer epochs and samples, weights in tmp)."""
    from robustops.runner import evaluate_spec, train_spec

    spec = load_spec(ROOT / "configs" / "tabular.yaml").with_tier("quick")
    weights = tmp_path / "mlp.safetensors"
    assert spec.train is not None and spec.evaluation is not None
    spec = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"weights": weights}),
            "train": spec.train.model_copy(
                update={"out": weights, "epochs": 10, "checkpoint_dir": tmp_path / "ckpt"}
            ),
            "evaluation": spec.evaluation.model_copy(update={"n_samples": 40}),
        }
    )
    meta = train_spec(spec)
    assert weights.exists() and meta["data"]["name"] == "breast_cancer"
    result = evaluate_spec(spec)
    assert result.clean_accuracy >= 0.85
    by_name = {t.name: t for t in result.threats}
    constrained = by_name["linf-0.1-schema"]
    unconstrained = by_name["linf-0.1-unconstrained"]
    assert constrained.attacks[0].name == "tabular-pgd" and constrained.attacks[0].n_broken > 0
    assert unconstrained.robust_accuracy <= constrained.robust_accuracy


class _SchemaBreaker(TabularPGD):
    """Constrained PGD whose last projection forgets the schema (only the ball and bounds)."""

    name = "schema-breaker"

    def _finalize(self, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project(adv, x, self.threat)

    def _run(
        self,
        model: ModelFn,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        gen: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # unconstrained PGD's points: in the ball, but off the schema
        pgd = build_attack("pgd", self.threat, steps=self.steps)
        res = pgd(model, x, y, targets=targets)
        return res.adversarial, res.queries


def test_suite_refuses_rows_that_break_the_schema(cancer_mlp: MLP, cancer: object) -> None:
    from robustops.data import Dataset

    assert isinstance(cancer, Dataset)
    threat = _threat("linf", 0.1)
    x, y = cancer.x_test[:40], cancer.y_test[:40]
    breaker = _SchemaBreaker(threat, schema=S, steps=10)
    res = breaker(cancer_mlp, x, y)
    assert bool(res.success.any())  # it does flip predictions ...
    assert not bool(breaker.respects(res.adversarial, x)[res.success].all())  # ... off-schema
    result = run_suite(
        cancer_mlp,
        x,
        y,
        [SuiteThreat(threat, [breaker])],
        SuiteOptions(calibration=False, latency_calls=0),
    )
    counted = result.threats[0].attacks[0].n_broken
    feasible = int((res.success & breaker.respects(res.adversarial, x)).sum())
    assert counted == feasible < int(res.success.sum())
