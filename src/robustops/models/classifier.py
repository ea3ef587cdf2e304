"""The ``Classifier`` notion: a ``torch.nn.Module`` returning logits, or, for black-box use,
anything with ``predict_proba``, adapted into a module returning log-probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Classifier",
    "ProbaClassifier",
    "as_classifier",
    "eval_mode",
    "predict_logits",
    "resolve_device",
]


@runtime_checkable
class SupportsPredictProba(Protocol):
    """scikit-learn style: ``predict_proba(array (N, D)) -> array (N, K)``."""

    def predict_proba(self, x: Any) -> Any: ...


Classifier = nn.Module | SupportsPredictProba
"""What RobustOps attacks and evaluates."""


class ProbaClassifier(nn.Module):
    """Wraps a ``predict_proba`` model as a module that returns ``log(p)`` ``(N, K)``.

    Not differentiable (``differentiable = False``): white-box attacks refuse it, score-based
    and decision-based attacks use it. Inputs are flattened to ``(N, D)`` numpy arrays unless
    ``flatten=False``.
    """

    differentiable = False

    def __init__(
        self, model: SupportsPredictProba, flatten: bool = True, eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.model = model
        self.flatten = flatten
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Log-probabilities ``(N, K)`` on ``x``'s device."""
        arr = x.detach().to("cpu").numpy()
        if self.flatten:
            arr = arr.reshape(arr.shape[0], -1)
        proba = np.asarray(self.model.predict_proba(arr), dtype=np.float32)
        return torch.from_numpy(proba).to(x.device).clamp_min(self.eps).log()


def as_classifier(model: Classifier) -> nn.Module:
    """A module RobustOps can attack: ``model`` itself, or ``model`` wrapped in
    :class:`ProbaClassifier` when it only offers ``predict_proba``."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, SupportsPredictProba):
        return ProbaClassifier(model)
    raise TypeError(
        f"not a classifier: {type(model).__name__} (need an nn.Module or predict_proba)"
    )


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Every submodule of ``model`` (an ``nn.Module``; anything else is left alone) in eval mode
    for the block, each restored to its own mode afterwards (submodules' modes may differ from
    their parent's, e.g. a frozen batch-norm inside a model in training)."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def resolve_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU without any)."""
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    inputs: Tensor,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> Tensor:
    """``model``'s outputs ``(N, K)`` on ``inputs`` ``(N, ...)``, in batches of ``batch_size`` on
    ``device`` (default: the model's), returned on the CPU. The model's mode is left as is."""
    device = resolve_device(model, device)
    out = [
        model(inputs[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, inputs.shape[0], batch_size)
    ]
    if out:
        return torch.cat(out)
    return torch.empty(0, 0)
