"""Embedded data sets (shipped inside installed packages, never downloaded), with fingerprints."""

from robustops.data.embedded import (
    DATASETS,
    Dataset,
    load_breast_cancer,
    load_dataset,
    load_digits,
    load_mnist_subset,
)
from robustops.data.sms_spam import TEXT_DATASETS, TextDataset, load_sms_spam

__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "Dataset",
    "TextDataset",
    "load_breast_cancer",
    "load_dataset",
    "load_digits",
    "load_mnist_subset",
    "load_sms_spam",
]
