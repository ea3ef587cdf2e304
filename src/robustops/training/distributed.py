"""Scale-out with PyTorch's own runtime: ``torchrun`` sets the environment, we join the group.

Design, so that N processes compute what one process would:

* every process builds the same model from the same seed (and DDP broadcasts rank 0's weights);
* :class:`torch.utils.data.DistributedSampler` draws one permutation per epoch (from the seed and
  the epoch) and gives rank ``r`` the positions ``r, r + N, r + 2N, …``; with a local batch of
  ``B / N`` samples, the N local batches of step ``k`` together are exactly positions
  ``[kB, (k+1)B)`` of that permutation, the global batch a single process would take;
* each process averages its loss over its local batch and DDP averages gradients across
  processes, so the update is the mean over the global batch;
* random draws (random starts, patch positions, noise) are made for the whole global batch from
  a generator that every rank advances identically, and each rank keeps its rows ``r::N``;
* only rank 0 writes files; the others wait at a barrier.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistContext", "env_rank", "init_distributed"]


def env_rank() -> int:
    """This process's rank as ``torchrun`` announces it (``RANK``), 0 outside ``torchrun``."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group: ``rank`` of ``world_size`` (1 when alone).

    ``owns_group`` is true when :func:`init_distributed` created the process group, so the same
    code should destroy it (see :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    def rows(self, t: Tensor) -> Tensor:
        """This rank's rows ``rank::world_size`` of a tensor drawn for the global batch."""
        return t[self.rank :: self.world_size] if self.enabled else t

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` across processes, in place, and return it (a no-op when alone)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait for every process (a no-op when alone)."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device = "cpu", timeout_s: float = 600.0) -> DistContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), with gloo on CPU
    and NCCL on CUDA; return a single-process context otherwise.

    An already initialised default group is reused as is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext()
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=True)
