"""Reference models, the Classifier notion, and safe model loading."""

from robustops.models.classifier import Classifier, ProbaClassifier, as_classifier
from robustops.models.loading import (
    build_model,
    load_weights,
    model_sha256,
    resolve_factory,
    save_weights,
)
from robustops.models.reference import MLP, SmallCNN, mlp, small_cnn

__all__ = [
    "MLP",
    "Classifier",
    "ProbaClassifier",
    "SmallCNN",
    "as_classifier",
    "build_model",
    "load_weights",
    "mlp",
    "model_sha256",
    "resolve_factory",
    "save_weights",
    "small_cnn",
]
