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

__all__ = ["EpochStats", "StandardConfig", "accuracy", "train_standard"]


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


@dataclass(frozen=True)
class StandardConfig:
    """How :func:`train_standard` trains (checked at construction, :class:`SpecError` naming
    the field otherwise).

    Attributes:
        epochs: passes over the training data (int >= 1).
        batch_size: samples per update (int >= 1).
        lr: Adam's learning rate (> 0).
        weight_decay: Adam's (L2) weight decay.
        seed: seeds the shuffling.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError.single(f"train.{name}", f"must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise SpecError.single("train.lr", f"must be > 0, got {self.lr!r}")


def train_standard(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    config: StandardConfig | None = None,
    *,
    validation: tuple[Tensor, Tensor] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` with Adam on cross-entropy as ``config`` says (default
    :class:`StandardConfig`); shuffling is drawn from ``config.seed``.

    Inputs ``(N, ...)`` in the model's input space, labels ``(N,)``; ``validation`` is a held-out
    ``(inputs, labels)`` pair whose accuracy each :class:`EpochStats` reports (NaN without one).
    The model is trained on its own device and left in eval mode. Returns one
    :class:`EpochStats` per epoch.
    """
    cfg = config or StandardConfig()
    device = next(model.parameters()).device
    gen = make_generator(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[EpochStats] = []
    n = x_train.shape[0]
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total_loss += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == yb).sum())
        model.eval()
        val = accuracy(model, *validation) if validation is not None else float("nan")
        stats = EpochStats(epoch + 1, total_loss / n, correct / n, val)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return history
