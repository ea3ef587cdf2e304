"""Fixtures shared by the attack tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from robustops.data import load_mnist_subset
from robustops.models import small_cnn
from robustops.training import StandardConfig, train_standard

N_EVAL = 200
"""Correctly classified test inputs the peer comparisons attack."""


@pytest.fixture(scope="session")
def half_width_cnn() -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    """A small CNN (half width, for speed) trained 2 epochs on the MNIST subset, and test data:
    all test inputs ``(1000, 1, 28, 28)`` with labels, and the first ``N_EVAL`` the model
    classifies correctly (torchattacks only attacks those, so random starts line up per sample)."""
    ds = load_mnist_subset()
    net = small_cnn(width=16, hidden=64, seed=0)
    train_standard(net, ds.x_train, ds.y_train, StandardConfig(epochs=2, seed=0))
    net.eval()
    with torch.no_grad():
        ok = net(ds.x_test).argmax(dim=1) == ds.y_test
    idx = ok.nonzero().squeeze(1)[:N_EVAL]
    return net, ds.x_test, ds.y_test, ds.x_test[idx], ds.y_test[idx]


@pytest.fixture(scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """The image-threat attacks run many small batches, where more intra-op threads only add
    overhead (a lot of it on a loaded machine: minutes with two threads on two busy cores,
    seconds with one): one thread for the module that asks, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
