"""Per-sample losses that attacks maximise. Each maps logits ``(N, K)`` to ``(N,)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ce_loss", "dlr_loss", "margin_loss"]


def ce_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Cross-entropy to the label (untargeted, to increase) or minus CE to the target."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def dlr_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020), scale invariant; needs ≥ 3 classes
    (≥ 4 when targeted).

    Untargeted: ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)``.
    Targeted: ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``.
    """
    sorted_logits, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        top_is_y = logits.argmax(dim=1) == labels
        z_other = torch.where(top_is_y, sorted_logits[:, 1], sorted_logits[:, 0])
        return -(z_y - z_other) / (sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    denom = sorted_logits[:, 0] - 0.5 * (sorted_logits[:, 2] + sorted_logits[:, 3]) + 1e-12
    return -(z_y - z_t) / denom


def margin_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Margin to misclassification, positive once adversarial: untargeted
    ``max_{i≠y} z_i - z_y``; targeted ``z_t - max_{i≠t} z_i``."""
    ref = labels if targets is None else targets
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    others = logits.scatter(1, ref[:, None], float("-inf")).amax(dim=1)
    return others - z_ref if targets is None else z_ref - others
