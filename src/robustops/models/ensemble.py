"""Ensembles and multi-head models, attacked end to end as one model.

An :class:`Ensemble` averages its members' logits (``combine="logits"``) or probabilities
(``combine="probs"``, returned as log-probabilities so softmax-based code still applies). It is
an ordinary differentiable module: white-box attacks take gradients through every member, so
the ensemble's robust accuracy is measured against an attacker who knows all of it (Tramèr et
al. 2020: ensembles evaluated member by member overstate robustness).

Member disagreement (:meth:`Ensemble.disagreement`) is a per-input score in [0, 1]; inputs near
a decision boundary or off the data manifold tend to split the members, which makes it a cheap
anomaly signal for serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustops.trust import builtin

__all__ = ["Ensemble", "MultiHead", "ensemble"]

Combine = Literal["logits", "probs"]
Disagreement = Literal["vote", "js"]


class Ensemble(nn.Module):
    """Average of member classifiers, each a module mapping ``(N, ...)`` to logits ``(N, K)``.

    Args:
        members: two or more modules with the same number of classes.
        combine: ``"logits"``: mean of logits; ``"probs"``: ``log`` of the mean softmax.
        weights: non-negative member weights (normalised to sum 1); default equal.
    """

    weights: Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: Combine = "logits",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")
        w = torch.ones(len(members)) if weights is None else torch.tensor(list(weights))
        if w.shape != (len(members),) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"weights must be {len(members)} non-negative numbers with a positive sum"
            )
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits, stacked: ``(M, N, K)``."""
        return torch.stack([m(x) for m in self.members])

    def _combine(self, logits: Tensor) -> Tensor:
        w = self.weights.to(logits.dtype).view(-1, 1, 1)
        if self.combine == "logits":
            return (w * logits).sum(0)
        # log Σ_m w_m softmax(z_m), computed stably.
        return torch.logsumexp(logits.log_softmax(-1) + w.log(), dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """Combined logits (or log-probabilities for ``combine="probs"``) ``(N, K)``."""
        return self._combine(self.member_logits(x))

    @torch.no_grad()
    def disagreement(self, x: Tensor, kind: Disagreement = "vote") -> Tensor:
        """Per-input member disagreement ``(N,)`` in [0, 1].

        ``"vote"``: weighted share of members whose top class differs from the ensemble's.
        ``"js"``: generalised Jensen–Shannon divergence of the members' softmax distributions,
        divided by its maximum ``log M`` (0: all members agree exactly).
        """
        logits = self.member_logits(x)
        w = self.weights.to(logits.dtype)
        if kind == "vote":
            pred = self._combine(logits).argmax(-1)
            differs = (logits.argmax(-1) != pred.unsqueeze(0)).to(logits.dtype)
            return (w.view(-1, 1) * differs).sum(0)
        if kind == "js":
            m = len(self.members)
            if m == 1:
                return torch.zeros(x.shape[0], dtype=logits.dtype, device=logits.device)
            logp = logits.log_softmax(-1)
            p = logp.exp()
            mix = (w.view(-1, 1, 1) * p).sum(0)
            entropy_mix = -(mix * mix.clamp_min(1e-30).log()).sum(-1)
            entropy_members = -(p * logp).sum(-1)
            js = entropy_mix - (w.view(-1, 1) * entropy_members).sum(0)
            return (js / math.log(m)).clamp_(0.0, 1.0)
        raise ValueError(f"kind must be 'vote' or 'js', got {kind!r}")


class MultiHead(Ensemble):
    """A shared trunk with several heads, treated as an ensemble of the heads.

    ``trunk`` maps ``(N, ...)`` to features; each head maps features to logits ``(N, K)``. The
    trunk runs once per forward pass.
    """

    def __init__(
        self,
        trunk: nn.Module,
        heads: Sequence[nn.Module],
        combine: Combine = "logits",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(heads, combine, weights)
        self.trunk = trunk

    def member_logits(self, x: Tensor) -> Tensor:
        """Every head's logits on the shared features: ``(M, N, K)``."""
        features = self.trunk(x)
        return torch.stack([h(features) for h in self.members])


@builtin
def ensemble(
    members: Sequence[Mapping[str, Any]],
    combine: Combine = "logits",
    weights: Sequence[float] | None = None,
) -> Ensemble:
    """Factory for specs: ``members`` is a list of ``{"factory": "module:callable", "kwargs":
    {...}}``; the ensemble's weights load from one safetensors file like any model (save one with
    :func:`robustops.models.save_weights`)."""
    from robustops.models.loading import resolve_factory

    built = []
    for i, spec in enumerate(members):
        if not isinstance(spec, Mapping) or "factory" not in spec:
            raise ValueError(f"members.{i} must be a mapping with a 'factory' key")
        unknown = set(spec) - {"factory", "kwargs"}
        if unknown:
            raise ValueError(f"members.{i}: unknown keys {sorted(unknown)}")
        factory = resolve_factory(str(spec["factory"]), field=f"model.kwargs.members.{i}.factory")
        built.append(factory(**dict(spec.get("kwargs") or {})))
    return Ensemble(built, combine=combine, weights=weights)
