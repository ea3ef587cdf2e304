"""Text classification under character- and word-level attack: classifiers behind one
interface (:class:`TextClassifier`), their factory (:func:`char_ngram_classifier`), Hugging Face
sequence-classification models read from a local folder (:class:`HFTextClassifier`; needs the
``hf`` extra) and an input sanitizer.

The attacks live in :mod:`robustops.attacks.text` (imported on its own, not from here); the
trainer, with adversarial data augmentation, in :mod:`robustops.training.text`
(:func:`~robustops.training.text.fit_text`, :func:`~robustops.training.text.train_text_classifier`).
"""

from robustops.text.hf import HFTextClassifier, directory_fingerprint
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
    "HFTextClassifier",
    "SanitizedClassifier",
    "SklearnTextClassifier",
    "TextClassifier",
    "TorchTextClassifier",
    "char_ngram_classifier",
    "check_texts",
    "directory_fingerprint",
    "predict_labels",
    "sanitize",
    "sanitize_many",
    "text_accuracy",
]
