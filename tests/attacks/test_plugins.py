"""A third-party attack installed as a package with a ``robustops.attacks`` entry point is found
by name and runs in the suite with no change to RobustOps (a real distribution on ``sys.path``:
its ``*.dist-info`` metadata is what ``pip install`` would write)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robustops.attacks import available_attacks, build_attack, registry
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import mlp
from robustops.threats import ThreatModel

PLUGIN = '''
import torch
from robustops.attacks import Attack


class Flip(Attack):
    """Pushes every pixel to the far side of the L-inf ball (one query)."""

    name = "flip-plugin"
    knowledge = "decision-based"
    norms = ("linf",)

    def _run(self, model, x, y, targets, gen):
        up = x < (self.threat.bounds[0] + self.threat.bounds[1]) / 2
        adv = torch.where(up, x + self.threat.epsilon, x - self.threat.epsilon)
        return adv, torch.ones(len(x), dtype=torch.int64)
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flip_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "flip_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flip-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[robustops.attacks]\nflip-plugin = flip_plugin:Flip\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # A fresh look at the entry points, in a copy of the registry (restored after the test).
    monkeypatch.setattr(registry.ATTACKS, "_classes", dict(registry.ATTACKS._classes))
    monkeypatch.setattr(registry.ATTACKS, "_plugins_loaded", False)
    monkeypatch.delitem(sys.modules, "flip_plugin", raising=False)


@pytest.mark.usefixtures("installed_plugin")
def test_an_installed_plugin_runs_in_the_suite() -> None:
    assert "flip-plugin" in available_attacks()
    threat = ThreatModel(name="linf-0.3", epsilon=0.3, knowledge="decision-based")
    attack = build_attack("flip-plugin", threat, seed=1)
    assert attack.params() == {"seed": 1}
    model = mlp(input_dim=36, hidden=(16,), num_classes=10, seed=1).eval()
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    res = run_suite(model, x, y, [SuiteThreat(threat, [attack])], SuiteOptions(latency_calls=0))
    t = res.threat("linf-0.3")
    assert t.attacks[0].name == "flip-plugin" and t.attacks[0].n_attacked == 32
    assert t.attacks[0].n_broken > 0 and t.attacks[0].mean_queries == 1.0
