"""The text trainer: a :class:`~robustops.text.models.TorchTextClassifier` trained with a
:class:`~robustops.training.recipe.Recipe`, optionally with adversarial data augmentation.

:func:`fit_text` trains the classifier's :class:`~robustops.text.models.EmbeddingBagClassifier`
in place with cross-entropy (``SparseAdam`` for the sparse embedding, ``Adam`` for the output
layer), ``recipe.epochs`` passes of ``recipe.batch_size`` texts at the recipe's learning rate,
shaped every batch by ``recipe.schedule``.

**Augmentation** (``recipe.augment``, :class:`~robustops.training.recipe.AugmentSpec`). Before
epochs ``start_epoch``, ``start_epoch + every``, … (1-based) a *round* runs:

1. ``samples`` training texts are drawn among those the threat attacks
   (``threat.attacked(labels)``: with ``target_class: 0`` only the texts not of class 0) from a
   generator seeded with ``(seed, epoch)``; a targeted threat draws their targets from it too;
2. the drawn texts are shared round-robin between the attacks (text ``k`` of the draw, in index
   order, gets attack ``k mod A``), built with a seed derived from ``(seed, epoch)``, and
   attacked against the current model in eval mode (through ``predict_logits``, so the
   classifier's ``preprocess`` applies);
3. every adversarial text that fooled the model (the attack succeeded with at least one edit)
   joins the *pool* with its **true** label, unless the pool already holds it; with
   ``pool: replace`` the pool is emptied first.

Each epoch shuffles the original texts and the pool together. The model is never trained on
texts that were already misclassified before any edit (they are in the training data already).

**Determinism.** The initialisation is the caller's (see
:func:`~robustops.text.models.char_ngram_classifier`); batch order comes from one generator
seeded with ``seed`` (or the generator passed as ``seed``), augmentation draws and attack seeds
from seeds derived from ``seed`` and the epoch, and the CPU kernels used are deterministic: the
same call gives bit-identical weights. Without augmentation, ``char_ngram_classifier(..., seed=g)``
then ``fit_text(..., seed=g)`` with one generator ``g`` is exactly :func:`train_text_classifier`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.attacks.base import Attack
from robustops.errors import SpecError
from robustops.text.models import (
    Preprocess,
    TextClassifier,
    TorchTextClassifier,
    char_ngram_classifier,
)
from robustops.training.recipe import AugmentSpec, Recipe
from robustops.training.schedules import learning_rate

__all__ = [
    "AugmentRound",
    "AugmentedText",
    "TextEpochMetrics",
    "TextTrainResult",
    "fit_text",
    "text_recipe_errors",
    "train_text_classifier",
]


@dataclass(frozen=True)
class AugmentRound:
    """What one augmentation round did.

    Attributes:
        attacked: training texts attacked (the draw; at most ``augment.samples``).
        fooled: attacked texts turned into adversarial texts that the model misclassifies
            (with at least one edit).
        misclassified: attacked texts the model already misclassified (targeted: already
            predicted as the target) before any edit; not added.
        added: fooled texts that joined the pool (those not in it already).
        pool_size: adversarial texts in the pool after the round.
        queries: model queries of the round's searches (texts evaluated, verification excluded).
        seconds: wall time of the round (seconds).
    """

    attacked: int
    fooled: int
    misclassified: int
    added: int
    pool_size: int
    queries: int
    seconds: float


@dataclass(frozen=True)
class TextEpochMetrics:
    """What one epoch of :func:`fit_text` did; one line of a metrics file (JSON lines).

    Attributes:
        epoch: 1-based epoch number.
        lr: learning rate at the epoch's last batch.
        loss: mean cross-entropy over the epoch's texts (nats).
        train_accuracy: share of the epoch's texts (pool included) classified correctly, measured
            on each batch before its update, in [0, 1].
        n_train: texts trained on in the epoch: the training texts plus the pool.
        augment: the round run just before the epoch, ``None`` when none ran.
        time_s: wall time of the epoch, its round included (seconds).
    """

    epoch: int
    lr: float
    loss: float
    train_accuracy: float
    n_train: int
    augment: AugmentRound | None
    time_s: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``augment`` a nested dict or ``None``)."""
        return asdict(self)


