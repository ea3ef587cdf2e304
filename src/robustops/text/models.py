"""Text classifiers behind one small interface, :class:`TextClassifier`, that every text attack
uses: ``predict_logits(texts) -> (N, K)`` logits or log-probabilities on the CPU.

* :class:`CharNgramVocab` — a deterministic character n-gram vocabulary built from training
  texts, storable as JSON (no pickle);
* :class:`EmbeddingBagClassifier` — an ``nn.Module`` (``forward(token_ids, offsets)``): mean of
  n-gram embeddings, then a linear layer (fastText-style);
* :class:`TorchTextClassifier` — module + vocabulary (+ an optional ``preprocess`` hook such as
  :func:`robustops.text.sanitize.sanitize`), predicting in batches; saved as one safetensors file
  whose metadata holds the vocabulary and the architecture;
* :func:`char_ngram_classifier` — builds an untrained one (vocabulary + deterministic
  initialisation), the factory pipeline specs name; :func:`robustops.training.text.fit_text`
  trains it with a recipe (optionally with adversarial data augmentation), and
  :func:`robustops.training.text.train_text_classifier` does both at once;
* :class:`SklearnTextClassifier` — adapts any ``predict_proba(list[str])`` model (e.g. a
  scikit-learn TF-IDF + LogisticRegression pipeline), returning log-probabilities.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.errors import SpecError, UnsafeArtifactError, short_repr
from robustops.io import atomic_write_text
from robustops.schema import StrictModel
from robustops.trust import builtin, resolve_callable

__all__ = [
    "CharNgramVocab",
    "EmbeddingBagClassifier",
    "SklearnTextClassifier",
    "TextClassifier",
    "TorchTextClassifier",
    "char_ngram_classifier",
    "check_texts",
    "predict_labels",
    "predict_text_logits",
    "text_accuracy",
]

Preprocess = Callable[[str], str]

_FORMAT = "robustops.text.TorchTextClassifier/1"


@runtime_checkable
class TextClassifier(Protocol):
    """What text attacks query: ``num_classes`` and ``predict_logits``.

    ``predict_logits(texts)`` returns a float ``(N, K)`` CPU tensor of logits or
    log-probabilities (argmax = prediction); it never needs gradients.
    """

    num_classes: int

    def predict_logits(self, texts: Sequence[str]) -> Tensor: ...


class CharNgramVocab:
    """Character n-grams of each whitespace-separated word, with ``<`` and ``>`` marking the
    word's start and end (``"<free>"`` gives ``<f``, ``fr``, …, ``ee>``, ``<fr``, …), lower-cased
    unless ``lowercase=False``.

    ``ngrams[i]`` has id ``i``. N-grams outside the vocabulary are dropped, so a text may encode
    to no id at all (its embedding bag is then empty and the model answers its bias).
    """

    def __init__(
        self,
        ngrams: Sequence[str],
        *,
        ngram_range: tuple[int, int] = (1, 4),
        lowercase: bool = True,
    ) -> None:
        lo, hi = int(ngram_range[0]), int(ngram_range[1])
        if not 1 <= lo <= hi:
            raise SpecError.single("text.ngram_range", f"need 1 <= min <= max, got {ngram_range}")
        self.ngrams: list[str] = list(ngrams)
        self.index: dict[str, int] = {g: i for i, g in enumerate(self.ngrams)}
        if len(self.index) != len(self.ngrams):
            raise SpecError.single("text.vocab", "duplicate n-grams in the vocabulary")
        self.ngram_range = (lo, hi)
        self.lowercase = lowercase

    def __len__(self) -> int:
        return len(self.ngrams)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharNgramVocab) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:  # pragma: no cover - vocabularies are not dict keys
        return hash((tuple(self.ngrams), self.ngram_range, self.lowercase))

    def __repr__(self) -> str:
        return (
            f"CharNgramVocab({len(self)} n-grams, ngram_range={self.ngram_range}, "
            f"lowercase={self.lowercase})"
        )

    def ngrams_of(self, text: str) -> list[str]:
        """All n-grams of ``text``, in order, repeats included."""
        lo, hi = self.ngram_range
        if self.lowercase:
            text = text.lower()
        out: list[str] = []
        for word in text.split():
            w = f"<{word}>"
            n_chars = len(w)
            for n in range(lo, hi + 1):
                out.extend(w[i : i + n] for i in range(n_chars - n + 1))
        return out

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        ngram_range: tuple[int, int] = (1, 4),
        max_size: int = 50_000,
        min_count: int = 2,
        lowercase: bool = True,
    ) -> CharNgramVocab:
        """The ``max_size`` most frequent n-grams occurring at least ``min_count`` times in
        ``texts``, ordered by decreasing count then lexicographically (deterministic)."""
        probe = cls([], ngram_range=ngram_range, lowercase=lowercase)
        return probe._from_grams((probe.ngrams_of(t) for t in texts), max_size, min_count)

    def _from_grams(
        self, grams: Iterable[list[str]], max_size: int, min_count: int
    ) -> CharNgramVocab:
        counts: Counter[str] = Counter()
        for g in grams:
            counts.update(g)
        kept = sorted(
            (g for g, c in counts.items() if c >= min_count), key=lambda g: (-counts[g], g)
        )
        return CharNgramVocab(
            kept[:max_size], ngram_range=self.ngram_range, lowercase=self.lowercase
        )

    def ids_of(self, grams: Iterable[str]) -> list[int]:
        """The ids of the in-vocabulary n-grams among ``grams``, in order."""
        index = self.index
        return [i for g in grams if (i := index.get(g)) is not None]

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(token_ids, offsets)`` in ``nn.EmbeddingBag`` format: the ids of all texts
        concatenated (int64) and where each text's ids start (int64, ``(N,)``)."""
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(self.ids_of(self.ngrams_of(text)))
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {
            "kind": "char_ngram",
            "ngram_range": list(self.ngram_range),
            "lowercase": self.lowercase,
            "ngrams": list(self.ngrams),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharNgramVocab:
        """Inverse of :meth:`to_dict`."""
        if data.get("kind") != "char_ngram":
            raise SpecError.single(
                "text.vocab", f"not a char n-gram vocabulary: {data.get('kind')!r}"
            )
        lo, hi = data["ngram_range"]
        return cls(
            data["ngrams"], ngram_range=(int(lo), int(hi)), lowercase=bool(data["lowercase"])
        )

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as a JSON file (UTF-8)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> CharNgramVocab:
        """Read a vocabulary written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


class EmbeddingBagClassifier(nn.Module):
    """Mean of the n-gram embeddings of a text, then a linear layer: ``(N, num_classes)`` logits.

    ``forward(token_ids, offsets)`` takes the output of :meth:`CharNgramVocab.encode`. The
    embedding has sparse gradients by default (train it with ``torch.optim.SparseAdam``; it makes
    a step ~4x faster than a dense one).
    """

    def __init__(
        self, vocab_size: int, num_classes: int = 2, embed_dim: int = 64, *, sparse: bool = True
    ) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.embedding = nn.EmbeddingBag(
            max(self.vocab_size, 1), self.embed_dim, mode="mean", sparse=sparse
        )
        self.fc = nn.Linear(self.embed_dim, self.num_classes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from ``generator``."""
        with torch.no_grad():
            self.embedding.weight.uniform_(-0.5, 0.5, generator=generator)
            bound = 1.0 / self.embed_dim**0.5
            self.fc.weight.uniform_(-bound, bound, generator=generator)
            self.fc.bias.zero_()

    def config(self) -> dict[str, int]:
        """Constructor arguments (stored with the weights)."""
        return {
            "vocab_size": self.vocab_size,
            "num_classes": self.num_classes,
            "embed_dim": self.embed_dim,
        }

    def forward(self, token_ids: Tensor, offsets: Tensor) -> Tensor:
        logits: Tensor = self.fc(self.embedding(token_ids, offsets))
        return logits


def _preprocess_ref(fn: Preprocess | None) -> str | None:
    if fn is None:
        return None
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not name or "<" in name:
        return repr(fn)
    return f"{module}:{name}"


MAX_VOCAB = 5_000_000
"""Most n-grams a saved text model may declare."""
MAX_EMBED_DIM = 4096
MAX_CLASSES = 100_000
MAX_PARAMETERS = 200_000_000
"""Most embedding parameters (vocabulary × width) a saved text model may declare (800 MB)."""


class _VocabMeta(StrictModel):
    kind: Literal["char_ngram"]
    ngram_range: tuple[Annotated[int, Field(ge=1, le=32)], Annotated[int, Field(ge=1, le=32)]]
    lowercase: bool
    ngrams: list[str] = Field(max_length=MAX_VOCAB)


class _ArchMeta(StrictModel):
    vocab_size: int = Field(ge=0, le=MAX_VOCAB)
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    embed_dim: int = Field(ge=1, le=MAX_EMBED_DIM)


class _FileMeta(StrictModel):
    """The ``robustops`` metadata of a saved :class:`TorchTextClassifier`."""

    format: Literal["robustops.text.TorchTextClassifier/1"]
    model: _ArchMeta
    vocab: _VocabMeta
    preprocess: str | None = None
    user: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> _FileMeta:
        if self.model.vocab_size != len(self.vocab.ngrams):
            raise ValueError(
                f"model.vocab_size is {self.model.vocab_size} but the vocabulary has "
                f"{len(self.vocab.ngrams)} n-grams"
            )
        if self.model.vocab_size * self.model.embed_dim > MAX_PARAMETERS:
            raise ValueError(f"the embedding would exceed {MAX_PARAMETERS:,} parameters")
        lo, hi = self.vocab.ngram_range
        if lo > hi:
            raise ValueError(f"vocab.ngram_range must have min <= max, got {[lo, hi]}")
        return self


def _read_metadata(path: Path, raw: str | None) -> _FileMeta:
    """The validated metadata of a saved text model; :class:`SpecError` naming the file and the
    field when it is missing, not JSON, or not what :meth:`TorchTextClassifier.save` writes."""
    if not raw:
        raise SpecError.single("text.model", f"{path} is not a saved TorchTextClassifier")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SpecError.single(
            "text.model", f"{path}: metadata is not valid JSON ({exc})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise SpecError.single("text.model", f"{path} is not a saved TorchTextClassifier")
    try:
        return _FileMeta.model_validate(data)
    except ValidationError as exc:
        errors = [
            (
                f"{path}: metadata." + ".".join(str(p) for p in e["loc"]),
                e["msg"] + (f" (got {short_repr(e['input'], 80)})" if "input" in e else ""),
            )
            for e in exc.errors()[:10]
        ]
        raise SpecError(errors) from None


class TorchTextClassifier:
    """A :class:`TextClassifier` from an :class:`EmbeddingBagClassifier` and its vocabulary.

    ``preprocess`` (e.g. :func:`robustops.text.sanitize.sanitize`) is applied to every text before
    encoding; use the same at training time. ``predict_logits`` runs in eval mode, without
    gradients, ``batch_size`` texts at a time, and returns CPU float32 logits.
    """

    def __init__(
        self,
        module: EmbeddingBagClassifier,
        vocab: CharNgramVocab,
        *,
        preprocess: Preprocess | None = None,
        batch_size: int = 512,
    ) -> None:
        if module.vocab_size != len(vocab):
            raise SpecError.single(
                "text.vocab",
                f"the module expects {module.vocab_size} n-grams, the vocabulary has {len(vocab)}",
            )
        self.module = module
        self.vocab = vocab
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.num_classes = module.num_classes

    def __repr__(self) -> str:
        return (
            f"TorchTextClassifier({self.vocab!r}, embed_dim={self.module.embed_dim}, "
            f"num_classes={self.num_classes}, preprocess={_preprocess_ref(self.preprocess)})"
        )

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model sees them (after ``preprocess``)."""
        if self.preprocess is None:
            return list(texts)
        return [self.preprocess(t) for t in texts]

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(token_ids, offsets)`` of the preprocessed texts."""
        return self.vocab.encode(self.prepare(texts))

    @torch.no_grad()
    def predict_logits(self, texts: Sequence[str]) -> Tensor:
        """``(N, num_classes)`` logits, float32 on the CPU."""
        if isinstance(texts, str):
            raise TypeError("predict_logits takes a sequence of texts, not a single string")
        self.module.eval()
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids, offsets = self.encode(texts[start : start + self.batch_size])
            out.append(self.module(ids, offsets).float().cpu())
        if out:
            return torch.cat(out)
        return torch.empty(0, self.num_classes)

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
        """Write weights, vocabulary and architecture into one safetensors file (the vocabulary
        and the architecture as JSON in its metadata; no pickle). Returns the file's sha256."""
        from robustops.models.loading import save_weights

        meta = {
            "format": _FORMAT,
            "model": self.module.config(),
            "vocab": self.vocab.to_dict(),
            "preprocess": _preprocess_ref(self.preprocess),
            "user": metadata or {},
        }
        return save_weights(self.module, path, metadata=meta)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        sha256: str | None = None,
        preprocess: Preprocess | None = None,
        batch_size: int = 512,
    ) -> TorchTextClassifier:
        """Read a file written by :meth:`save`.

        The preprocess hook is code, so it is not stored, only its name: pass it again as
        ``preprocess``; when the file names one of RobustOps' built-in hooks (e.g.
        ``robustops.text.sanitize:sanitize``, see :mod:`robustops.trust`) and none is passed,
        that one is imported. A file that names another hook and gets none raises
        :class:`~robustops.errors.UntrustedCodeError` (nothing is imported).

        A pinned ``sha256`` is checked before any byte of the file is parsed; the metadata is
        validated (unknown keys refused, sizes bounded by :data:`MAX_VOCAB` and friends) before
        anything is allocated.
        """
        from safetensors import SafetensorError, safe_open

        from robustops._util import file_sha256
        from robustops.models.loading import load_weights

        path = Path(path)
        if not path.is_file():
            raise SpecError.single("text.model", f"model file not found: {path}")
        if sha256 is not None:  # before a single byte of the file is parsed
            got = file_sha256(path)
            if got != sha256:
                raise UnsafeArtifactError(
                    f"text.model: sha256 of {path} is {got}, expected {sha256}"
                )
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("robustops")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnsafeArtifactError(f"{path} is not a valid safetensors file ({exc})") from None
        meta = _read_metadata(path, raw)
        vocab = CharNgramVocab(
            meta.vocab.ngrams, ngram_range=meta.vocab.ngram_range, lowercase=meta.vocab.lowercase
        )
        module = EmbeddingBagClassifier(**meta.model.model_dump())
        load_weights(module, path, field="text.model")
        ref = meta.preprocess
        if preprocess is None and ref is not None:
            # a model file may only name a built-in hook, whatever the user trusts
            preprocess = resolve_callable(ref, field=f"{path}: preprocess", builtin_only=True)
        return cls(module.eval(), vocab, preprocess=preprocess, batch_size=batch_size)


MAX_TEXT_CHARS = 10_000
"""Default cap on the length of one text (characters); a pipeline spec sets its own with
``data.max_text_chars``."""


def check_texts(
    texts: Sequence[str], *, max_chars: int = MAX_TEXT_CHARS, field: str = "data.texts"
) -> None:
    """Refuse texts a model should never be fed: longer than ``max_chars`` characters (the
    attacks' cost grows with the square of a text's length), or holding a lone surrogate
    (not encodable as UTF-8, so not a text). :class:`SpecError` names ``field``, the text's
    index and the cap."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise SpecError.single(f"{field}.{i}", f"not a string: {short_repr(text, 60)}")
        if len(text) > max_chars:
            raise SpecError.single(
                f"{field}.{i}",
                f"text of {len(text):,} characters exceeds the cap of {max_chars:,} "
                "(raise data.max_text_chars to accept it)",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SpecError.single(
                f"{field}.{i}",
                f"holds a lone surrogate {text[exc.start]!r} at character {exc.start}: "
                "not valid Unicode text",
            ) from None


def _labels_tensor(labels: Tensor | Sequence[int] | np.ndarray) -> Tensor:
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    return y


def _resolve_preprocess(preprocess: Preprocess | str | None) -> Preprocess | None:
    if preprocess is None or callable(preprocess):
        return preprocess
    if isinstance(preprocess, str):
        from robustops.models.loading import resolve_factory

        fn: Preprocess = resolve_factory(preprocess, field="model.kwargs.preprocess")
        return fn
    raise SpecError.single(
        "model.kwargs.preprocess",
        f"must be a callable or a 'package.module:callable' string, got {preprocess!r}",
    )


@builtin
def char_ngram_classifier(
    texts: Sequence[str],
    *,
    num_classes: int = 2,
    embed_dim: int = 64,
    ngram_range: tuple[int, int] | Sequence[int] = (1, 4),
    vocab_size: int = 50_000,
    min_count: int = 2,
    lowercase: bool = True,
    preprocess: Preprocess | str | None = None,
    seed: int | torch.Generator = 0,
) -> TorchTextClassifier:
    """An untrained :class:`TorchTextClassifier`: a :class:`CharNgramVocab` built from the
    (preprocessed) training ``texts`` and an :class:`EmbeddingBagClassifier` initialised
    deterministically from ``seed``.

    This is the factory a pipeline spec names (``factory: robustops.text:char_ngram_classifier``;
    the runner calls it as ``factory(train_texts, seed=..., num_classes=K, **model.kwargs)``);
    train the result with :func:`robustops.training.text.fit_text`.

    Args:
        texts: the training texts (the vocabulary comes from them).
        num_classes: classes ``K`` of the ``(N, K)`` logits.
        embed_dim: embedding width.
        ngram_range: ``(min, max)`` n-gram lengths in characters.
        vocab_size: most n-grams kept (the most frequent ones).
        min_count: fewest occurrences of a kept n-gram in ``texts``.
        lowercase: lower-case texts before extracting n-grams.
        preprocess: applied to every text before encoding, at training and prediction time: a
            callable, or a ``"package.module:callable"`` reference such as
            ``"robustops.text.sanitize:sanitize"``.
        seed: an int, or a generator to draw the initial weights from (its state advances).
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise SpecError.single("text.texts", "no training texts (need a sequence of strings)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError.single("model.num_classes", f"must be an int >= 1, got {num_classes!r}")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise SpecError.single("model.kwargs.embed_dim", f"must be an int >= 1, got {embed_dim!r}")
    if len(ngram_range) != 2:
        raise SpecError.single("text.ngram_range", f"need (min, max), got {ngram_range!r}")
    fn = _resolve_preprocess(preprocess)
    prepared = [fn(t) for t in texts] if fn is not None else list(texts)
    vocab = CharNgramVocab.build(
        prepared,
        ngram_range=(int(ngram_range[0]), int(ngram_range[1])),
        max_size=vocab_size,
        min_count=min_count,
        lowercase=lowercase,
    )
    module = EmbeddingBagClassifier(
        len(vocab), num_classes=num_classes, embed_dim=embed_dim, sparse=True
    )
    module.reset_parameters(make_generator(seed))
    return TorchTextClassifier(module.eval(), vocab, preprocess=fn)


class SklearnTextClassifier:
    """A :class:`TextClassifier` from any model with ``predict_proba(list[str]) -> (N, K)``
    (e.g. ``make_pipeline(TfidfVectorizer(), LogisticRegression())``).

    Returns ``log(clamp(p, eps))`` as float32, so ``exp`` of a row sums to 1 (up to the clamp).
    ``preprocess`` is applied to each text first; ``num_classes`` defaults to
    ``len(model.classes_)``.
    """

    def __init__(
        self,
        model: Any,
        *,
        preprocess: Preprocess | None = None,
        num_classes: int | None = None,
        batch_size: int = 2048,
        eps: float = 1e-12,
    ) -> None:
        if not callable(getattr(model, "predict_proba", None)):
            raise TypeError(f"{type(model).__name__} has no predict_proba")
        if num_classes is None:
            classes = getattr(model, "classes_", None)
            if classes is None:
                raise SpecError.single(
                    "text.num_classes", "the model has no classes_; pass num_classes="
                )
            num_classes = len(classes)
        self.model = model
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return (
            f"SklearnTextClassifier({type(self.model).__name__}, num_classes={self.num_classes}, "
            f"preprocess={_preprocess_ref(self.preprocess)})"
        )

    def predict_logits(self, texts: Sequence[str]) -> Tensor:
        """``(N, num_classes)`` log-probabilities, float32 on the CPU."""
        if isinstance(texts, str):
            raise TypeError("predict_logits takes a sequence of texts, not a single string")
        items = list(texts)
        if self.preprocess is not None:
            items = [self.preprocess(t) for t in items]
        out = []
        for start in range(0, len(items), self.batch_size):
            proba = np.asarray(self.model.predict_proba(items[start : start + self.batch_size]))
            out.append(torch.from_numpy(proba.astype(np.float32)).clamp_min(self.eps).log())
        if out:
            return torch.cat(out)
        return torch.empty(0, self.num_classes)


def predict_text_logits(model: TextClassifier, texts: Sequence[str], batch_size: int) -> Tensor:
    """``model``'s ``(N, K)`` float32 CPU logits for ``texts``, ``batch_size`` texts per call."""
    out = [
        model.predict_logits(list(texts[i : i + batch_size])).float().cpu()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def predict_labels(model: TextClassifier, texts: Sequence[str]) -> Tensor:
    """``model``'s predicted classes ``(N,)`` int64."""
    return model.predict_logits(texts).argmax(dim=1)


def text_accuracy(
    model: TextClassifier, texts: Sequence[str], labels: Tensor | Sequence[int] | np.ndarray
) -> float:
    """Share of ``texts`` that ``model`` classifies as ``labels``."""
    y = _labels_tensor(labels)
    if len(texts) == 0:
        return float("nan")
    return float((predict_labels(model, texts) == y).float().mean())
