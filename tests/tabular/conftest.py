"""Shared fixtures of the tabular tests: the breast cancer split and a quickly trained MLP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from robustops.data import Dataset, load_dataset
from robustops.models import MLP, mlp
from robustops.training import StandardConfig, train_standard


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tabular batches are tiny: one thread is faster than two on a shared machine (restored
    after each module, so other tests keep their setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cancer() -> Dataset:
    return load_dataset("breast_cancer")


@pytest.fixture(scope="session")
def cancer_mlp(cancer: Dataset) -> MLP:
    """The configs/tabular.yaml model: MLP 32-64-64-2, 30 epochs (~97% test accuracy, ~1 s)."""
    model = mlp(input_dim=32, hidden=(64, 64), num_classes=2, seed=0)
    config = StandardConfig(epochs=30, batch_size=32, lr=3e-3, seed=0)
    train_standard(model, cancer.x_train, cancer.y_train, config)
    return model.eval()


@pytest.fixture(scope="session")
def cancer_correct(cancer_mlp: MLP, cancer: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The test rows the MLP classifies correctly, with their labels."""
    with torch.no_grad():
        ok = cancer_mlp(cancer.x_test).argmax(1) == cancer.y_test
    return cancer.x_test[ok], cancer.y_test[ok]
