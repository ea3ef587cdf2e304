"""What the guard serves: one classifier with its modality, input contract and identity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from robustops.tabular import FeatureSchema

Modality = Literal["image", "text", "table"]


@dataclass
class ServedModel:
    """A classifier behind the guard.

    Attributes:
        name, version: how it is named in responses and logs (``version`` e.g. ``mnist@3``).
        weights_sha256: the served weights' hash (responses and the dashboard show it).
        modality: ``image`` (tensors of ``input_shape`` within ``bounds``), ``text`` (strings)
            or ``table`` (rows of ``schema``'s features in raw units).
        logits: the model: ``(N, *input_shape)`` float tensor (image; table: ``(N, D)`` scaled
            rows) or a list of N texts → ``(N, K)`` logits on the CPU.
        features: optional ``inputs → (logits (N, K), features (N, F))`` in one pass, when a
            feature-based anomaly score needs the model's features.
        num_classes, class_names: the label space.
        temperature: calibrated temperature (confidences are ``softmax(logits / T)``).
    """

    name: str
    modality: Modality
    logits: Callable[[Any], Tensor]
    num_classes: int
    version: str | None = None
    weights_sha256: str | None = None
    input_shape: tuple[int, ...] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    schema: FeatureSchema | None = None
    features: Callable[[Any], tuple[Tensor, Tensor | None]] | None = None
    class_names: Sequence[str] | None = None
    temperature: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    def outputs(self, inputs: Any) -> tuple[Tensor, Tensor | None]:
        """Logits ``(N, K)`` and, when the model has a feature pass, features ``(N, F)``."""
        if self.features is not None:
            return self.features(inputs)
        return self.logits(inputs), None

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity and input contract (``GET /v1/model``)."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "modality": self.modality,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "bounds": list(self.bounds),
            "features": self.schema.names if self.schema is not None else None,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "temperature": self.temperature,
        }


def module_logits(module: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """``logits`` of a torch module, in inference mode on its own device, returned on the CPU."""
    device = next(module.parameters(), torch.empty(0)).device

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            out: Tensor = module(x.to(device))
            return out.float().cpu()

    return run
