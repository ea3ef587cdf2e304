"""The budget of a threat on tensor inputs, checked from the inputs and the attack's outputs
alone: the evaluation suite calls :func:`check_budget` on every attack's result and does not
count a success whose input breaks it, whatever the attack claims.

One function per family of :class:`~robustops.threats.ThreatModel` (``linf``, ``l2``,
``patch``, ``spatial``, ``corruption``); texts (``word-edits``) are checked by
:func:`robustops.attacks.text.edits_within_budget`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robustops.attacks.base import Attack, AttackResult, perturbation_norm
from robustops.attacks.corruptions import corruption_within_budget
from robustops.attacks.patch import patch_side
from robustops.attacks.spatial import spatial_within_budget
from robustops.threats import ThreatModel

__all__ = ["BudgetCheck", "check_budget", "in_bounds"]

_RTOL, _ATOL = 1e-6, 1e-7  # float32 rounding allowed on a norm budget


@dataclass(frozen=True)
class BudgetCheck:
    """The verdict on one attack call.

    Attributes:
        ok: ``(N,)`` bool: the adversarial input respects the threat (and the attack's own
            constraints, :meth:`~robustops.attacks.Attack.respects`).
        size: ``(N,)`` float: the perturbation in the threat's unit, measured here (norm,
            patch side in pixels, share of the spatial budget used, severity).
    """

    ok: Tensor
    size: Tensor


def in_bounds(adv: Tensor, threat: ThreatModel) -> Tensor:
    """``(N,)`` bool: every entry of ``adv`` ``(N, ...)`` lies in the threat's bounds."""
    low, high = threat.bounds
    flat = adv.flatten(1)
    return (flat >= low).all(1) & (flat <= high).all(1)


def check_budget(attack: Attack, inputs: Tensor, result: AttackResult) -> BudgetCheck:
    """Whether each of ``result``'s adversarial inputs respects ``attack.threat`` around its
    input in ``inputs`` ``(N, ...)``, and the size of its perturbation.

    An output of the wrong shape, dtype or device fails every sample.
    """
    threat = attack.threat
    adv = result.adversarial
    n = inputs.shape[0]
    if not isinstance(adv, Tensor) or adv.shape != inputs.shape or adv.dtype != inputs.dtype:
        zeros = torch.zeros(n, dtype=torch.bool, device=inputs.device)
        return BudgetCheck(ok=zeros, size=torch.zeros(n, device=inputs.device))
    adv = adv.to(inputs.device)
    if threat.norm in ("linf", "l2"):
        size = perturbation_norm(adv - inputs, threat.norm)
        ok = size <= threat.epsilon * (1 + _RTOL) + _ATOL
    elif threat.norm == "patch":
        size = patch_side(adv, inputs).to(inputs.dtype)
        ok = size <= threat.epsilon
    elif threat.norm == "spatial":
        ok, size = spatial_within_budget(threat, inputs, adv, result.details)
    elif threat.norm == "corruption":
        ok = corruption_within_budget(attack, inputs, adv)
        size = torch.full((n,), threat.epsilon, device=inputs.device)
    else:
        raise ValueError(f"threat {threat.name!r}: {threat.norm!r} is not a tensor family")
    ok = ok & in_bounds(adv, threat) & attack.respects(adv, inputs).to(ok.device)
    return BudgetCheck(ok=ok, size=size)
