"""Adversarial training on the embedded MNIST subset: a quick check in the default run, the
shipped PGD-AT recipe against the full evaluation suite in the slow run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustops.attacks import build_attack
from robustops.config import PipelineSpec, load_spec
from robustops.data import Dataset
from robustops.evaluation import SuiteThreat, run_suite
from robustops.models import small_cnn
from robustops.runner import evaluate_spec, train_spec
from robustops.threats import ThreatModel
from robustops.training import Recipe, fit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_pgdat_quick_version_is_robust(mnist: Dataset) -> None:
    """1000 images, 3 epochs, ε = 0.2: PGD-AT already resists what breaks standard training."""
    pick = torch.randperm(mnist.x_train.shape[0], generator=torch.Generator().manual_seed(0))[:1000]
    x, y = mnist.x_train[pick], mnist.y_train[pick]  # the split is ordered by class
    threat = ThreatModel(name="linf-0.2", norm="linf", epsilon=0.2)
    suite = [
        SuiteThreat(threat, [build_attack("fgsm", threat), build_attack("pgd", threat, steps=10)])
    ]
    robust = {}
    for name in ("standard", "pgd-at"):
        rec = Recipe.model_validate(
            {
                "epochs": 3,
                "batch_size": 32,
                "lr": 2e-3,
                "objective": {"name": name, **({"steps": 5} if name == "pgd-at" else {})},
                "threats": [{"kind": "linf", "epsilon": 0.2}],
                "curriculum": {"kind": "linear", "ramp_epochs": 1},
            }
        )
        model = small_cnn(width=16, hidden=64, seed=0)
        fit(model, x, y, rec, seed=0)
        res = run_suite(model, mnist.x_test[:200], mnist.y_test[:200], suite)
        assert res.clean_accuracy > 0.6, (name, res.clean_accuracy)
        robust[name] = res.threats[0].robust_accuracy
    assert robust["pgd-at"] >= robust["standard"] + 0.25, robust


def _in(tmp_path: Path, name: str) -> PipelineSpec:
    spec = load_spec(CONFIGS / f"{name}.yaml")
    assert spec.train is not None
    out = tmp_path / f"{name}.safetensors"
    train = spec.train.model_copy(update={"out": out, "checkpoint_dir": None, "metrics": None})
    model = spec.model.model_copy(update={"weights": out})
    return spec.model_copy(update={"device": "cpu", "train": train, "model": model})


@pytest.mark.slow
def test_pgdat_recipe_beats_standard_by_40_points(tmp_path: Path) -> None:
    """The shipped recipes, the shipped suite (L∞ ε=0.3: fgsm, pgd, apgd-ce, apgd-dlr, square)."""
    torch.set_num_threads(1)
    robust = {}
    for name in ("mnist_standard", "mnist_pgdat"):
        spec = _in(tmp_path, name)
        train_spec(spec)
        result = evaluate_spec(spec)
        (threat,) = result.threats
        assert [a.name for a in threat.attacks] == ["fgsm", "pgd", "apgd-ce", "apgd-dlr", "square"]
        robust[name] = threat.robust_accuracy
    assert robust["mnist_pgdat"] >= robust["mnist_standard"] + 0.40, robust


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("mnist_*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.train is not None and spec.evaluation is not None
    assert spec.model.weights == spec.train.out