@dataclass(frozen=True)
class AugmentedText:
    """One adversarial text added to the training data (lineage).

    Attributes:
        epoch: the 1-based epoch before which its round ran (the first epoch trained on it).
        source: index of the attacked text in the training texts given to :func:`fit_text`.
        attack: registry name of the attack that made it.
        label: its true label (the source's), which it is trained with.
        target: the attacker's target class (targeted threats), else ``None``.
        text: the adversarial text.
        edits: the edits that turned the source into it, as dicts of
            :class:`~robustops.attacks.text.TextEdit` (``position``, ``kind``, ``before``,
            ``after``, ``score_change``).
    """

    epoch: int
    source: int
    attack: str
    label: int
    target: int | None
    text: str
    edits: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class TextTrainResult:
    """The outcome of :func:`fit_text`.

    Attributes:
        history: one :class:`TextEpochMetrics` per epoch.
        augmented: every adversarial text added to the pool, round after round (with
            ``pool: replace`` also those of earlier rounds, which were trained on until the
            next round replaced them).
        wall_time_s: wall time of the call (seconds).
    """

    history: list[TextEpochMetrics]
    augmented: list[AugmentedText]
    wall_time_s: float


_UNUSED: dict[str, str] = {
    "objective": "it minimises cross-entropy on texts; harden a text model with augment",
    "threats": "tensor perturbations; the augmentation threat is augment.threat",
    "curriculum": "there is no perturbation budget to schedule",
    "awp": "no adversarial weight perturbation for text models",
    "validation": "no holdout; evaluate the trained model instead",
    "early_stopping": "no validation to stop on",
    "guard": "no catastrophic-overfitting guard for text models",
    "keep_best": "no validation: the last epoch's weights are kept",
    "deterministic": "it is always deterministic on CPU",
    "bounds": "texts have no input bounds",
    "memory_format": "texts are not image batches",
    "inner_precision": "the attacks query the model in float32",
    "grad_clip": "no gradient clipping",
    "weight_decay": "SparseAdam has no weight decay",
    "optimizer": "always SparseAdam for the embedding and Adam for the output layer",
}


def _explicit(value: Any) -> bool:
    """Whether an explicitly given section holds something: a non-empty list, a model with
    fields set (recursively), anything else but ``None``."""
    if value is None:
        return False
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, BaseModel):
        return any(_explicit(getattr(value, f)) for f in value.model_fields_set)
    return True


def text_recipe_errors(recipe: BaseModel) -> list[tuple[str, str]]:
    """``("train.<field>", message)`` for every field of ``recipe`` (a
    :class:`~robustops.training.recipe.Recipe` or a subclass) that the text trainer does not use
    but the recipe sets explicitly: ``objective`` other than ``standard``, a non-empty
    ``threats``, a ``curriculum``/``validation``/``optimizer`` section with something set,
    ``awp``/``early_stopping``/``guard``, and the scalars ``keep_best``, ``deterministic``,
    ``bounds``, ``memory_format``, ``inner_precision``, ``grad_clip``, ``weight_decay``.
    Fields it does not know (a subclass's ``out``, ``checkpoint_dir``, …) are ignored."""
    errors: list[tuple[str, str]] = []
    for name in sorted(recipe.model_fields_set):
        why = _UNUSED.get(name)
        if why is None:
            continue
        value = getattr(recipe, name)
        if name == "objective":
            if getattr(value, "name", "standard") == "standard":
                continue
        elif not _explicit(value):
            continue
        errors.append((f"train.{name}", f"not used by the text trainer ({why})"))
    return errors


def _round_before(spec: AugmentSpec, epoch: int) -> bool:
    """Whether an augmentation round runs before (1-based) ``epoch``."""
    return epoch >= spec.start_epoch and (epoch - spec.start_epoch) % spec.every == 0


