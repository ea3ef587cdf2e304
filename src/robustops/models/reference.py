"""Small reference models for the embedded image data sets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robustops.trust import builtin

__all__ = ["MLP", "SmallCNN", "mlp", "small_cnn"]


class SmallCNN(nn.Module):
    """Two conv blocks (3×3, ReLU, 2×2 max-pool) then two linear layers.

    Input ``(N, C, H, W)`` in [0, 1]; output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        width: int = 32,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        side = input_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        out: Tensor = self.head(self.features(x))
        return out


class MLP(nn.Module):
    """Flatten, then fully connected ReLU layers. Input ``(N, ...)``; logits ``(N, num_classes)``."""

    def __init__(
        self, input_dim: int = 784, hidden: Sequence[int] = (256, 256), num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = input_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        out: Tensor = self.net(x)
        return out


@builtin
def small_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    width: int = 32,
    hidden: int = 128,
    seed: int = 0,
) -> SmallCNN:
    """A :class:`SmallCNN` whose initial weights are drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(in_channels, num_classes, input_size, width, hidden)


@builtin
def mlp(
    input_dim: int = 784, hidden: Sequence[int] = (256, 256), num_classes: int = 10, seed: int = 0
) -> MLP:
    """An :class:`MLP` whose initial weights are drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(input_dim, tuple(hidden), num_classes)
