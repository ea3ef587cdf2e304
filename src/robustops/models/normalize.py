"""Input normalisation on the model side, so that attacks work in pixel space.

A model trained on normalised inputs (``(x - mean) / std``) is wrapped once; data, attacks and
the threat's budget and bounds then stay in the input space the user sees (images in [0, 1]),
the way Foolbox puts preprocessing in the model wrapper (torchattacks#145 is the complaint when
it is not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robustops.errors import SpecError

__all__ = ["Normalized"]


class Normalized(nn.Module):
    """``model((x - mean) / std)``, with ``mean`` and ``std`` per channel.

    Args:
        model: the wrapped model, taking normalised inputs.
        mean, std: one value per channel (dimension 1 of the input: ``C`` of ``(N, C, H, W)``,
            ``D`` of table rows ``(N, D)``), or a single value for all; ``std`` > 0.

    Shape:
        inputs ``(N, C, …)`` float in the data's own range; output: the wrapped model's logits.

    The buffers are not persistent: ``state_dict()`` holds the wrapped model's weights under
    ``model.``; the statistics come from the spec.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise SpecError.single("model.normalize", "give as many std values as mean values")
        if any(not s > 0 for s in std):
            raise SpecError.single("model.normalize.std", "every std must be > 0")
        self.model = model
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the wrapped model on the normalised ``x``."""
        shape = [1, -1] + [1] * (x.dim() - 2)
        return self.model((x - self.mean.view(shape)) / self.std.view(shape))  # type: ignore[no-any-return]