def _derive_seed(base: int, *parts: object) -> int:
    """A 63-bit seed from ``base`` and ``parts`` (stable across runs and platforms)."""
    key = "\x00".join(str(p) for p in (base, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _labels(labels: Tensor | Sequence[int] | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)


class _Pool:
    """The adversarial texts trained on: encoded ids (``encode(text)`` of each: n-gram ids for
    the char n-gram model, the text itself for a model that tokenizes per batch), labels, and
    membership by text+label."""

    def __init__(self, encode: Callable[[str], Any]) -> None:
        self.encode = encode
        self.ids: list[Any] = []
        self.labels: list[int] = []
        self.keys: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return len(self.ids)

    def clear(self) -> None:
        self.ids.clear()
        self.labels.clear()
        self.keys.clear()

    def label_tensor(self) -> Tensor:
        """The pool's labels ``(len(self),)`` int64."""
        return torch.tensor(self.labels, dtype=torch.int64)


def _encode_one(classifier: TorchTextClassifier, text: str) -> Tensor:
    vocab = classifier.vocab
    return torch.tensor(vocab.ids_of(vocab.ngrams_of(text)), dtype=torch.int64)


@dataclass(frozen=True)
class _TextData:
    """What every augmentation round of one :func:`fit_text` call attacks.

    Attributes:
        classifier: the model being trained (attacked in eval mode through ``predict_logits``).
        texts: the training texts, ``N`` strings.
        y: their labels ``(N,)`` int64.
        seed: the base seed the rounds derive their draw and attack seeds from.
    """

    classifier: TextClassifier
    texts: list[str]
    y: Tensor
    seed: int


@dataclass
class _Round:
    """One augmentation round's bookkeeping: the pool it adds to and what it counted."""

    data: _TextData
    epoch: int
    pool: _Pool
    fooled: int = 0
    misclassified: int = 0
    queries: int = 0
    added: list[AugmentedText] = field(default_factory=list)

    def attack(self, attack: Attack, sources: Tensor, targets: Tensor | None) -> None:
        """Attack the training texts at indices ``sources`` ``(S,)`` (targets ``(S,)`` for a
        targeted threat) and add every text that fooled the model to the pool."""
        data = self.data
        idx = sources.tolist()
        result = attack(
            data.classifier, [data.texts[i] for i in idx], data.y[sources], targets=targets
        )
        self.queries += int(result.queries.sum())
        for k, src in enumerate(idx):
            if not bool(result.success[k]):
                continue
            if not result.details[k]:
                self.misclassified += 1
                continue
            self.fooled += 1
            self._add(
                AugmentedText(
                    epoch=self.epoch,
                    source=int(src),
                    attack=attack.name,
                    label=int(data.y[src]),
                    target=int(targets[k]) if targets is not None else None,
                    text=result.adversarial[k],
                    edits=[asdict(e) for e in result.details[k]],
                )
            )

    def _add(self, text: AugmentedText) -> None:
        key = (text.text, text.label)
        if key in self.pool.keys:
            return
        self.pool.keys.add(key)
        self.pool.ids.append(self.pool.encode(text.text))
        self.pool.labels.append(text.label)
        self.added.append(text)


def _augment_round(
    data: _TextData, spec: AugmentSpec, epoch: int, pool: _Pool
) -> tuple[AugmentRound, list[AugmentedText]]:
    """Run the round before ``epoch``: attack a draw of the training texts, add what fooled the
    model to ``pool`` (emptied first with ``pool: replace``)."""
    t0 = time.perf_counter()
    attacks = spec.build_attacks(_derive_seed(data.seed, "augment-attack", epoch))
    gen = make_generator(_derive_seed(data.seed, "augment-draw", epoch))
    candidates = torch.nonzero(spec.threat.attacked(data.y)).flatten()
    draw = torch.randperm(candidates.numel(), generator=gen)[: spec.samples]
    picked = candidates[draw].sort().values
    targets = spec.threat.draw_targets(data.y[picked], data.classifier.num_classes, gen)
    if spec.pool == "replace":
        pool.clear()
    rnd = _Round(data, epoch, pool)
    for j, attack in enumerate(attacks):
        share = torch.arange(j, picked.numel(), len(attacks))
        if share.numel():
            rnd.attack(attack, picked[share], targets[share] if targets is not None else None)
    stats = AugmentRound(
        attacked=int(picked.numel()),
        fooled=rnd.fooled,
        misclassified=rnd.misclassified,
        added=len(rnd.added),
        pool_size=len(pool),
        queries=rnd.queries,
        seconds=time.perf_counter() - t0,
    )
    return stats, rnd.added


def _checked_labels(
    classifier: TextClassifier,
    texts: Sequence[str],
    labels: Tensor | Sequence[int] | np.ndarray,
    recipe: Recipe,
) -> Tensor:
    """The labels ``(N,)`` int64, after refusing a recipe the text trainer cannot follow, no
    texts, labels that do not match the texts or the classes, and invalid augmentation."""
    errors = text_recipe_errors(recipe)
    if errors:
        raise SpecError(errors)
    if isinstance(texts, str) or len(texts) == 0:
        raise SpecError.single("text.texts", "no training texts (need a sequence of strings)")
    y = _labels(labels)
    if y.shape[0] != len(texts):
        raise SpecError.single("text.labels", f"{y.shape[0]} labels for {len(texts)} texts")
    k = classifier.num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise SpecError.single("text.labels", f"must be class indices in [0, {k})")
    spec = recipe.augment
    if spec is not None:
        try:
            spec.build_attacks(0)  # fail before training, not at the first round
        except SpecError as exc:
            raise SpecError([(f"train.{p}", m) for p, m in exc.errors]) from None
        if spec.threat.target_class is not None and spec.threat.target_class >= k:
            raise SpecError.single(
                "train.augment.threat.target_class",
                f"{spec.threat.target_class} is not a class of a {k}-class model",
            )
    return y


@dataclass(frozen=True)
class _EpochTotals:
    """Sums over one epoch: loss (nats, summed over texts), texts classified correctly, and the
    learning rate at the last batch."""

    loss: float
    correct: int
    lr: float


class _TextLoop:
    """The update of a :class:`~robustops.text.models.EmbeddingBagClassifier`: ``SparseAdam``
    (``Adam`` for a dense embedding) for the embedding, ``Adam`` for the output layer,
    cross-entropy, the learning rate set every batch from ``recipe.schedule``."""

    def __init__(self, classifier: TorchTextClassifier, recipe: Recipe) -> None:
        self.module = classifier.module
        self.recipe = recipe
        embedding_params = list(self.module.embedding.parameters())
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam(embedding_params, lr=recipe.lr)
            if self.module.embedding.sparse
            else torch.optim.Adam(embedding_params, lr=recipe.lr),
            torch.optim.Adam(self.module.fc.parameters(), lr=recipe.lr),
        ]
        self.loss_fn = nn.CrossEntropyLoss()

    def epoch(self, epoch: int, ids: list[Tensor], y: Tensor, order: list[int]) -> _EpochTotals:
        """Train one (1-based) ``epoch`` on the encoded texts ``ids`` (one ``(L_i,)`` int64 tensor
        of n-gram ids per text) with labels ``y`` ``(N,)``, in batches taken along ``order``."""
        recipe = self.recipe
        n_batches = math.ceil(len(ids) / recipe.batch_size)
        total_loss, correct, lr = 0.0, 0, recipe.lr
        for b, start in enumerate(range(0, len(ids), recipe.batch_size)):
            lr = learning_rate(recipe.schedule, recipe.lr, epoch - 1 + b / n_batches, recipe.epochs)
            batch = order[start : start + recipe.batch_size]
            loss, logits = self._step(lr, [ids[i] for i in batch], y[batch])
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.detach().argmax(dim=1) == y[batch]).sum())
        return _EpochTotals(loss=total_loss, correct=correct, lr=lr)

    def _step(self, lr: float, parts: list[Tensor], yb: Tensor) -> tuple[Tensor, Tensor]:
        """One update at learning rate ``lr`` on a batch; returns ``(mean loss, logits)``."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        lengths = torch.tensor([0] + [p.numel() for p in parts[:-1]], dtype=torch.int64)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        logits = self.module(torch.cat(parts), torch.cumsum(lengths, 0))
        loss = self.loss_fn(logits, yb)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return loss, logits


def fit_text(
    classifier: TorchTextClassifier,
    texts: Sequence[str],
    labels: Tensor | Sequence[int] | np.ndarray,
    recipe: Recipe,
    *,
    seed: int | torch.Generator = 0,
    on_epoch: Callable[[TextEpochMetrics], None] | None = None,
) -> TextTrainResult:
    """Train ``classifier.module`` in place on ``texts`` with labels ``labels`` ``(N,)`` (class
    indices in ``[0, classifier.num_classes)``) following ``recipe``, with adversarial data
    augmentation when ``recipe.augment`` is set (see the module doc).

    The recipe's ``epochs``, ``batch_size`` (texts per update), ``lr`` (peak learning rate),
    ``schedule`` (evaluated every batch at fractional epoch progress) and ``augment`` are used;
    a recipe that sets other fields explicitly is refused (:func:`text_recipe_errors`), as are
    invalid augmentation attacks (``train.augment.attacks.J.<param>``).

    Args:
        classifier: e.g. from :func:`~robustops.text.models.char_ngram_classifier`; its
            ``preprocess`` applies to the training and the adversarial texts. Left in eval mode.
        seed: seeds the batch order, and (derived with the epoch) the augmentation draws and
            attacks; a generator is used as is for the batch order (its state advances), the
            derived seeds then come from its ``initial_seed()``.
        on_epoch: called with each epoch's metrics after the epoch.

    Returns a :class:`TextTrainResult` (per-epoch metrics and the lineage of every adversarial
    text trained on).
    """
    t_start = time.perf_counter()
    y = _checked_labels(classifier, texts, labels, recipe)
    gen = make_generator(seed)
    data = _TextData(classifier, list(texts), y, seed=int(gen.initial_seed()))
    encoded = [_encode_one(classifier, t) for t in classifier.prepare(data.texts)]
    loop = _TextLoop(classifier, recipe)
    spec = recipe.augment
    pool = _Pool(lambda text: _encode_one(classifier, classifier.prepare([text])[0]))
    history: list[TextEpochMetrics] = []
    augmented: list[AugmentedText] = []
    classifier.module.train()
    for epoch in range(1, recipe.epochs + 1):
        t_epoch = time.perf_counter()
        stats: AugmentRound | None = None
        if spec is not None and _round_before(spec, epoch):
            stats, added = _augment_round(data, spec, epoch, pool)
            augmented.extend(added)
            classifier.module.train()
        ids_all, y_all = encoded + pool.ids, torch.cat([y, pool.label_tensor()])
        n = len(ids_all)
        totals = loop.epoch(epoch, ids_all, y_all, torch.randperm(n, generator=gen).tolist())
        metrics = TextEpochMetrics(
            epoch=epoch,
            lr=totals.lr,
            loss=totals.loss / n,
            train_accuracy=totals.correct / n,
            n_train=n,
            augment=stats,
            time_s=time.perf_counter() - t_epoch,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    classifier.module.eval()
    return TextTrainResult(
        history=history, augmented=augmented, wall_time_s=time.perf_counter() - t_start
    )


def train_text_classifier(
    texts: Sequence[str],
    labels: Tensor | Sequence[int] | np.ndarray,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.02,
    seed: int = 0,
    embed_dim: int = 64,
    ngram_range: tuple[int, int] = (1, 4),
    vocab_size: int = 50_000,
    min_count: int = 2,
    lowercase: bool = True,
    num_classes: int | None = None,
    preprocess: Preprocess | None = None,
) -> TorchTextClassifier:
    """Build a :class:`~robustops.text.models.CharNgramVocab` from ``texts`` and train an
    :class:`~robustops.text.models.EmbeddingBagClassifier` on them with Adam and cross-entropy:
    shorthand for :func:`~robustops.text.models.char_ngram_classifier` then :func:`fit_text`
    with a constant learning rate.

    Deterministic given ``seed`` (initialisation and batch order come from one generator; the
    CPU kernels used are deterministic). ``preprocess`` is applied to the training texts and
    kept in the returned classifier. With the defaults it reaches ~98% test accuracy on SMS spam
    in about two seconds on one CPU thread.
    """
    if len(texts) == 0:
        raise SpecError.single("text.texts", "no training texts")
    y = _labels(labels)
    if y.shape[0] != len(texts):
        raise SpecError.single("text.labels", f"{y.shape[0]} labels for {len(texts)} texts")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise SpecError.single("text.training", "epochs, batch_size and lr must be positive")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    gen = make_generator(seed)  # one generator: initialisation, then the batch order
    classifier = char_ngram_classifier(
        texts,
        num_classes=k,
        embed_dim=embed_dim,
        ngram_range=ngram_range,
        vocab_size=vocab_size,
        min_count=min_count,
        lowercase=lowercase,
        preprocess=preprocess,
        seed=gen,
    )
    fit_text(classifier, texts, y, Recipe(epochs=epochs, batch_size=batch_size, lr=lr), seed=gen)
    return classifier
