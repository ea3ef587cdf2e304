"""HopSkipJump (Chen, Jordan & Wainwright, IEEE S&P 2020): a decision-based attack that walks
along the decision boundary using only the model's top-1 label.

From an adversarial starting point (uniform noise, or a point the caller gives), each iteration

1. estimates the direction of the boundary's normal at the current boundary point by Monte
   Carlo: ``B_t = B_0 * sqrt(t)`` random unit directions of length ``delta``, each labelled
   adversarial (+1) or not (-1), averaged with a baseline (the paper's eq. 14);
2. steps along it (its sign for L∞) with the geometric-progression step size: starting from
   ``||x_t - x||_p / sqrt(t)``, halved until the step lands on the adversarial side;
3. binary-searches back towards the input, along the line (L2) or by shrinking the L∞ box,
   until the boundary is bracketed to the threshold ``theta``.

The constants follow the authors' reference implementation (and Foolbox's): ``theta =
gamma / d^(3/2)`` (L2) or ``gamma / d^2`` (L∞) for ``d`` input entries, ``delta = 0.1 *
(high - low)`` at the first iteration and then ``sqrt(d) * theta * dist`` (L2) or ``d * theta *
dist`` (L∞), where ``dist`` is the distance of the point the step reached; the initial noise is
blended towards the input by a binary search to a precision of 0.001 before the first search
along the threat's norm.

The model is reached only through a label oracle (:class:`LabelOracle`) that returns top-1
labels and counts every point it is asked about against its sample's query budget; the attack
never sees a score. The closest adversarial point found so far is kept, so the output is the
best of the run whatever its length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from robustops.attacks.base import Attack, AttackResult, ModelFn, perturbation_norm
from robustops.attacks.randomness import SampleRandomness
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["HopSkipJump", "LabelOracle", "gradient_samples"]

_INIT_PRECISION = 0.001  # the blended noise search's precision on the blending weight
_MAX_HALVINGS = 40  # geometric step search: past this the step is below float32 resolution
_MAX_BISECTIONS = 64  # a binary search never needs more in float64

# Starting points given to one call (``HopSkipJump(...)(..., starts=...)``): a context variable
# rather than an attribute, so that an attack object stays stateless and shareable.
_STARTS: ContextVar[Tensor | None] = ContextVar("hopskipjump_starts", default=None)


def gradient_samples(iteration: int, init_evals: int, max_evals: int) -> int:
    """Random directions for the gradient-direction estimate at ``iteration`` (1-based): the
    paper's ``B_t = B_0 * sqrt(t)``, rounded down, at most ``max_evals``."""
    return min(int(init_evals * math.sqrt(iteration)), max_evals)


class LabelOracle:
    """The only access HopSkipJump has to the model: the top-1 label of each point it asks
    about, with every point counted against the query budget of the sample it is for.

    Args:
        model: maps inputs ``(m, ...)`` to logits ``(m, K)``; only their argmax is read.
        n: samples in the batch; ``queries`` counts per sample.
        budget: most model evaluations per sample; asking for more raises ``RuntimeError``
            (the attack checks :meth:`remaining` first, so this is a guard, not a control).
        eot_samples: forward passes per point; the label is their majority vote (ties: the
            smallest label), and each pass is one query.
        batch_size: most points per forward pass.

    Shape:
        ``ask(points (m, ...), owners (m,) int64) -> labels (m,) int64``; ``queries (n,)`` int64.
    """

    def __init__(
        self, model: ModelFn, n: int, budget: int, eot_samples: int, batch_size: int, device: Any
    ) -> None:
        self._model = model
        self.budget = budget
        self.eot_samples = eot_samples
        self.batch_size = batch_size
        self.queries = torch.zeros(n, dtype=torch.int64, device=device)

    def remaining(self, idx: Tensor) -> Tensor:
        """``(len(idx),)`` int64: points each sample ``idx`` may still be asked about."""
        return (self.budget - self.queries[idx]) // self.eot_samples

    def ask(self, points: Tensor, owners: Tensor) -> Tensor:
        """Top-1 labels ``(m,)`` of ``points`` ``(m, ...)``, point ``j`` charged to sample
        ``owners[j]``."""
        if points.shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64, device=points.device)
        cost = torch.bincount(owners, minlength=self.queries.shape[0]) * self.eot_samples
        if bool((self.queries + cost > self.budget).any()):
            raise RuntimeError("HopSkipJump asked for more queries than its budget allows")
        self.queries += cost
        with torch.no_grad():
            step = self.batch_size
            return torch.cat(
                [self._labels(points[i : i + step]) for i in range(0, points.shape[0], step)]
            )

    def _labels(self, chunk: Tensor) -> Tensor:
        if self.eot_samples == 1:
            return self._model(chunk).argmax(dim=1)
        votes = torch.stack([self._model(chunk).argmax(dim=1) for _ in range(self.eot_samples)])
        classes = int(votes.max()) + 1
        counts = torch.nn.functional.one_hot(votes, classes).sum(dim=0)
        return counts.argmax(dim=1)


