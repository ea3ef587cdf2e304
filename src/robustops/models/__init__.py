"""Reference models, the Classifier notion, and safe model loading."""

from robustops.models.classifier import Classifier, ProbaClassifier, as_classifier, predict_logits
from robustops.models.ensemble import Ensemble, MultiHead, ensemble
from robustops.models.loading import (
    build_model,
    load_weights,
    model_sha256,
    resolve_factory,
    save_weights,
)
from robustops.models.normalize import Normalized
from robustops.models.reference import MLP, SmallCNN, mlp, small_cnn

__all__ = [
    "MLP",
    "Classifier",
    "Ensemble",
    "MultiHead",
    "Normalized",
    "ProbaClassifier",
    "SmallCNN",
    "as_classifier",
    "build_model",
    "ensemble",
    "load_weights",
    "mlp",
    "model_sha256",
    "predict_logits",
    "resolve_factory",
    "save_weights",
    "small_cnn",
]
