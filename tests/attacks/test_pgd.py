"""PGD without early stop answers with its best iterate, not its last one."""

from __future__ import annotations

import pytest
import torch

from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.models import SmallCNN


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_early_stop_keeps_every_success_early_stop_finds(
    trained_cnn: SmallCNN, correct_batch: tuple[torch.Tensor, torch.Tensor], norm: str
) -> None:
    """Both runs follow the same per-sample trajectory (same random start); with a step as large
    as the budget the iterates jump across the boundary and back, so the last iterate used to
    lose successes that an earlier one had found."""
    x, y = correct_batch[0][:100], correct_batch[1][:100]
    eps = 0.1 if norm == "linf" else 1.0
    threat = ThreatModel(name="t", norm=norm, epsilon=eps)
    kw = {"steps": 10, "step_size": eps, "seed": 3}
    stopped = build_attack("pgd", threat, early_stop=True, **kw)(trained_cnn, x, y)
    full = build_attack("pgd", threat, early_stop=False, **kw)(trained_cnn, x, y)
    assert int(stopped.success.sum()) > 0
    assert bool((full.success | ~stopped.success).all())
    assert int(full.queries.max()) == 11  # every step, and the last iterate judged
