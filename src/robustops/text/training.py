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
then ``fit_text(..., seed=g)`` with one generator ``g`` is exactly
:func:`~robustops.text.models.train_text_classifier`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.errors import SpecError
from robustops.text.models import TorchTextClassifier
from robustops.training.recipe import AugmentSpec, Recipe
from robustops.training.schedules import learning_rate

__all__ = [
    "AugmentRound",
    "AugmentedText",
    "TextEpochMetrics",
    "TextTrainResult",
    "fit_text",
    "text_recipe_errors",
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
            :class:`~robustops.text.attacks.TextEdit` (``position``, ``kind``, ``before``,
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
    """The adversarial texts trained on: encoded ids, labels, and membership by text+label."""

    def __init__(self) -> None:
        self.ids: list[Tensor] = []
        self.labels: list[int] = []
        self.keys: set[tuple[str, int]] = set()

    def __len__(self) -> int:
        return len(self.ids)

    def clear(self) -> None:
        self.ids.clear()
        self.labels.clear()
        self.keys.clear()


def _encode_one(classifier: TorchTextClassifier, text: str) -> Tensor:
    vocab = classifier.vocab
    return torch.tensor(vocab.ids_of(vocab.ngrams_of(text)), dtype=torch.int64)


def _augment_round(
    classifier: TorchTextClassifier,
    texts: Sequence[str],
    y: Tensor,
    spec: AugmentSpec,
    epoch: int,
    base_seed: int,
    pool: _Pool,
) -> tuple[AugmentRound, list[AugmentedText]]:
    """Run the round before ``epoch``: attack a draw of the training texts, add what fooled the
    model to ``pool`` (emptied first with ``pool: replace``)."""
    t0 = time.perf_counter()
    attacks = spec.build_attacks(_derive_seed(base_seed, "augment-attack", epoch))
    gen = make_generator(_derive_seed(base_seed, "augment-draw", epoch))
    candidates = torch.nonzero(spec.threat.attacked(y)).flatten()
    draw = torch.randperm(candidates.numel(), generator=gen)[: spec.samples]
    picked = candidates[draw].sort().values
    labels = y[picked]
    targets = spec.threat.draw_targets(labels, classifier.num_classes, gen)
    if spec.pool == "replace":
        pool.clear()
    added: list[AugmentedText] = []
    fooled = misclassified = queries = 0
    for j, attack in enumerate(attacks):
        share = torch.arange(j, picked.numel(), len(attacks))
        if share.numel() == 0:
            continue
        sources = picked[share].tolist()
        result = attack(
            classifier,
            [texts[i] for i in sources],
            labels[share],
            targets=targets[share] if targets is not None else None,
        )
        queries += int(result.queries.sum())
        for k, src in enumerate(sources):
            if not bool(result.success[k]):
                continue
            if not result.details[k]:
                misclassified += 1
                continue
            fooled += 1
            label = int(y[src])
            key = (result.adversarial[k], label)
            if key in pool.keys:
                continue
            pool.keys.add(key)
            pool.ids.append(_encode_one(classifier, classifier.prepare([key[0]])[0]))
            pool.labels.append(label)
            added.append(
                AugmentedText(
                    epoch=epoch,
                    source=int(src),
                    attack=attack.name,
                    label=label,
                    target=int(targets[share[k]]) if targets is not None else None,
                    text=key[0],
                    edits=[asdict(e) for e in result.details[k]],
                )
            )
    stats = AugmentRound(
        attacked=int(picked.numel()),
        fooled=fooled,
        misclassified=misclassified,
        added=len(added),
        pool_size=len(pool),
        queries=queries,
        seconds=time.perf_counter() - t0,
    )
    return stats, added


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
    gen = make_generator(seed)
    base_seed = int(gen.initial_seed())
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
    texts = list(texts)
    module = classifier.module
    encoded = [_encode_one(classifier, t) for t in classifier.prepare(texts)]
    embedding_params = list(module.embedding.parameters())
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SparseAdam(embedding_params, lr=recipe.lr)
        if module.embedding.sparse
        else torch.optim.Adam(embedding_params, lr=recipe.lr),
        torch.optim.Adam(module.fc.parameters(), lr=recipe.lr),
    ]
    loss_fn = nn.CrossEntropyLoss()
    pool = _Pool()
    history: list[TextEpochMetrics] = []
    augmented: list[AugmentedText] = []
    module.train()
    for epoch in range(1, recipe.epochs + 1):
        t_epoch = time.perf_counter()
        stats: AugmentRound | None = None
        if spec is not None and _round_before(spec, epoch):
            stats, added = _augment_round(classifier, texts, y, spec, epoch, base_seed, pool)
            augmented.extend(added)
            module.train()
        if len(pool):
            ids_all = encoded + pool.ids
            y_all = torch.cat([y, torch.tensor(pool.labels, dtype=torch.int64)])
        else:
            ids_all, y_all = encoded, y
        n = len(ids_all)
        n_batches = math.ceil(n / recipe.batch_size)
        order = torch.randperm(n, generator=gen).tolist()
        total_loss = 0.0
        correct = 0
        lr = recipe.lr
        for b, start in enumerate(range(0, n, recipe.batch_size)):
            lr = learning_rate(recipe.schedule, recipe.lr, epoch - 1 + b / n_batches, recipe.epochs)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            batch = order[start : start + recipe.batch_size]
            parts = [ids_all[i] for i in batch]
            lengths = torch.tensor([0] + [p.numel() for p in parts[:-1]], dtype=torch.int64)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            logits = module(torch.cat(parts), torch.cumsum(lengths, 0))
            yb = y_all[batch]
            loss = loss_fn(logits, yb)
            loss.backward()
            for opt in optimizers:
                opt.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.detach().argmax(dim=1) == yb).sum())
        metrics = TextEpochMetrics(
            epoch=epoch,
            lr=lr,
            loss=total_loss / n,
            train_accuracy=correct / n,
            n_train=n,
            augment=stats,
            time_s=time.perf_counter() - t_epoch,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    module.eval()
    return TextTrainResult(
        history=history, augmented=augmented, wall_time_s=time.perf_counter() - t_start
    )
