"""Standard (non-adversarial) training of a classifier on an embedded data set.

The full trainer with adversarial objectives lives here later; this is the baseline the demo
attacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.errors import SpecError

__all__ = ["EpochStats", "accuracy", "train_standard"]


@dataclass(frozen=True)
class EpochStats:
    """One epoch's figures: mean training loss and accuracy on the held-out inputs."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Share of ``x`` ``(N, ...)`` that ``model`` labels as ``y`` ``(N,)``, in [0, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


def train_standard(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` with Adam on cross-entropy; shuffling is drawn from ``seed``.

    Inputs ``(N, ...)`` in the model's input space, labels ``(N,)``; the model is trained on its
    own device and left in eval mode. Returns one :class:`EpochStats` per epoch.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise SpecError.single(f"train.{name}", f"must be an int >= 1, got {value!r}")
    if not lr > 0:
        raise SpecError.single("train.lr", f"must be > 0, got {lr!r}")
    device = next(model.parameters()).device
    gen = make_generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[EpochStats] = []
    n = x_train.shape[0]
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total_loss += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == yb).sum())
        model.eval()
        val = (
            accuracy(model, x_val, y_val)
            if x_val is not None and y_val is not None
            else float("nan")
        )
        stats = EpochStats(epoch + 1, total_loss / n, correct / n, val)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return history
