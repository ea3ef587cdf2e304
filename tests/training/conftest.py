"""Small, fast set-ups for the trainer tests: the 8×8 digits and a tiny MLP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from robustops.data import Dataset, load_digits
from robustops.models import MLP, mlp


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


def tiny_mlp(seed: int = 0) -> MLP:
    """A 64-32-10 MLP for the digits."""
    return mlp(input_dim=64, hidden=[32], seed=seed)


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# A recipe touching every stateful part: TRADES + AWP, a threat mix, an adaptive curriculum,
# validation with early stopping and best keeping, a cosine schedule, SGD, gradient clipping.
RICH_RECIPE: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 100,
    "lr": 0.05,
    "grad_clip": 5.0,
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "objective": {"name": "trades", "steps": 3, "beta": 3.0},
    "threats": [
        {"kind": "linf", "epsilon": 0.1, "weight": 2},
        {"kind": "l2", "epsilon": 0.5},
        {"kind": "patch", "size": 3},
        {"kind": "noise", "sigma": 0.1},
    ],
    "curriculum": {"kind": "adaptive", "start": 0.5, "target": 0.05, "increment": 0.25},
    "schedule": {"kind": "cosine", "warmup_epochs": 0.5},
    "awp": {"gamma": 0.01},
    "validation": {"holdout": 200, "pgd_steps": 3},
    "early_stopping": {"patience": 5},
    "guard": {"samples": 100, "pgd_steps": 3},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared machine the thread
    hand-offs dominate; run each test on one thread and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
