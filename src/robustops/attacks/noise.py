"""Random noise inside the threat's ball: a baseline that gradient attacks must beat, and the
probe the gradient-masking audit uses."""

from __future__ import annotations

import torch
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial, random_start
from robustops.attacks.eot import averaged_model
from robustops.attacks.registry import register_attack
from robustops.threats import ThreatModel

__all__ = ["UniformNoise"]


@register_attack
class UniformNoise(Attack):
    """``draws`` uniform random points of the ball per sample; keeps the first adversarial one.

    L∞ draws are uniform in the cube; L2 draws are uniform in the ball. Needs labels only.
    ``eot_samples`` forward passes judge each draw on their mean logits (for stochastic models);
    every pass is a query. Each sample draws from its own generator (:meth:`Attack._randomness`).
    """

    name = "uniform_noise"
    knowledge = "decision-based"

    def __init__(
        self, threat: ThreatModel, *, draws: int = 1, eot_samples: int = 1, seed: int = 0
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("draws", draws, integer=True)
        self._check_positive("eot_samples", eot_samples, integer=True)
        if threat.query_budget is not None:
            draws = max(min(draws, threat.query_budget // eot_samples), 1)
        self.draws = draws
        self.eot_samples = eot_samples

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        model = averaged_model(model, self.eot_samples)
        rnd = self._randomness(x)
        with torch.no_grad():
            for _ in range(self.draws):
                idx = (~found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                cand = random_start(x[idx], self.threat, rnd.rows(idx))
                queries[idx] += self.eot_samples
                hit = is_adversarial(model(cand), y[idx], None if targets is None else targets[idx])
                best[idx] = cand
                found[idx[hit]] = True
        return best, queries