@register_attack
class HopSkipJump(Attack):
    """HopSkipJump, decision-based: gradient-direction estimates from labels only, geometric
    step sizes and binary searches to the boundary, in L2 or L∞.

    A sample leaves the batch when its query budget is spent or, with ``early_stop``, as soon as
    an adversarial point within the threat's ε is found; samples run in lock-step, each on its
    own random draws (:meth:`Attack._randomness`), so a sample's result does not depend on the
    batch it comes in. (Up to the model: a batched forward pass may round a row differently
    with other rows beside it, which can flip a label at a point within rounding distance of
    the boundary, where the L∞ search, ``theta = 1/d²``, does probe. ``batch_size=1`` rules
    that out, at the cost of one forward pass per point.)

    Args:
        threat: norm (``"l2"`` or ``"linf"``), epsilon, bounds, goal and, optionally, the
            per-sample ``query_budget``; needs ``decision-based`` knowledge or more.
        queries: model queries per sample, everything included (starting point, searches,
            gradient estimates). The effective budget, stored in ``queries``, is
            ``min(queries, threat.query_budget)`` when the threat sets one.
        init_evals: ``B_0``, random directions of the first gradient estimate (the paper's 100).
        max_evals: the most random directions of one estimate (the paper's 10 000).
        gamma: sets the binary-search threshold ``theta`` (see the module's docstring; the
            paper's 1.0). Smaller is more precise and costs more queries per search.
        init_draws: uniform-noise draws tried per sample for an adversarial starting point
            (each a query); a sample with none stays unattacked.
        early_stop: stop a sample once an adversarial point within ε is found. ``False`` keeps
            shrinking the perturbation to the end of the budget (minimal-perturbation use).
        eot_samples: forward passes per point, the label being their majority vote (for
            stochastic models); each pass is a query.
        batch_size: most points sent to the model in one forward pass.
        seed: seeds every random draw (noise starts, gradient directions).

    Shape:
        inputs ``(N, ...)`` float (any shape: images, rows) inside the threat's bounds; labels
        and targets ``(N,)`` int64; optional ``starts`` ``(N, ...)`` like the inputs.

    Calling it as ``attack(model, inputs, labels, targets=..., starts=...)`` adds one option
    to the contract: ``starts``, points inside the bounds to start from (e.g. an image of the
    target class, as the paper's targeted attack does). Each costs one query; one that is not
    adversarial for its sample falls back to the noise search.
    """

    name = "hopskipjump"
    knowledge = "decision-based"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        queries: int = 1000,
        init_evals: int = 100,
        max_evals: int = 10_000,
        gamma: float = 1.0,
        init_draws: int = 100,
        early_stop: bool = True,
        eot_samples: int = 1,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("queries", queries, integer=True)
        self._check_positive("init_evals", init_evals, integer=True)
        self._check_positive("max_evals", max_evals, integer=True)
        if max_evals < init_evals:
            raise SpecError.single(
                "max_evals", f"must be at least init_evals ({init_evals}), got {max_evals}"
            )
        self._check_positive("gamma", gamma)
        if not math.isfinite(gamma):
            raise SpecError.single("gamma", f"must be finite, got {gamma!r}")
        self._check_positive("init_draws", init_draws, integer=True)
        if not isinstance(early_stop, bool):
            raise SpecError.single("early_stop", f"must be a bool, got {early_stop!r}")
        self._check_positive("eot_samples", eot_samples, integer=True)
        self._check_positive("batch_size", batch_size, integer=True)
        if threat.query_budget is not None:
            queries = min(queries, threat.query_budget)
        self.queries = queries
        self.init_evals = init_evals
        self.max_evals = max_evals
        self.gamma = float(gamma)
        self.init_draws = init_draws
        self.early_stop = early_stop
        self.eot_samples = eot_samples
        self.batch_size = batch_size

    def __call__(
        self,
        model: Any,
        inputs: Any,
        labels: Tensor,
        *,
        targets: Tensor | None = None,
        starts: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``inputs`` ``(N, ...)`` with labels ``(N,)`` (see :meth:`Attack.__call__`),
        optionally from the starting points ``starts`` ``(N, ...)``."""
        x, y, t = self._check_call(model, inputs, labels, targets)
        token = _STARTS.set(self._check_starts(starts, x))
        try:
            return self._attack(model, x, y, t)
        finally:
            _STARTS.reset(token)

    def _check_starts(self, starts: Tensor | None, x: Tensor) -> Tensor | None:
        if starts is None:
            return None
        low, high = self.threat.bounds
        if (
            not isinstance(starts, Tensor)
            or starts.shape != x.shape
            or not starts.is_floating_point()
        ):
            raise SpecError.single("starts", f"must be a float tensor of shape {tuple(x.shape)}")
        starts = starts.detach().to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(starts).all()) or (
            starts.numel() and (float(starts.min()) < low or float(starts.max()) > high)
        ):
            raise SpecError.single(
                "starts", f"values must be finite and in the threat bounds {self.threat.bounds}"
            )
        return starts

    def _randomness(self, x: Tensor) -> SampleRandomness:
        return SampleRandomness(x, f"{self.name}|{self.threat.norm}|{self.seed}")

    # --- geometry ---------------------------------------------------------------------------

    def _dist(self, points: Tensor, x: Tensor) -> Tensor:
        """``(m,)`` distances of ``points`` to ``x`` ``(m, ...)`` in the threat's norm."""
        return perturbation_norm(points - x, self.threat.norm)

    @staticmethod
    def _blend(x: Tensor, far: Tensor, alpha: Tensor) -> Tensor:
        """``(1 - alpha) x + alpha far`` per sample (``alpha`` ``(m,)`` float64)."""
        a = alpha.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - a) * x + a * far

    @staticmethod
    def _box(x: Tensor, far: Tensor, alpha: Tensor) -> Tensor:
        """``far`` clipped to the L∞ box of radius ``alpha`` ``(m,)`` around ``x``."""
        a = alpha.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return torch.minimum(torch.maximum(far, x - a), x + a)

    def _theta(self, d: int) -> float:
        """The binary-search threshold for ``d`` input entries."""
        return self.gamma / (d**1.5 if self.threat.norm == "l2" else d**2)

    # --- the attack -------------------------------------------------------------------------

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        d = int(x[0].numel()) if n else 1
        oracle = LabelOracle(model, n, self.queries, self.eot_samples, self.batch_size, x.device)
        rnd = self._randomness(x)

        def goal(labels: Tensor, owners: Tensor) -> Tensor:
            return labels == targets[owners] if targets is not None else labels != y[owners]

        run = _Run(self, oracle, goal, x, d)
        run.start(_STARTS.get(), rnd)
        run.iterate(rnd)
        out = torch.where(run.found.view(-1, *([1] * (x.dim() - 1))), run.best, x)
        return out, oracle.queries


