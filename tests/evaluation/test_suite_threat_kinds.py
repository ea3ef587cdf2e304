"""The suite on the image threat kinds beyond norm balls: patches (with the occlusion sweep as
baseline), spatial transforms and common corruptions, each checked from the threat by the suite
(a plug-in that breaks the budget gains nothing), corruptions run independently per attack."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustops.attacks import Attack, AttackResult, build_attack, register_attack, registry
from robustops.evaluation import SuiteOptions, SuiteResult, SuiteThreat, run_suite
from robustops.threats import ThreatModel

N = 60
OPTS = SuiteOptions(latency_calls=0, n_examples=2)

PATCH = ThreatModel(name="patch-6", norm="patch", epsilon=6)
SPATIAL = ThreatModel(
    name="rot-30-3px", norm="spatial", epsilon=30, translation=3, knowledge="score-based"
)
CORRUPT = ThreatModel(name="corruption-3", norm="corruption", epsilon=3, knowledge="decision-based")
CORRUPTIONS = ("gaussian-noise", "shot-noise", "blur", "jpeg", "brightness", "contrast", "elastic")


@pytest.fixture(scope="module")
def result(correct_batch: tuple[Tensor, Tensor], trained_cnn: nn.Module) -> SuiteResult:
    x, y = correct_batch
    threats = [
        SuiteThreat(PATCH, [build_attack("occlusion", PATCH), build_attack("patch", PATCH)]),
        SuiteThreat(SPATIAL, [build_attack("spatial-grid", SPATIAL, rotations=11, translations=3)]),
        SuiteThreat(CORRUPT, [build_attack(n, CORRUPT) for n in CORRUPTIONS]),
    ]
    return run_suite(trained_cnn, x[:N], y[:N], threats, OPTS)


def test_patch_is_stronger_than_its_occlusion_baseline(result: SuiteResult) -> None:
    t = result.threat("patch-6")
    occlusion, patch = t.attacks
    assert occlusion.n_attacked == N and patch.n_attacked == N - occlusion.n_broken
    assert t.robust_accuracy < 1.0
    assert patch.n_broken > 0  # the patch breaks samples the occluders left standing
    for ex in t.examples:
        assert ex.perturbation_norm <= 6  # the side of the changed square, measured by the suite


def test_spatial_grid_breaks_the_standard_cnn(result: SuiteResult) -> None:
    t = result.threat("rot-30-3px")
    assert t.attack_success_rate > 0.2
    assert all(0 <= ex.perturbation_norm <= 1 for ex in t.examples)  # share of the budget


def test_corruptions_run_independently(result: SuiteResult) -> None:
    t = result.threat("corruption-3")
    assert [a.name for a in t.attacks] == list(CORRUPTIONS)
    assert all(a.n_attacked == t.n_attacked == N for a in t.attacks)  # every one on every sample
    worst = max(a.n_broken for a in t.attacks)
    assert N - t.n_robust >= worst  # the worst case over corruptions is at least each one
    assert all(a.mean_queries == 0 for a in t.attacks)  # corruptions never look at the model


def test_the_result_round_trips(result: SuiteResult, tmp_path: Any) -> None:
    assert SuiteResult.load(result.save(tmp_path / "r.json")) == result.sealed()


class _BigSticker(Attack):
    """Claims a patch threat but paints a square larger than the budget (a plug-in lying)."""

    name = "big-sticker"
    knowledge = "decision-based"
    norms = ("patch",)

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        return adv

    def _run(self, model: Any, x: Tensor, y: Tensor, t: Any, gen: Any) -> tuple[Tensor, Tensor]:
        adv = x.clone()
        adv[:, :, 4:24, 4:24] = 1.0  # 20 x 20, far beyond 6 x 6
        return adv, torch.ones(len(x), dtype=torch.int64)


def test_a_budget_breaking_plugin_gains_nothing(
    correct_batch: tuple[Tensor, Tensor], trained_cnn: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry.ATTACKS, "_classes", dict(registry.ATTACKS._classes))
    register_attack(_BigSticker)
    x, y = correct_batch
    attack = build_attack("big-sticker", PATCH)
    raw: AttackResult = attack(trained_cnn, x[:N], y[:N])
    assert bool(raw.success.any())  # it does fool the model, outside its budget
    res = run_suite(trained_cnn, x[:N], y[:N], [SuiteThreat(PATCH, [attack])], OPTS)
    t = res.threat("patch-6")
    assert t.attacks[0].n_broken == 0 and t.robust_accuracy == 1.0


def test_the_report_shows_budgets_and_the_corruption_table(
    result: SuiteResult, tmp_path: Any
) -> None:
    from robustops.report import render_markdown

    page = render_markdown(result, tmp_path).read_text(encoding="utf-8")
    assert "6×6 patch" in page and "rotation ≤ 30°, translation ≤ 3 px" in page
    assert "## Common corruptions" in page
    table = page.split("## Common corruptions", 1)[1]
    row = next(line for line in table.splitlines() if line.startswith("| elastic |"))
    t = result.threat("corruption-3")
    elastic = next(a for a in t.attacks if a.name == "elastic")
    n = result.n_samples
    assert f"{(sum(result.samples.clean_correct) - elastic.n_broken) / n:.1%}" in row
