"""The bundled breast cancer table: fingerprint, encoding, scaling and split determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustops.data import DATASETS, Dataset, load_breast_cancer, load_dataset
from robustops.data.embedded import BREAST_CANCER_SHA256
from robustops.errors import DataIntegrityError
from robustops.tabular import BREAST_CANCER_SCHEMA


def test_shapes_scaling_and_fingerprint(cancer: Dataset) -> None:
    assert "breast_cancer" in DATASETS
    assert cancer.fingerprint == BREAST_CANCER_SHA256
    assert cancer.x_train.shape == (455, 32) and cancer.x_test.shape == (114, 32)
    assert cancer.input_shape == (32,) and cancer.num_classes == 2
    assert cancer.x_train.dtype == torch.float32
    both = torch.cat([cancer.x_train, cancer.x_test])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    assert BREAST_CANCER_SCHEMA.validate(both) == []
    assert torch.bincount(cancer.y_test).tolist() == [42, 72]  # stratified: 212 / 357 overall
    assert cancer.y_test[:10].tolist() == [0, 1] * 5  # interleaved prefix
    symmetry = both[
        :,
        [
            BREAST_CANCER_SCHEMA.index(f"mean symmetry grade: {g}")
            for g in ("low", "typical", "high")
        ],
    ]
    assert symmetry.sum(0).tolist() == [169.0, 250.0, 150.0]


def test_fingerprint_matches_an_exact_decimal_reading_of_the_csv() -> None:
    """The fingerprint does not depend on the float parser: recompute it from the CSV text."""
    import csv
    import hashlib
    from decimal import Decimal
    from importlib import resources

    text = resources.files("sklearn.datasets").joinpath("data/breast_cancer.csv").read_text()
    rows = list(csv.reader(text.splitlines()))[1:]
    ints = np.array([[int(Decimal(v) * 10**7) for v in r[:30]] for r in rows], dtype="<i8")
    labels = np.array([int(r[30]) for r in rows], dtype="<i8")
    h = hashlib.sha256()
    h.update(str(ints.shape).encode())
    h.update(ints.tobytes())
    h.update(labels.tobytes())
    assert h.hexdigest() == BREAST_CANCER_SHA256


def test_split_is_deterministic_and_seeded() -> None:
    a, b, c = load_breast_cancer(seed=0), load_breast_cancer(seed=0), load_breast_cancer(seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    d = load_dataset("breast_cancer", test_fraction=0.25)
    assert d.x_test.shape[0] == 143 and d.describe()["input_shape"] == [32]


def test_altered_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.datasets

    real = sklearn.datasets.load_breast_cancer

    def tampered(value: float) -> object:
        def load() -> object:
            bunch = real()
            bunch.data = bunch.data.copy()
            bunch.data[3, 7] = value
            return bunch

        return load

    monkeypatch.setattr(sklearn.datasets, "load_breast_cancer", tampered(0.1))
    with pytest.raises(DataIntegrityError, match="fingerprint"):
        load_breast_cancer()
    monkeypatch.setattr(sklearn.datasets, "load_breast_cancer", tampered(0.123456789))
    with pytest.raises(DataIntegrityError, match="decimals"):
        load_breast_cancer()
