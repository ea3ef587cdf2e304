"""Text classification under character- and word-level attack: classifiers behind one
interface (:class:`TextClassifier`) and an input sanitizer.

The attacks live in :mod:`robustops.text.attacks` (imported on its own, not from here).
"""

from robustops.text.models import (
    CharNgramVocab,
    EmbeddingBagClassifier,
    SklearnTextClassifier,
    TextClassifier,
    TorchTextClassifier,
    predict_labels,
    text_accuracy,
    train_text_classifier,
)
from robustops.text.sanitize import (
    CONFUSABLES,
    HOMOGLYPHS,
    INVISIBLE,
    LEET,
    SanitizedClassifier,
    sanitize,
    sanitize_many,
)

__all__ = [
    "CONFUSABLES",
    "HOMOGLYPHS",
    "INVISIBLE",
    "LEET",
    "CharNgramVocab",
    "EmbeddingBagClassifier",
    "SanitizedClassifier",
    "SklearnTextClassifier",
    "TextClassifier",
    "TorchTextClassifier",
    "predict_labels",
    "sanitize",
    "sanitize_many",
    "text_accuracy",
    "train_text_classifier",
]
