"""Fine-tuning a Hugging Face sequence-classification model
(:class:`~robustops.text.hf.HFTextClassifier`) with a recipe, optionally with adversarial data
augmentation.

:func:`fit_hf` is :func:`~robustops.training.text.fit_text` for a transformer: the same recipe
fields (``epochs``, ``batch_size``, ``lr``, ``schedule``, ``augment``; the others refused by
:func:`~robustops.training.text.text_recipe_errors`), the same augmentation rounds (the round
code of :mod:`robustops.training.text` is reused as is: draw, attack through ``predict_logits``,
pool of adversarial texts with their true labels) and the same metrics and lineage
(:class:`~robustops.training.text.TextTrainResult`). The update is ``AdamW`` without weight
decay on cross-entropy over the model's logits, texts tokenized per batch (truncated to the
classifier's ``max_length``), dropout active during updates.

Determinism: batch order and augmentation seeds as in ``fit_text``; the weights are
reproducible on the CPU for a given ``torch`` thread count (dropout draws from torch's global
generator, seeded from ``seed`` at the start).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.text.hf import HFTextClassifier
from robustops.training.recipe import Recipe
from robustops.training.schedules import learning_rate
from robustops.training.text import (
    AugmentedText,
    AugmentRound,
    TextEpochMetrics,
    TextTrainResult,
    _augment_round,
    _checked_labels,
    _Pool,
    _round_before,
    _TextData,
)

__all__ = ["fit_hf"]


def fit_hf(
    classifier: HFTextClassifier,
    texts: Sequence[str],
    labels: Tensor | Sequence[int] | np.ndarray,
    recipe: Recipe,
    *,
    seed: int | torch.Generator = 0,
    on_epoch: Callable[[TextEpochMetrics], None] | None = None,
) -> TextTrainResult:
    """Fine-tune ``classifier.module`` in place on ``texts`` with labels ``labels`` ``(N,)``
    (class indices in ``[0, classifier.num_classes)``) following ``recipe``, with adversarial data
    augmentation when ``recipe.augment`` is set (rounds as in
    :func:`~robustops.training.text.fit_text`).

    Args:
        classifier: e.g. from :meth:`HFTextClassifier.load`; left in eval mode.
        seed: seeds the batch order, dropout, and (derived with the epoch) the augmentation draws
            and attacks.
        on_epoch: called with each epoch's metrics after the epoch.

    Returns a :class:`~robustops.training.text.TextTrainResult`; save the model with
    :meth:`HFTextClassifier.save`.
    """
    t_start = time.perf_counter()
    y = _checked_labels(classifier, texts, labels, recipe)
    gen = make_generator(seed)
    data = _TextData(classifier, list(texts), y, seed=int(gen.initial_seed()))
    torch.manual_seed(data.seed)  # dropout
    module = classifier.module
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    spec, pool = recipe.augment, _Pool(lambda text: text)
    history: list[TextEpochMetrics] = []
    augmented: list[AugmentedText] = []
    for epoch in range(1, recipe.epochs + 1):
        t_epoch = time.perf_counter()
        stats: AugmentRound | None = None
        if spec is not None and _round_before(spec, epoch):
            stats, added = _augment_round(data, spec, epoch, pool)
            augmented.extend(added)
        all_texts: list[str] = data.texts + pool.ids
        y_all = torch.cat([y, pool.label_tensor()])
        n = len(all_texts)
        order = torch.randperm(n, generator=gen)
        n_batches = -(-n // recipe.batch_size)
        total_loss, correct, lr = 0.0, 0, recipe.lr
        module.train()
        for b, start in enumerate(range(0, n, recipe.batch_size)):
            lr = learning_rate(recipe.schedule, recipe.lr, epoch - 1 + b / n_batches, recipe.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[start : start + recipe.batch_size]
            yb = y_all[batch].to(classifier.device)
            logits = classifier.logits([all_texts[i] for i in batch.tolist()])
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.detach().argmax(dim=1) == yb).sum())
        module.eval()
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
    return TextTrainResult(
        history=history, augmented=augmented, wall_time_s=time.perf_counter() - t_start
    )
