"""Attacks on tabular models that respect a :class:`~robustops.tabular.FeatureSchema`.

Each follows the attack contract (:class:`robustops.attacks.Attack`) and additionally returns
rows that satisfy the schema (immutables unchanged, monotone columns moved their way, ranges,
integer grids, valid one-hot groups): the final projection is the schema's
(:func:`~robustops.tabular.constraints.project_feasible`), which also keeps the threat's ball
and bounds exactly. ``schema`` is a :class:`FeatureSchema`, the name of a registered one (e.g.
``breast_cancer``; in a YAML spec: ``{name: tabular-pgd, schema: breast_cancer}``), an inline
mapping, or ``None``: every entry is then a free continuous column and the attacks reduce to
their unconstrained versions (on any input shape).

Inputs must themselves satisfy the schema (ranges, grids, one-hot groups); a row that does not
is refused with a :class:`SpecError` naming the row and the feature.

* ``tabular-pgd`` (white-box): PGD on the convex relaxation with the schema projection after
  every step; gradients, early stop and the result are taken at the projected (feasible) point.
* ``tabular-noise`` (decision-based): random feasible perturbations, one query each.
* ``feature-masking`` (score-based): "signal obfuscation", greedily blanking up to ``k`` mutable
  features to their neutral value.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from robustops.attacks.base import (
    Attack,
    ModelFn,
    is_adversarial,
)
from robustops.attacks.eot import LOSSES, ascent_direction, loss_and_grad, mean_logits
from robustops.attacks.losses import margin_loss
from robustops.attacks.pgd import PGDOptions
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.tabular.constraints import (
    Constraints,
    free_constraints,
    project_feasible,
    relax,
    violation_masks,
)
from robustops.tabular.registry import resolve_schema
from robustops.tabular.schema import FeatureSchema
from robustops.threats import ThreatModel
from robustops.threats.geometry import random_point

__all__ = ["FeatureMasking", "TabularAttack", "TabularNoise", "TabularPGD"]


class TabularAttack(Attack):
    """Base of the schema-aware attacks: resolves ``schema`` and makes the final projection the
    schema's. Subclasses implement ``_run`` and call :meth:`_constraints_for` inside it.

    ``params()`` reports the schema by name (``schema``); the object is ``schema_``.
    """

    def __init__(self, threat: ThreatModel, *, schema: Any = None, seed: int = 0) -> None:
        super().__init__(threat, seed=seed)
        self.schema_: FeatureSchema | None = resolve_schema(schema)
        self.schema: str | None = None if self.schema_ is None else self.schema_.name
        self._free_: dict[tuple[int, str], Constraints] = {}

    def _constraints_for(self, x: Tensor) -> Constraints:
        """The compiled schema for inputs ``x`` ``(N, ...)`` (free columns without a schema)."""
        d = math.prod(x.shape[1:])
        if self.schema_ is not None:
            if x.dim() != 2 or d != self.schema_.dim:
                raise SpecError.single(
                    "inputs",
                    f"schema {self.schema_.name!r} expects rows of shape (N, {self.schema_.dim}), "
                    f"got {tuple(x.shape)}",
                )
            return self.schema_.constraints(x.dtype, x.device)
        key = (d, str(x.device))
        if key not in self._free_:
            self._free_[key] = free_constraints(d, x.device)
        return self._free_[key]

    def _check_schema(self, x: Tensor) -> Constraints:
        c = self._constraints_for(x)
        if self.schema_ is not None and x.shape[0]:
            masks = violation_masks(x.flatten(1).double(), None, c)
            bad = torch.zeros_like(next(iter(masks.values())))
            for m in masks.values():
                bad |= m
            if bool(bad.any()):
                found = self.schema_.validate(x, limit=3)
                detail = "; ".join(f"row {v.row}, {v.feature!r}: {v.reason}" for v in found)
                raise SpecError.single(
                    "inputs",
                    f"{int(bad.any(1).sum())} rows break schema {self.schema_.name!r} ({detail})",
                )
        return c

    def _check_call(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The base checks, then every input row must satisfy the schema."""
        x, y, t = super()._check_call(model, inputs, labels, targets)
        self._check_schema(x)
        return x, y, t

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        """The schema projection (feasible set ∩ the threat's ball and bounds)."""
        return project_feasible(adv, x, self._constraints_for(x), self.threat)

    def respects(self, adversarial: Tensor, inputs: Tensor) -> Tensor:
        """``(N,)`` bool: each adversarial row satisfies the schema (ranges, integers, one-hot
        groups, immutable and monotone columns relative to its input); all true without one."""
        if self.schema_ is None:
            return super().respects(adversarial, inputs)
        return self.schema_.is_feasible(adversarial, inputs)


