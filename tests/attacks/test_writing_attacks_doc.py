"""docs/writing-attacks.md: its worked example runs as written, keeps the contract and runs in
the suite next to the built-in attacks (registered into a copy of the registry)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from robustops.attacks import registry
from robustops.attacks.budget import check_budget
from robustops.evaluation import SuiteResult
from robustops.threats import ThreatModel

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-attacks.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The doc's code blocks run in one namespace, registering into a copy of the registry."""
    monkeypatch.setattr(registry.ATTACKS, "_classes", dict(registry.ATTACKS._classes))
    namespace: dict[str, Any] = {"__name__": "writing_attacks_example"}
    blocks = _python_blocks()
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # our own documentation
    namespace["printed"] = capsys.readouterr().out
    return namespace


def test_the_example_runs_in_the_suite(example: dict[str, Any]) -> None:
    result: SuiteResult = example["result"]
    t = result.threat("linf-0.3")
    assert t.attacks[0].name == "random-sign" and t.attacks[0].n_attacked == 64
    assert t.attacks[0].n_broken > 0  # a corner of a 0.3 cube fools an untrained MLP
    assert str(t.robust_accuracy) in example["printed"]
    assert example["attack"].params() == {"draws": 10, "eot_samples": 1, "seed": 0}


def test_the_example_keeps_the_contract(example: dict[str, Any]) -> None:
    attack, x, y, model = example["attack"], example["x"], example["y"], example["model"]
    res = attack(model, x, y)
    assert bool(check_budget(attack, x, res).ok.all())
    assert torch.equal(res.adversarial, attack(model, x, y).adversarial)  # seeded
    adapted = attack.with_params(eot_samples=3)
    assert adapted.params()["eot_samples"] == 3 and attack.params()["eot_samples"] == 1
    targeted = ThreatModel(
        name="t", norm="linf", epsilon=0.3, knowledge="decision-based", targeted=True
    )
    goal = (y + 1) % 10
    res = example["RandomSign"](targeted, draws=30)(model, x, y, targets=goal)
    assert bool((res.predictions[res.success] == goal[res.success]).all())
