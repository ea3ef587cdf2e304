"""Text classification under character- and word-level attack: classifiers behind one
interface (:class:`TextClassifier`), their factory and trainer (:func:`char_ngram_classifier`,
:func:`fit_text`, with adversarial data augmentation) and an input sanitizer.

The attacks live in :mod:`robustops.text.attacks` (imported on its own, not from here).
"""

from robustops.text.models import (
    CharNgramVocab,
    EmbeddingBagClassifier,
    SklearnTextClassifier,
    TextClassifier,
    TorchTextClassifier,
    char_ngram_classifier,
    check_texts,
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
from robustops.text.training import (
    AugmentedText,
    AugmentRound,
    TextEpochMetrics,
    TextTrainResult,
    fit_text,
    text_recipe_errors,
)

__all__ = [
    "CONFUSABLES",
    "HOMOGLYPHS",
    "INVISIBLE",
    "LEET",
    "AugmentRound",
    "AugmentedText",
    "CharNgramVocab",
    "EmbeddingBagClassifier",
    "SanitizedClassifier",
    "SklearnTextClassifier",
    "TextClassifier",
    "TextEpochMetrics",
    "TextTrainResult",
    "TorchTextClassifier",
    "char_ngram_classifier",
    "check_texts",
    "fit_text",
    "predict_labels",
    "sanitize",
    "sanitize_many",
    "text_accuracy",
    "text_recipe_errors",
    "train_text_classifier",
]
