"""Training recipes (standard here; adversarial objectives build on it)."""

from robustops.training.standard import EpochStats, accuracy, train_standard

__all__ = ["EpochStats", "accuracy", "train_standard"]