@register_attack
class TabularPGD(PGDOptions, TabularAttack):
    """Constrained PGD (L∞, L2): every step is followed by the schema projection.

    The iterate ``z`` lives in the convex relaxation (schema box and ball; one-hot members
    continuous in [0, 1]); each step evaluates the model at its projection
    ``p = project_feasible(z)``, a feasible row, takes the loss gradient there, and moves ``z``
    (straight-through). Keeping ``z`` continuous lets integer columns and categories change
    once enough small steps accumulate, which a projected iterate could never do. Early stop,
    restarts and the returned row all use ``p``. Gradients on immutable columns are zeroed
    before the step direction is formed (for L2 they would waste the step's length).

    Args:
        threat: norm, epsilon, bounds and goal.
        schema: a :class:`FeatureSchema`, a registered name, a mapping, or ``None``.
        steps: gradient steps per restart (one query each).
        step_size: in scaled units; default ``2.5 * epsilon / steps``.
        restarts: random restarts, each run on the samples still not adversarial.
        random_start: start from a random feasible point (a uniform point of the ball,
            projected) instead of the input.
        loss: ``"ce"``, ``"margin"`` or ``"dlr"`` (≥ 3 classes).
        early_stop: drop a sample as soon as its feasible point is adversarial.
        seed: seeds the random starts.
    """

    name = "tabular-pgd"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        schema: Any = None,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: Literal["ce", "dlr", "margin"] = "ce",
        early_stop: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, schema=schema, seed=seed)
        self._set_pgd_options(steps, step_size, restarts, random_start, loss, early_stop)

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        threat = self.threat
        c = self._constraints_for(x)
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.epsilon / self.steps
        loss_fn = LOSSES[self.loss]
        # Columns that cannot move get no share of the step (for L2 they would shorten it).
        eps = threat.epsilon
        cats_fixed = eps < 1.0 if threat.norm == "linf" else eps * eps < 2.0
        frozen = (c.immutable | (c.categorical & cats_fixed)).view(1, *x.shape[1:])
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        rnd = self._randomness(x)
        for restart in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            t0 = targets[idx] if targets is not None else None
            z = random_point(x0, threat, rnd.rows(idx), 1.0) if self.random_start else x0.clone()
            z = relax(z, x0, c, threat)
            p = project_feasible(z, x0, c, threat)
            for step in range(self.steps):
                logits, _, grad = loss_and_grad(model, p, y0, t0, loss_fn)
                if self.early_stop:
                    hit = is_adversarial(logits, y0, t0)
                    if bool(hit.any()):
                        hit_idx = idx[hit]
                        best[hit_idx] = p[hit]
                        done[hit_idx] = True
                        queries[hit_idx] += step + 1
                        keep = ~hit
                        idx, x0, y0, z, p, grad = (t[keep] for t in (idx, x0, y0, z, p, grad))
                        t0 = t0[keep] if t0 is not None else None
                        if idx.numel() == 0:
                            break
                grad = grad.masked_fill(frozen, 0.0)
                z = relax(z + alpha * ascent_direction(grad, threat.norm), x0, c, threat)
                p = project_feasible(z, x0, c, threat)
            if idx.numel():
                queries[idx] += self.steps
                best[idx] = p
                if restart + 1 < self.restarts:
                    done[idx] = is_adversarial(mean_logits(model, p), y0, t0)
        return best, queries


