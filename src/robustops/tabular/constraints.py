"""A feature schema compiled to tensors, and the projection onto its feasible set.

Everything here works on scaled rows ``(N, D)`` (the model's inputs). The feasible set of a row
``x_orig`` under a threat is every ``x`` with:

* immutable columns (and immutable one-hot groups) equal to ``x_orig``;
* monotone columns moved their way only (``increase``: ``x >= x_orig``);
* every column inside its scaled range [0, 1] and inside the threat's bounds;
* integer columns on their grid ``k / K`` (``K`` grid intervals over the range);
* every one-hot group a valid one-hot vector;
* ``||x - x_orig|| <= epsilon`` in the threat's norm, evaluated in ``x``'s floating-point type
  (the same test as :func:`robustops.threats.geometry.perturbation_norm`).

The set is not convex (grids, one-hot groups), so :func:`project_feasible` is not the Euclidean
projection; it is a map onto the set that leaves feasible points unchanged:

1. clamp every continuous column into its box (range ∩ bounds ∩ monotone side; immutables
   pinned), for L∞ also into ``[x - ε, x + ε]`` (exactly, as :func:`~robustops.attacks.base.project`);
2. one-hot groups: the category with the largest relaxed value (ties keep the original), among
   those reachable in the budget: a category change moves two entries by 1, so it costs 1 in
   L∞ (impossible when ε < 1: the group keeps its category) and √2 in L2 (at most
   ``⌊ε²/2⌋`` groups change, the ones whose relaxed preference is strongest);
3. L2: unless the row already fits the ball, the continuous and integer part is scaled towards
   ``x_orig`` to fit in what the category changes leave, ``sqrt(ε² - 2·changes)``;
4. integer columns are rounded to the nearest grid point inside the box; when that leaves the
   ball (L2) they are rounded towards the original instead, which never increases their
   distance;
5. the result is checked in floating point; a row still outside is retried with its continuous
   part shrunk, and falls back to its category changes alone, then to ``x_orig`` (always
   feasible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robustops.errors import SpecError
from robustops.threats import ThreatModel
from robustops.threats.geometry import eps_as, linf_box, perturbation_norm, project

__all__ = [
    "GRID_TOLERANCE",
    "Constraints",
    "GroupConstraint",
    "free_constraints",
    "in_threat",
    "project_feasible",
    "relax",
    "schema_box",
    "violating_rows",
    "violation_masks",
]

GRID_TOLERANCE = 1e-3
"""How far (in grid steps) a value may sit from its grid point and still count as on it: float32
cannot hold ``k / K`` exactly."""

_ROUND_SLACK = 1e-3
"""Slack (in grid steps) of the rounding towards the original, for the float error of ``x * K``."""

_L2_ATTEMPTS = 8


@dataclass(frozen=True, eq=False)
class GroupConstraint:
    """A one-hot group: its column indices, whether it is immutable, and the position (within
    ``columns``) of its neutral category."""

    name: str
    columns: Tensor
    immutable: bool
    neutral: int


@dataclass(frozen=True, eq=False)
class Constraints:
    """Per-column constraints as ``(D,)`` tensors, in scaled units.

    ``levels`` holds ``K`` (grid intervals) for integer columns and 0 elsewhere; ``range_low``
    / ``range_high`` the scaled range (0 and 1 for a schema, ±inf when there is none);
    ``neutral`` the blanked value of each column (NaN: the midpoint of the threat's bounds).
    """

    dim: int
    names: tuple[str, ...]
    immutable: Tensor
    increase: Tensor
    decrease: Tensor
    categorical: Tensor
    integer: Tensor
    levels: Tensor
    range_low: Tensor
    range_high: Tensor
    neutral: Tensor
    groups: tuple[GroupConstraint, ...]
    dtype: torch.dtype

    @property
    def integer_columns(self) -> Tensor:
        """Indices of the integer columns."""
        return self.integer.nonzero().squeeze(1)

    def units(self) -> list[tuple[str, Tensor]]:
        """What an attacker can blank, as ``(name, column indices)``: each mutable continuous or
        integer column, and each mutable one-hot group."""
        out: list[tuple[str, Tensor]] = []
        group_of = {int(c): g for g in self.groups for c in g.columns.tolist()}
        seen: set[str] = set()
        for i in range(self.dim):
            if bool(self.immutable[i]):
                continue
            if bool(self.categorical[i]):
                g = group_of[i]
                if g.name not in seen and not g.immutable:
                    seen.add(g.name)
                    out.append((g.name, g.columns))
                continue
            out.append((self.names[i], torch.tensor([i], device=self.immutable.device)))
        return out


def free_constraints(dim: int, device: torch.device | str = "cpu") -> Constraints:
    """No schema: ``dim`` free continuous columns (only the threat constrains them)."""
    no = torch.zeros(dim, dtype=torch.bool, device=device)
    f64 = torch.float64
    return Constraints(
        dim=dim,
        names=tuple(f"x[{i}]" for i in range(dim)),
        immutable=no,
        increase=no,
        decrease=no,
        categorical=no,
        integer=no,
        levels=torch.zeros(dim, dtype=f64, device=device),
        range_low=torch.full((dim,), float("-inf"), dtype=f64, device=device),
        range_high=torch.full((dim,), float("inf"), dtype=f64, device=device),
        neutral=torch.full((dim,), float("nan"), dtype=f64, device=device),
        groups=(),
        dtype=torch.float32,
    )


def _rows(t: Tensor, c: Constraints, what: str) -> Tensor:
    flat = t.flatten(1)
    if flat.shape[1] != c.dim:
        raise SpecError.single(
            what, f"expected rows of {c.dim} features, got shape {tuple(t.shape)}"
        )
    return flat


def _per_sample_eps(radius: float | Tensor, x: Tensor) -> Tensor:
    """``(N,)`` radii in ``x``'s dtype, as :func:`~robustops.threats.geometry.eps_as` rounds them."""
    e = eps_as(radius, x)
    return e.reshape(-1).expand(x.shape[0]) if e.numel() == 1 else e.reshape(-1)


def in_threat(
    x_adv: Tensor, x: Tensor, threat: ThreatModel, eps: float | Tensor | None = None
) -> Tensor:
    """``(N,)`` bool: each row of ``x_adv`` lies in the threat's bounds and in its ball around
    the matching row of ``x``, exactly as the attack contract checks it (in ``x``'s dtype)."""
    low, high = threat.bounds
    e = _per_sample_eps(threat.epsilon if eps is None else eps, x)
    flat = x_adv.flatten(1)
    size = perturbation_norm(x_adv - x, threat.norm)
    return (size <= e) & (flat >= low).all(1) & (flat <= high).all(1)


def schema_box(x: Tensor, c: Constraints, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Entry-wise ``(lo, hi)`` ``(N, D)`` of the relaxed feasible set around rows ``x``: range ∩
    bounds, the allowed side of monotone columns, immutables pinned. Always ``lo <= x <= hi``
    (a row that breaks its range keeps its value, so the box never excludes it)."""
    n = x.shape[0]
    lo = c.range_low.to(x.dtype).clamp(min=low).expand(n, -1)
    hi = c.range_high.to(x.dtype).clamp(max=high).expand(n, -1)
    lo = torch.where(c.increase, torch.maximum(lo, x), lo)
    hi = torch.where(c.decrease, torch.minimum(hi, x), hi)
    lo = torch.where(c.immutable, x, lo)
    hi = torch.where(c.immutable, x, hi)
    return torch.minimum(lo, x), torch.maximum(hi, x)


def relax(v: Tensor, x: Tensor, c: Constraints, threat: ThreatModel) -> Tensor:
    """The convex relaxation of the projection: ``v`` clamped into :func:`schema_box` (one-hot
    members move freely in [0, 1]), then into the threat's ball. Iterates of a gradient attack
    live here; :func:`project_feasible` turns them into feasible points."""
    shape = x.shape
    x2, v2 = _rows(x, c, "inputs"), _rows(v, c, "inputs")
    lo, hi = schema_box(x2, c, *threat.bounds)
    out = project(torch.clamp(v2, lo, hi), x2, threat)
    return out.reshape(shape)


def violation_masks(x: Tensor, x_orig: Tensor | None, c: Constraints) -> dict[str, Tensor]:
    """``(N, D)`` bool masks of broken constraints, by kind: ``nonfinite``, ``range``, ``grid``,
    ``one_hot`` (marked on a group's first column), and with ``x_orig`` also ``immutable``,
    ``group_immutable`` (first column), ``increase``, ``decrease``."""
    finite = torch.isfinite(x)
    cat = c.categorical
    rl, rh = c.range_low.to(x.dtype), c.range_high.to(x.dtype)
    k = x * c.levels.to(x.dtype)
    masks = {
        "nonfinite": ~finite,
        "range": finite & ~cat & ((x < rl) | (x > rh)),
        "grid": finite & c.integer & ((k - k.round()).abs() > GRID_TOLERANCE),
    }
    one_hot = torch.zeros_like(finite)
    group_imm = torch.zeros_like(finite)
    for g in c.groups:
        vals = x[:, g.columns]
        ok = ((vals == 0) | (vals == 1)).all(1) & (vals.sum(1) == 1)
        one_hot[:, g.columns[0]] = ~ok
        if x_orig is not None and g.immutable:
            group_imm[:, g.columns[0]] = (vals != x_orig[:, g.columns]).any(1)
    masks["one_hot"] = one_hot
    if x_orig is not None:
        masks["immutable"] = c.immutable & ~cat & (x != x_orig)
        masks["group_immutable"] = group_imm
        masks["increase"] = c.increase & (x < x_orig)
        masks["decrease"] = c.decrease & (x > x_orig)
    return masks


def violating_rows(x: np.ndarray, c: Constraints) -> np.ndarray:
    """``(N,)`` bool: row ``i`` of ``x`` (scaled, ``(N, D)``, float64) breaks a constraint that
    needs no original row, i.e. ``any(violation_masks(x, None, c)[kind][i])`` for some kind
    (``nonfinite``, ``range``, ``grid``, ``one_hot``), with the same float64 comparisons, in
    numpy over whole columns: only the integer columns are put on the grid and only the group
    members summed, and no ``(N, D)`` mask is kept per kind. For checking many rows at once
    (a table being loaded); :func:`violation_masks` tells which column broke what."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != c.dim:
        raise SpecError.single(
            "x", f"expected rows of {c.dim} features, got shape {tuple(x.shape)}"
        )
    cat = c.categorical.cpu().numpy()
    rl = c.range_low.cpu().numpy().astype(np.float64)
    rh = c.range_high.cpu().numpy().astype(np.float64)
    bad: np.ndarray = np.zeros(x.shape[0], dtype=bool)
    free = np.flatnonzero(~cat)
    if x.shape[0]:
        # Per column: min and max are finite only when every value is (a NaN makes both NaN),
        # and inside the range only when every value is; the rows are looked at only when a
        # column fails (nonfinite anywhere, or range on the non-categorical columns).
        lo, hi = x.min(axis=0), x.max(axis=0)
        fits = np.isfinite(lo).all() and np.isfinite(hi).all()
        fits = fits and bool(((lo[free] >= rl[free]) & (hi[free] <= rh[free])).all())
        if not fits:
            bad |= ~np.isfinite(x).all(axis=1)
            if free.size:  # NaN compares False: caught as nonfinite, as violation_masks does
                xs = x[:, free]
                bad |= ((xs < rl[free]) | (xs > rh[free])).any(axis=1)
    cols = np.flatnonzero(c.integer.cpu().numpy())
    if cols.size:
        k = x[:, cols] * c.levels.cpu().numpy().astype(np.float64)[cols]
        with np.errstate(invalid="ignore"):  # inf - inf: that row is already nonfinite
            off = np.abs(k - np.round(k)) > GRID_TOLERANCE  # round half to even, as torch's
        bad |= off.any(axis=1)
    for g in c.groups:
        vals = x[:, g.columns.cpu().numpy()]
        ok = ((vals == 0) | (vals == 1)).all(axis=1) & (vals.sum(axis=1) == 1)
        bad |= ~ok
    return bad


def _round_integers(
    z: Tensor, x: Tensor, lo: Tensor, hi: Tensor, c: Constraints, toward: bool
) -> Tensor:
    """``z`` with its integer columns on their grid inside ``[lo, hi]``: the nearest grid point
    (``toward=False``) or the nearest one on the original's side (``toward=True``, never farther
    from ``x`` than ``z``). The original's grid point maps to ``x`` itself, bit for bit; a
    column with no usable grid point keeps ``x``."""
    cols = c.integer_columns
    if cols.numel() == 0:
        return z
    dt = z.dtype
    levels = c.levels[cols]
    zc, xc = z[:, cols].double(), x[:, cols].double()
    loc, hic = lo[:, cols], hi[:, cols]
    k0 = (xc * levels).round()
    if toward:
        k = torch.where(
            zc >= xc,
            (zc * levels + _ROUND_SLACK).floor(),
            (zc * levels - _ROUND_SLACK).ceil(),
        )
    else:
        k = (zc * levels).round()
    k_lo = (loc.double() * levels - _ROUND_SLACK).ceil()
    k_hi = (hic.double() * levels + _ROUND_SLACK).floor()
    k = torch.maximum(torch.minimum(k, k_hi), k_lo)
    x_dt = x[:, cols]
    cand, ok = x_dt, torch.ones_like(k, dtype=torch.bool)
    for _ in range(3):
        cand = torch.where(k == k0, x_dt, (k / levels).to(dt))
        ok = (cand >= loc) & (cand <= hic)
        if bool(ok.all()):
            break
        k = torch.where(ok, k, k - torch.sign(k - k0))
    out = z.clone()
    out[:, cols] = torch.where(ok, cand, x_dt)
    return out


def _categories(
    base: Tensor,
    v: Tensor,
    x: Tensor,
    c: Constraints,
    allowed: Tensor,
    limit: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``base`` with each mutable one-hot group set to its preferred category: the member with
    the largest value in ``v`` (ties keep ``x``'s). Rows where ``allowed`` is False keep
    ``x``'s categories; with ``limit`` ``(N,)`` at most that many groups change per row (those
    whose preference over the original is strongest). Returns the rows and the number of groups
    changed per row ``(N,)``."""
    out = base.clone()
    n = x.shape[0]
    groups = [g for g in c.groups if not g.immutable]
    changed = torch.zeros(n, dtype=torch.int64, device=x.device)
    for g in c.groups:
        out[:, g.columns] = x[:, g.columns]
    if not groups:
        return out, changed
    prefs, margins = [], []
    for g in groups:
        vg, xg = v[:, g.columns], x[:, g.columns]
        orig = xg.argmax(1)
        pref = vg.argmax(1)
        v_orig = vg.gather(1, orig[:, None]).squeeze(1)
        v_pref = vg.gather(1, pref[:, None]).squeeze(1)
        pref = torch.where(v_orig >= v_pref, orig, pref)
        change = (pref != orig) & allowed
        prefs.append(pref)
        margins.append(torch.where(change, v_pref - v_orig, torch.full_like(v_pref, -1.0)))
    margin = torch.stack(margins, 1)  # (N, G); -1: no change wanted
    change = margin >= 0
    if limit is not None:
        order = margin.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(len(groups), device=x.device).expand(n, -1))
        change &= rank < limit[:, None]
    for j, g in enumerate(groups):
        hot = torch.nn.functional.one_hot(prefs[j], g.columns.numel()).to(x.dtype)
        out[:, g.columns] = torch.where(change[:, j : j + 1], hot, x[:, g.columns])
    return out, change.sum(1)


def project_feasible(
    v: Tensor,
    x: Tensor,
    c: Constraints,
    threat: ThreatModel,
    eps: float | Tensor | None = None,
) -> Tensor:
    """Map ``v`` onto the feasible set of the rows ``x`` (see the module docstring) intersected
    with the threat's ball and bounds.

    ``v`` and ``x`` are ``(N, ...)`` with ``D`` entries per row; ``eps`` overrides
    ``threat.epsilon`` (a float or ``(N,)`` radii). Exact in ``x``'s dtype: every returned row
    passes :func:`in_threat` and breaks no schema constraint that ``x`` itself satisfies. A
    feasible ``v`` is returned unchanged (integer entries exactly on the grid, as this function
    writes them: ``k / K`` rounded to ``x``'s dtype), so the projection is idempotent. NaN
    entries of ``v`` count as ``x``'s.
    """
    shape = x.shape
    x2 = _rows(x, c, "inputs")
    v2 = _rows(v, c, "inputs").to(x.dtype)
    v2 = torch.where(torch.isnan(v2), x2, v2)
    low, high = threat.bounds
    e = _per_sample_eps(threat.epsilon if eps is None else eps, x2)
    lo, hi = schema_box(x2, c, low, high)
    one_hot_in_bounds = low <= 0.0 and high >= 1.0
    if threat.norm == "linf":
        blo, bhi = linf_box(x2, e[:, None], low, high)
        lo, hi = torch.maximum(lo, blo), torch.minimum(hi, bhi)
        out = _round_integers(torch.clamp(v2, lo, hi), x2, lo, hi, c, toward=False)
        # A category change moves two entries by exactly 1: possible only when ε >= 1.
        allowed = (e >= 1.0) & one_hot_in_bounds
        out, _ = _categories(out, v2, x2, c, allowed, None)
        return out.reshape(shape)
    return _project_l2(v2, x2, c, e, lo, hi, one_hot_in_bounds).reshape(shape)


def _project_l2(
    v: Tensor, x: Tensor, c: Constraints, e: Tensor, lo: Tensor, hi: Tensor, one_hot_ok: bool
) -> Tensor:
    """The L2 branch of :func:`project_feasible` on flat rows; ``e`` ``(N,)`` in ``x``'s dtype."""
    z = torch.clamp(v, lo, hi)
    cont = ~c.categorical
    d = torch.where(cont, z - x, torch.zeros_like(z))
    e64 = e.double()
    # Each category change costs 2 in squared L2; the float test decides in the end.
    max_changes = torch.floor(e64.square() / 2 * (1 + 1e-6)).to(torch.int64)
    cat_only, n_changed = _categories(x, v, x, c, (max_changes >= 1) & one_hot_ok, max_changes)
    radius = (e64.square() - 2 * n_changed).clamp_min(0).sqrt() * (1 - 1e-6)
    d_norm = d.double().norm(dim=1)
    factor = torch.where(
        d_norm > radius, radius / d_norm.clamp_min(1e-300), torch.ones_like(d_norm)
    )
    # The unscaled row first (so that a feasible row is returned as it is), then the row scaled
    # to the radius, then with a growing margin for the rounding of x + f * d, and at last
    # with no continuous change at all.
    factors = [torch.ones_like(factor), factor]
    factors += [factor * max(0.0, 1 - 1e-6 * 10.0**a) for a in range(_L2_ATTEMPTS - 3)]
    factors.append(torch.zeros_like(factor))
    result = cat_only.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for attempt, f in enumerate(factors):
        scaled = torch.where((f == 1)[:, None], z, x + d * f.to(x.dtype)[:, None])
        rows = torch.where(cont, torch.clamp(scaled, lo, hi), cat_only)
        cand = _round_integers(rows, x, lo, hi, c, toward=attempt > 1)
        over = perturbation_norm(cand - x, "l2") > e
        if attempt <= 1 and bool(over.any()):
            toward = _round_integers(rows, x, lo, hi, c, toward=True)
            cand = torch.where(over[:, None], toward, cand)
        ok = (perturbation_norm(cand - x, "l2") <= e) & ~done
        result = torch.where(ok[:, None], cand, result)
        done |= ok
        if bool(done.all()):
            return result
    # Not reachable in practice: the category changes alone, else the original row.
    cat_fits = perturbation_norm(cat_only - x, "l2") <= e
    fallback = torch.where(cat_fits[:, None], cat_only, x)
    return torch.where(done[:, None], result, fallback)
