"""Per-sample randomness: each sample's draws come from its own generator, seeded from the
attack's key and the sample's content, so an attack's result for a sample does not depend on
the batch it came in (what sharding the suite across processes, and running attacks on the
samples earlier ones left robust, need)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

from robustops._util import digest_seed

__all__ = ["SampleDraws", "SampleRandomness"]


class SampleRandomness:
    """Per-sample generators for a batch ``(N, ...)``, created on first use, each seeded from
    ``key`` (e.g. the attack, its options and seed) and a sha256 of its sample's dtype, shape and
    bytes: what a sample draws does not depend on the other samples of the batch, nor on the
    order they come in, so an attack gives a sample the same result alone, in any batch, or
    after other attacks have removed its neighbours."""

    def __init__(self, x: Tensor, key: str) -> None:
        self._x = x
        self._key = key
        self._gens: list[torch.Generator] | None = None

    def generators(self) -> list[torch.Generator]:
        """One generator per sample, on the batch's device."""
        if self._gens is None:
            data = self._x.detach().to("cpu").contiguous()
            self._gens = []
            for sample in data:
                h = hashlib.sha256(self._key.encode())
                h.update(f"{sample.dtype}{tuple(sample.shape)}".encode())
                h.update(sample.reshape(-1).view(torch.uint8).numpy().tobytes())
                gen = torch.Generator(device=self._x.device)
                gen.manual_seed(digest_seed(h.digest()))
                self._gens.append(gen)
        return self._gens

    def per_sample(self, draw: Callable[[int, torch.Generator], Tensor]) -> Tensor:
        """``draw(i, generator)`` for every sample ``i``, stacked: ``(N, ...)``."""
        return torch.stack([draw(i, g) for i, g in enumerate(self.generators())])

    def uniform(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``(N, *shape)`` uniform in [-1, 1), in ``like``'s dtype and device."""

        def draw(_: int, g: torch.Generator) -> Tensor:
            return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)

        return self.per_sample(draw) * 2 - 1

    def rand(self, idx: Tensor, like: Tensor) -> Tensor:
        """``(len(idx), *like.shape[1:])`` uniform in [0, 1) for the samples ``idx`` (each
        sample's generator advances only when it draws), in ``like``'s dtype and device."""
        gens = self.generators()
        return torch.stack(
            [
                torch.rand(like.shape[1:], generator=gens[i], device=like.device, dtype=like.dtype)
                for i in idx.tolist()
            ]
        )

    def rows(self, idx: Tensor | None = None) -> SampleDraws:
        """Draws for the samples ``idx`` (default: every sample of the batch), one row each, in
        that order (see :class:`SampleDraws`)."""
        gens = self.generators()
        chosen = gens if idx is None else [gens[i] for i in idx.tolist()]
        return SampleDraws(chosen)


class SampleDraws:
    """Row-wise draws (:class:`robustops.threats.geometry.RowDraws`): row ``r`` of every draw
    comes from generator ``r``, which advances only by what that row draws; so a sample's draws
    are the same whichever other samples are drawn with it."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self._gens = generators

    def __len__(self) -> int:
        return len(self._gens)

    def subset(self, keep: Tensor) -> SampleDraws:
        """The rows ``keep`` (a bool mask or indices over this object's rows)."""
        picked = keep.nonzero().squeeze(1) if keep.dtype == torch.bool else keep
        return SampleDraws([self._gens[i] for i in picked.tolist()])

    def _rows(self, shape: tuple[int, ...], draw: Callable[[torch.Generator], Tensor]) -> Tensor:
        if shape[0] != len(self._gens):
            raise ValueError(f"{shape[0]} rows asked of draws for {len(self._gens)} samples")
        if not self._gens:
            return torch.empty(shape)
        return torch.stack([draw(g) for g in self._gens])

    def rand(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``shape`` uniform in [0, 1), in ``like``'s dtype and device."""
        out = self._rows(
            shape,
            lambda g: torch.rand(shape[1:], generator=g, device=like.device, dtype=like.dtype),
        )
        return out.to(device=like.device, dtype=like.dtype)

    def randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``shape`` standard normal, in ``like``'s dtype and device."""
        out = self._rows(
            shape,
            lambda g: torch.randn(shape[1:], generator=g, device=like.device, dtype=like.dtype),
        )
        return out.to(device=like.device, dtype=like.dtype)

    def randint(self, low: int, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """``shape`` int64 uniform in ``[low, high)`` on ``device``."""
        out = self._rows(
            shape, lambda g: torch.randint(low, high, shape[1:], generator=g, device=device)
        )
        return out.to(device=device, dtype=torch.int64)