@register_attack
class TabularNoise(TabularAttack):
    """Black-box random feasible perturbations: ``draws`` per sample, the first adversarial one
    kept. Each draw is a uniform point of the ball (L∞ cube, L2 ball) mapped onto the feasible
    set by the schema projection; one query per draw, never more than ``threat.query_budget``.

    Args:
        threat: norm, epsilon, bounds, goal and query budget.
        schema: a :class:`FeatureSchema`, a registered name, a mapping, or ``None``.
        draws: random points per sample (capped by the threat's query budget).
        seed: seeds the draws.
    """

    name = "tabular-noise"
    knowledge = "decision-based"

    def __init__(
        self, threat: ThreatModel, *, schema: Any = None, draws: int = 100, seed: int = 0
    ) -> None:
        super().__init__(threat, schema=schema, seed=seed)
        self._check_positive("draws", draws, integer=True)
        if threat.query_budget is not None:
            draws = min(draws, threat.query_budget)
        self.draws = draws

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        c = self._constraints_for(x)
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        rnd = self._randomness(x)
        with torch.no_grad():
            for _ in range(self.draws):
                idx = (~found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x0 = x[idx]
                point = random_point(x0, self.threat, rnd.rows(idx), 1.0)
                cand = project_feasible(point, x0, c, self.threat)
                queries[idx] += 1
                t0 = None if targets is None else targets[idx]
                hit = is_adversarial(model(cand), y[idx], t0)
                best[idx] = cand
                found[idx[hit]] = True
        return best, queries


@register_attack
class FeatureMasking(TabularAttack):
    """Signal obfuscation: blank up to ``k`` mutable features, greedily by model score.

    *Blanking* unit ``u`` (a mutable continuous or integer column, or a mutable one-hot group)
    sets it to its neutral value: the schema's ``neutral`` (e.g. the value an intake system
    imputes for an empty field; one-hot groups: their neutral category; without a schema the
    midpoint of the threat's bounds). When the budget does not allow the full change the unit
    moves towards its neutral value as far as the budget allows: L∞ clamps the change to ε; L2
    spends at most what earlier blanks left, ``sqrt(ε² - ||current - x||²)``; a category change
    that does not fit is not made. The row is then mapped onto the feasible set (monotone
    columns cannot move against their direction, integers stay on their grid), so every query
    is a feasible row.

    Greedy: one query for the input, then each round queries every unit not yet blanked (one
    query each, in schema order, while the threat's query budget lasts) and keeps the one that
    raises the margin loss most; the sample stops when it is adversarial, after ``k`` blanks, or
    when no unit raises the loss.

    Args:
        threat: norm, epsilon, bounds, goal and query budget.
        schema: a :class:`FeatureSchema`, a registered name, a mapping, or ``None``.
        k: most features (units) blanked per sample.
        seed: unused (the attack is deterministic); kept for the common signature.
    """

    name = "feature-masking"
    knowledge = "score-based"

    def __init__(
        self, threat: ThreatModel, *, schema: Any = None, k: int = 5, seed: int = 0
    ) -> None:
        super().__init__(threat, schema=schema, seed=seed)
        self._check_positive("k", k, integer=True)
        self.k = k

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        c = self._constraints_for(x)
        threat = self.threat
        n = x.shape[0]
        shape = x.shape
        x2 = x.flatten(1)
        low, high = threat.bounds
        neutral = c.neutral.to(x.dtype)
        neutral = torch.where(
            torch.isnan(neutral), torch.full_like(neutral, 0.5 * (low + high)), neutral
        )
        units = c.units()
        budget = threat.query_budget
        cur = x2.clone()
        queries = torch.zeros(n, dtype=torch.int64, device=x.device)
        blanked = torch.zeros(n, len(units), dtype=torch.bool, device=x.device)
        if n == 0 or not units:
            return x.clone(), queries
        with torch.no_grad():
            logits = model(cur.reshape(shape))
            queries += 1
            score = margin_loss(logits, y, targets)
            active = ~is_adversarial(logits, y, targets)
            for _ in range(self.k):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                cands = self._candidates(cur[idx], x2[idx], units, neutral, c)  # (n, U, D)
                differs = (cands != cur[idx, None, :]).any(2) & ~blanked[idx]
                if budget is not None:
                    left = (budget - queries[idx]).clamp_min(0)
                    differs &= differs.cumsum(1) <= left[:, None]
                rows, which = differs.nonzero(as_tuple=True)
                if rows.numel() == 0:
                    active[idx] = False
                    break
                flat = cands[rows, which]
                cand_logits = model(flat.reshape(-1, *shape[1:]))
                cand_score = margin_loss(
                    cand_logits, y[idx][rows], None if targets is None else targets[idx][rows]
                )
                queries.index_add_(0, idx, differs.sum(1))
                table = torch.full(
                    differs.shape, float("-inf"), dtype=cand_score.dtype, device=x.device
                )
                table[rows, which] = cand_score
                top, pick = table.max(1)
                improve = top > score[idx]
                chosen = idx[improve]
                cur[chosen] = cands[improve, pick[improve]]
                score[chosen] = top[improve]
                blanked[chosen, pick[improve]] = True
                active[idx[~improve]] = False
                # Adversarial now? The chosen candidate's logits are already known.
                pos = torch.full(differs.shape, -1, dtype=torch.int64, device=x.device)
                pos[rows, which] = torch.arange(rows.numel(), device=x.device)
                sel = pos[improve.nonzero().squeeze(1), pick[improve]]
                t_sel = None if targets is None else targets[chosen]
                active[chosen[is_adversarial(cand_logits[sel], y[chosen], t_sel)]] = False
        return cur.reshape(shape), queries

    def _candidates(
        self,
        cur: Tensor,
        x: Tensor,
        units: list[tuple[str, Tensor]],
        neutral: Tensor,
        c: Constraints,
    ) -> Tensor:
        """``(n, U, D)``: rows ``cur`` with unit ``u`` moved to its neutral value as far as the
        budget allows, each made feasible (one projection for all of them)."""
        n, d = cur.shape
        cand = cur.unsqueeze(1).repeat(1, len(units), 1)
        single = [(u, int(cols[0])) for u, (_, cols) in enumerate(units) if cols.numel() == 1]
        if single:
            u_idx = torch.tensor([u for u, _ in single], device=cur.device)
            cols = torch.tensor([col for _, col in single], device=cur.device)
            target = neutral[cols].expand(n, -1)
            if self.threat.norm == "l2":
                # What the other columns already spend stays; this one gets the rest.
                e = float(self.threat.epsilon)
                spent = (cur - x).double().square()
                others = spent.sum(1, keepdim=True) - spent[:, cols]
                room = (e * e - others).clamp_min(0).sqrt() * (1 - 1e-5)
                move = (target - x[:, cols]).double()
                f = (room / move.abs().clamp_min(1e-300)).clamp(max=1.0)
                target = torch.where(f >= 1, target, x[:, cols] + (move * f).to(cur.dtype))
            cand[:, u_idx, cols] = target
        for u, (_, cols) in enumerate(units):
            if cols.numel() > 1:
                cand[:, u, cols] = neutral[cols]
        flat = project_feasible(
            cand.reshape(-1, d), x.repeat_interleave(len(units), 0), c, self.threat
        )
        return flat.reshape(n, len(units), d)
