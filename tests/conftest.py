"""Shared fixtures: the embedded data and a quickly trained, undefended reference CNN; the
data-source cache kept inside the test session's temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustops.data import Dataset, load_mnist_subset
from robustops.models import SmallCNN, small_cnn
from robustops.training import StandardConfig, train_standard


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data-source cache goes to a folder of this test session, never ~/.cache (the
    environment reaches the CLI subprocesses too)."""
    root = tmp_path_factory.getbasetemp() / "data-cache"
    monkeypatch.setenv("ROBUSTOPS_DATA_CACHE_DIR", str(root))
    monkeypatch.delenv("ROBUSTOPS_DATA_CACHE", raising=False)
    return root


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_mnist_subset()


@pytest.fixture(scope="session")
def trained_cnn(mnist: Dataset) -> SmallCNN:
    """Undefended small CNN, 3 epochs on the 4000 training images (~95% test accuracy)."""
    torch.manual_seed(0)
    model = small_cnn(seed=0)
    train_standard(
        model, mnist.x_train, mnist.y_train, StandardConfig(epochs=3, batch_size=64, seed=0)
    )
    return model.eval()


@pytest.fixture(scope="session")
def correct_batch(trained_cnn: SmallCNN, mnist: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 test images the CNN classifies correctly, with their labels."""
    x, y = mnist.x_test[:240], mnist.y_test[:240]
    with torch.no_grad():
        ok = trained_cnn(x).argmax(1) == y
    return x[ok][:200], y[ok][:200]
