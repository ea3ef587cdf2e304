"""Embedded data sets (shipped inside installed packages, never downloaded), with fingerprints."""

from robustops.data.embedded import DATASETS, Dataset, load_dataset, load_digits, load_mnist_subset

__all__ = ["DATASETS", "Dataset", "load_dataset", "load_digits", "load_mnist_subset"]
