"""Reference models, the Classifier notion, safe model loading, and a served model over HTTP."""

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
from robustops.models.remote import QueryBudgetExceeded, RemoteClassifier, RemoteError

__all__ = [
    "MLP",
    "Classifier",
    "Ensemble",
    "MultiHead",
    "Normalized",
    "ProbaClassifier",
    "QueryBudgetExceeded",
    "RemoteClassifier",
    "RemoteError",
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
