"""Test models shared across test folders (importable like ``spec_helpers``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NoisyInput(nn.Module):
    """A randomized "defense": ``model(x + sigma * N(0, 1))`` on every pass, in eval mode too."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x + self.sigma * torch.randn_like(x))
        return out


class Counting(nn.Module):
    """Forwards to ``model`` and counts the rows (per-sample queries) it evaluated."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        out: Tensor = self.model(x)
        return out
