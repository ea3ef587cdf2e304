"""Embedded data sets (shipped inside installed packages, never downloaded) and the user's own
data sources of a spec (:mod:`robustops.data.sources`), all with fingerprints."""

from robustops.data.embedded import (
    DATASETS,
    Dataset,
    load_breast_cancer,
    load_dataset,
    load_digits,
    load_mnist_subset,
)
from robustops.data.loaders import fingerprint_files, load_source
from robustops.data.sms_spam import TEXT_DATASETS, TextDataset, load_sms_spam
from robustops.data.sources import DataSource

__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "DataSource",
    "Dataset",
    "TextDataset",
    "fingerprint_files",
    "load_breast_cancer",
    "load_dataset",
    "load_digits",
    "load_mnist_subset",
    "load_sms_spam",
    "load_source",
]