class _Run:
    """The state of one call: per sample, the current boundary point, the closest adversarial
    point found and its distance; every array spans the batch (``N`` rows) and a phase updates
    the rows of the samples it works on."""

    def __init__(
        self,
        attack: HopSkipJump,
        oracle: LabelOracle,
        goal: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        d: int,
    ) -> None:
        self.attack, self.oracle, self.goal, self.x, self.d = attack, oracle, goal, x, d
        self.threat = attack.threat
        n = x.shape[0]
        self.theta = attack._theta(d)
        self.found = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.cur = x.clone()
        self.best = x.clone()
        self.dist = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.best_dist = self.dist.clone()
        self.dist_post = self.dist.clone()  # distance of the point the last step reached

    # --- bookkeeping --------------------------------------------------------------------------

    def _keep_best(self, idx: Tensor, points: Tensor) -> None:
        """Record ``points`` (adversarial, one per sample ``idx``) where they beat the best."""
        dist = self.attack._dist(points, self.x[idx]).to(torch.float64)
        better = dist < self.best_dist[idx]
        self.best[idx[better]] = points[better]
        self.best_dist[idx[better]] = dist[better]
        # at the input itself there is nothing left to shrink (and delta would be 0)
        self.done[idx] |= self.best_dist[idx] == 0
        if self.attack.early_stop:
            self.done[idx] |= self.best_dist[idx] <= self.threat.epsilon

    def _within(self, idx: Tensor, points: Tensor) -> Tensor:
        """``(m,)`` bool: with early stop, ``points`` lie within ε of their inputs."""
        if not self.attack.early_stop:
            return torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        return self.attack._dist(points, self.x[idx]) <= self.threat.epsilon

    def _live(self) -> Tensor:
        return (self.found & ~self.done).nonzero().squeeze(1)

    # --- starting points ----------------------------------------------------------------------

    def start(self, starts: Tensor | None, rnd: SampleRandomness) -> None:
        """Find an adversarial point per sample (the given start, else uniform noise), blend it
        towards the input to a precision of 0.001, then search the boundary in the threat's
        norm (the reference implementation's initialisation)."""
        x, oracle = self.x, self.oracle
        n = x.shape[0]
        origin = x.clone()
        all_idx = torch.arange(n, device=x.device)
        if starts is not None:
            idx = all_idx[oracle.remaining(all_idx) > 0]
            hit = self.goal(oracle.ask(starts[idx], idx), idx)
            origin[idx[hit]] = starts[idx[hit]]
            self.found[idx[hit]] = True
        low, high = self.threat.bounds
        for _ in range(self.attack.init_draws):
            idx = all_idx[~self.found]
            idx = idx[oracle.remaining(idx) > 0]
            if idx.numel() == 0:
                break
            noise = low + (high - low) * rnd.rows(idx).rand(tuple(x[idx].shape), x)
            noise = noise.clamp(low, high)
            hit = self.goal(oracle.ask(noise, idx), idx)
            origin[idx[hit]] = noise[hit]
            self.found[idx[hit]] = True
        idx = self.found.nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        self._keep_best(idx, origin[idx])
        ones = torch.ones(idx.shape[0], dtype=torch.float64, device=x.device)
        self.cur[idx] = self._search(idx, origin[idx], ones, _INIT_PRECISION * ones, blend=True)
        self.dist_post[idx] = self.attack._dist(self.cur[idx], x[idx]).to(torch.float64)
        self._keep_best(idx, self.cur[idx])
        idx = self._live()
        self._boundary(idx, self.cur[idx])

    # --- searches -----------------------------------------------------------------------------

    def _search(
        self, idx: Tensor, far: Tensor, high: Tensor, threshold: Tensor, *, blend: bool
    ) -> Tensor:
        """Binary search per sample ``idx`` between its input (weight 0) and ``far`` (weight
        ``high``, adversarial) until the bracket is at most ``threshold`` wide, the budget is
        spent or (with early stop) the adversarial end is within ε. ``blend``: along the line
        (``(1 - a) x + a far``), else in the L∞ box of radius ``a``. Returns the adversarial end
        ``(len(idx), ...)``."""
        x = self.x[idx]
        along = self.attack._blend if blend else self.attack._box
        low = torch.zeros_like(high)
        high = high.clone()
        live = torch.ones_like(high, dtype=torch.bool)
        moved = torch.zeros_like(live)
        for _ in range(_MAX_BISECTIONS):
            live &= (high - low) > threshold
            live &= self.oracle.remaining(idx) > 0
            live &= ~self._within(idx, along(x, far, high))
            sel = live.nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            mid = (high[sel] + low[sel]) / 2
            stuck = (mid <= low[sel]) | (mid >= high[sel])  # float64 resolution reached
            live[sel[stuck]] = False
            sel, mid = sel[~stuck], mid[~stuck]
            hit = self.goal(self.oracle.ask(along(x[sel], far[sel], mid), idx[sel]), idx[sel])
            high[sel] = torch.where(hit, mid, high[sel])
            low[sel] = torch.where(hit, low[sel], mid)
            moved[sel[hit]] = True
        # ``far`` itself where no point nearer was found: the very point known adversarial
        return torch.where(moved.view(-1, *[1] * (x.dim() - 1)), along(x, far, high), far)

    def _boundary(self, idx: Tensor, far: Tensor) -> None:
        """Binary search in the threat's norm from ``far`` (adversarial) back to the boundary:
        the new current points and their distances."""
        if self.threat.norm == "l2":
            high = torch.ones(idx.shape[0], dtype=torch.float64, device=far.device)
            threshold = torch.full_like(high, self.theta)
        else:
            high = self.attack._dist(far, self.x[idx]).to(torch.float64)
            threshold = torch.clamp(high * self.theta, max=self.theta)
        points = self._search(idx, far, high, threshold, blend=self.threat.norm == "l2")
        self.cur[idx] = points
        self.dist[idx] = self.attack._dist(points, self.x[idx]).to(torch.float64)
        self._keep_best(idx, points)

    # --- iterations ---------------------------------------------------------------------------

    def iterate(self, rnd: SampleRandomness) -> None:
        """Gradient-direction estimate, geometric step and boundary search, until every sample
        is done or out of budget."""
        attack, oracle, x = self.attack, self.oracle, self.x
        low, high = self.threat.bounds
        t = 0
        while True:
            t += 1
            idx = self._live()
            # at least one point for the estimate and one for the step
            idx = idx[oracle.remaining(idx) >= 2]
            if idx.numel() == 0:
                return
            if t == 1:
                delta = torch.full((idx.shape[0],), 0.1 * (high - low), dtype=torch.float64)
            else:
                scale = math.sqrt(self.d) if self.threat.norm == "l2" else float(self.d)
                delta = scale * self.theta * self.dist_post[idx]
            delta = delta.to(x.device)
            evals = gradient_samples(t, attack.init_evals, attack.max_evals)
            counts = torch.clamp(oracle.remaining(idx) - 1, max=evals)
            grad = self._gradient(idx, counts, delta, rnd)
            keep = ~self.done[idx]  # an adversarial probe within ε ends a sample too
            idx, grad = idx[keep], grad[keep]
            update = grad.sign() if self.threat.norm == "linf" else grad
            stepped = self._step(idx, update, self.dist[idx] / math.sqrt(t))
            self.dist_post[idx] = attack._dist(stepped, x[idx]).to(torch.float64)
            self._keep_best(idx, stepped)
            idx_live = ~self.done[idx]
            self._boundary(idx[idx_live], stepped[idx_live])

    def _gradient(
        self, idx: Tensor, counts: Tensor, delta: Tensor, rnd: SampleRandomness
    ) -> Tensor:
        """The estimated direction of the boundary's normal at the current point of each sample
        ``idx`` from ``counts[i]`` labelled random directions of length ``delta[i]`` (the
        paper's eq. 14, with its baseline), unit L2 norm: ``(len(idx), ...)``."""
        x = self.x
        shape = tuple(x.shape[1:])
        low, high = self.threat.bounds
        gens = rnd.generators()
        out = torch.zeros((idx.shape[0], *shape), dtype=x.dtype, device=x.device)
        for group in self._groups(counts):
            sub, rows = idx[group], counts[group].tolist()
            dirs = []
            for i, m in zip(sub.tolist(), rows, strict=True):
                if self.threat.norm == "l2":
                    r = torch.randn((m, *shape), generator=gens[i], device=x.device, dtype=x.dtype)
                else:
                    r = torch.rand((m, *shape), generator=gens[i], device=x.device, dtype=x.dtype)
                    r = 2 * r - 1
                dirs.append(
                    r / r.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * len(shape))
                )
            owners = torch.repeat_interleave(sub, counts[group])
            pos = torch.repeat_interleave(group, counts[group])
            center = self.cur[owners]
            dl = delta[pos].to(x.dtype).view(-1, *[1] * len(shape))
            points = (center + dl * torch.cat(dirs)).clamp(low, high)
            r_eff = (points - center) / dl
            hit = self.goal(self.oracle.ask(points, owners), owners)
            self._keep_closest(sub, rows, points, hit)
            sign = 2 * hit.to(x.dtype) - 1
            for j, chunk_sign, chunk_r in zip(
                group.tolist(),
                sign.split_with_sizes(rows),
                r_eff.split_with_sizes(rows),
                strict=True,
            ):
                mean = float(chunk_sign.mean())
                if mean == 1.0:
                    g = chunk_r.mean(dim=0)
                elif mean == -1.0:
                    g = -chunk_r.mean(dim=0)
                else:
                    w = (chunk_sign - mean).view(-1, *[1] * len(shape))
                    g = (w * chunk_r).mean(dim=0)
                out[j] = g / g.norm().clamp_min(1e-12)
        return out

    def _keep_closest(self, idx: Tensor, rows: list[int], points: Tensor, hit: Tensor) -> None:
        """Record, per sample ``idx``, the closest of its ``rows[i]`` consecutive ``points``
        labelled adversarial (``hit``): a probe paid for like any query."""
        owners = torch.repeat_interleave(idx, torch.tensor(rows, device=idx.device))
        dist = self.attack._dist(points, self.x[owners]).to(torch.float64)
        dist = torch.where(hit, dist, torch.full_like(dist, math.inf))
        starts = torch.tensor([0, *rows[:-1]], device=idx.device).cumsum(0)
        pick = []
        for start, chunk in zip(starts.tolist(), dist.split_with_sizes(rows), strict=True):
            pick.append(start + int(chunk.argmin()))
        chosen = torch.tensor(pick, dtype=torch.int64, device=idx.device)
        found = hit[chosen]
        self._keep_best(idx[found], points[chosen[found]])

    def _groups(self, counts: Tensor) -> Iterator[Tensor]:
        """Positions into ``counts`` in groups of at most ``batch_size`` points (a single sample
        may exceed it: the oracle splits its forward passes)."""
        group: list[int] = []
        size = 0
        for j, c in enumerate(counts.tolist()):
            if group and size + c > self.attack.batch_size:
                yield torch.tensor(group, dtype=torch.int64, device=counts.device)
                group, size = [], 0
            group.append(j)
            size += c
        if group:
            yield torch.tensor(group, dtype=torch.int64, device=counts.device)

    def _step(self, idx: Tensor, update: Tensor, size: Tensor) -> Tensor:
        """Geometric progression: from ``size`` ``(len(idx),)``, halve the step along ``update``
        until the stepped point is adversarial (or the budget is spent: the current point is
        kept). Returns the stepped points ``(len(idx), ...)``."""
        low, high = self.threat.bounds
        cur = self.cur[idx]
        out = cur.clone()
        size = size.clone()
        pending = torch.ones(idx.shape[0], dtype=torch.bool, device=cur.device)
        view = (-1, *[1] * (cur.dim() - 1))
        for _ in range(_MAX_HALVINGS):
            pending &= self.oracle.remaining(idx) > 0
            sel = pending.nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            cand = (cur[sel] + size[sel].to(cur.dtype).view(view) * update[sel]).clamp(low, high)
            hit = self.goal(self.oracle.ask(cand, idx[sel]), idx[sel])
            out[sel[hit]] = cand[hit]
            pending[sel[hit]] = False
            size[sel[~hit]] /= 2
        return out
