"""Shared text fixtures: the SMS Spam Collection and two quickly trained spam classifiers.

``sms`` (the split data set), ``spam_model`` (:class:`TorchTextClassifier`, char n-gram
EmbeddingBag, ~98.6% test accuracy, ~2 s) and ``tfidf_model`` (word TF-IDF + logistic regression
behind :class:`SklearnTextClassifier`, ~97.8%, < 1 s) are session-scoped: every text test module
shares one copy of each.
"""

from __future__ import annotations

import pytest
import torch

from robustops.data.sms_spam import TextDataset, load_sms_spam
from robustops.text.models import SklearnTextClassifier, TorchTextClassifier
from robustops.training.text import train_text_classifier


@pytest.fixture(scope="session")
def sms() -> TextDataset:
    return load_sms_spam()


@pytest.fixture(scope="session")
def spam_model(sms: TextDataset) -> TorchTextClassifier:
    """Char 1–4-gram EmbeddingBag classifier, 5 epochs, seed 0, on the training split."""
    torch.set_num_threads(1)
    return train_text_classifier(sms.texts_train, sms.y_train, seed=0)


@pytest.fixture(scope="session")
def tfidf_model(sms: TextDataset) -> SklearnTextClassifier:
    """scikit-learn ``TfidfVectorizer(sublinear_tf=True)`` + ``LogisticRegression(C=10)``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), LogisticRegression(C=10.0, max_iter=1000)
    )
    pipeline.fit(sms.texts_train, sms.y_train.numpy())
    return SklearnTextClassifier(pipeline)
