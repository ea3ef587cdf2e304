"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random search.

Each query tries one square-shaped change of the current best perturbation and keeps it only if
the loss improves. L∞ starts from vertical stripes of ±ε and sets a random square to one ±ε
colour per channel; L2 starts from a grid of pseudo-Gaussian bumps and moves mass between two
random squares. The side of the square shrinks with the query count following the published
piecewise schedule, rescaled to the query budget as in the reference implementation.

Only forward passes are used (under ``torch.no_grad()``), so the model needs no gradients: a
:class:`~robustops.models.ProbaClassifier` around a scikit-learn model works.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial, project
from robustops.attacks.eot import averaged_model
from robustops.attacks.losses import ce_loss, margin_loss
from robustops.attacks.randomness import SampleDraws
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["Square", "p_schedule"]

# (upper end of the rescaled iteration, divisor of p_init): the reference schedule for 10 000
# iterations; beyond the last entry p is p_init / 512.
_SCHEDULE: tuple[tuple[int, int], ...] = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)
_COLOUR_DRAWS = 8  # L∞: colour draws per iteration, for rejecting squares that change nothing


def p_schedule(p_init: float, iteration: int, n_iters: int) -> float:
    """Fraction of pixels changed at ``iteration`` (0-based) of an ``n_iters``-query run.

    The published piecewise-constant schedule, defined for 10 000 iterations and rescaled to
    ``n_iters``: ``p_init`` up to 10, then halved at 10, 50, 200, 500, 1000, 2000, 4000, 6000
    and 8000 (``p_init / 512`` at the end).
    """
    it = int(iteration / n_iters * 10000)
    for bound, divisor in _SCHEDULE:
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _bump_rectangle(rows: int, cols: int, like: Tensor) -> Tensor:
    """``(rows, cols)`` concentric rectangles weighted ``1 / (k + 1)²``, unit L2 norm."""
    out = torch.zeros(rows, cols, dtype=like.dtype, device=like.device)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        r, c = r0 - k, c0 - k
        out[max(r, 0) : min(r + 2 * k + 1, rows), max(c, 0) : min(c + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return torch.div(out, out.norm().clamp_min(1e-12))


def _bump(side: int, like: Tensor) -> Tensor:
    """``(side, side)`` pseudo-Gaussian bump: a positive half above a negative half, unit norm."""
    half = side // 2
    out = torch.cat(
        [_bump_rectangle(half, side, like), -_bump_rectangle(side - half, side, like)], dim=0
    )
    return torch.div(out, out.norm().clamp_min(1e-12))


def _signs(shape: tuple[int, ...], draws: SampleDraws, like: Tensor) -> Tensor:
    """Uniform ±1 of ``shape`` (one row per sample of ``draws``) in ``like``'s dtype and device."""
    bits = draws.randint(0, 2, shape, like.device)
    return (2 * bits - 1).to(like.dtype)


def _windows(
    n: int, side: int, height: int, width: int, draws: SampleDraws, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """One random ``side × side`` square per sample, fully inside the image.

    Returns the mask ``(n, 1, H, W)`` bool and, for every pixel, its row ``(n, H)`` and column
    ``(n, W)`` offset relative to the square's top-left corner.
    """
    corner = draws.randint(0, 1 << 30, (n, 2), device)
    top = corner[:, 0] % (height - side + 1)
    left = corner[:, 1] % (width - side + 1)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    cols = torch.arange(width, device=device)[None, :] - left[:, None]
    in_rows = (rows >= 0) & (rows < side)
    in_cols = (cols >= 0) & (cols < side)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    return mask, rows, cols


@register_attack
class Square(Attack):
    """Square Attack, score-based: random square updates accepted only when the loss improves.

    Inputs are images ``(N, C, H, W)`` (or ``(N, H, W)``, read as one channel) inside the
    threat's bounds. A sample leaves the batch as soon as a query finds it adversarial, so the
    budget is spent only on what is still robust.

    Args:
        threat: norm (``"linf"`` or ``"l2"``), epsilon, bounds, goal and, optionally, the
            per-sample ``query_budget``.
        queries: model queries per sample, initialisation included (it costs one). The effective
            budget, stored in ``queries``, is ``min(queries, threat.query_budget)`` when the
            threat sets one. With restarts the budget is split between them, each restart
            running the full p schedule over its share.
        p_init: initial fraction of pixels a square covers, in ``(0, 1]``; the side is
            ``round(sqrt(p * H * W))``. The default 0.8 suits small images (the authors' MNIST
            setting and AutoAttack's); the paper uses 0.05 (L∞) and 0.1 (L2) on ImageNet and
            0.3 on some defended MNIST/CIFAR-10 models.
        restarts: independent runs from a fresh initialisation, each on the samples still not
            adversarial; capped at the budget.
        loss: ``"margin"`` or ``"ce"``; default the paper's choice, margin when untargeted and
            cross-entropy to the target when targeted.
        early_stop: a sample leaves the batch at the first query that finds it adversarial.
            ``False`` keeps searching to the end of the budget for the highest loss (for a
            stochastic model one draw across the boundary is not its mean across it).
        eot_samples: forward passes whose logits are averaged to score each candidate
            (Expectation over Transformation, for stochastic models). Every pass is a query,
            so a run makes ``queries // eot_samples`` candidate evaluations. 1: the plain attack.
        seed: seeds every random draw (initialisation, square positions, colours).
    """

    name = "square"
    knowledge = "score-based"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        queries: int = 1000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: Literal["margin", "ce"] | None = None,
        early_stop: bool = True,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("queries", queries, integer=True)
        self._check_positive("eot_samples", eot_samples, integer=True)
        self._check_positive("p_init", p_init)
        if p_init > 1:
            raise SpecError.single("p_init", f"must be in (0, 1], got {p_init!r}")
        self._check_positive("restarts", restarts, integer=True)
        if loss is not None and loss not in ("margin", "ce"):
            raise SpecError.single("loss", f"must be 'margin', 'ce' or None, got {loss!r}")
        if threat.query_budget is not None:
            queries = min(queries, threat.query_budget)
        self.queries = queries
        self.p_init = float(p_init)
        self.restarts = min(restarts, queries)
        self.loss = loss
        self.early_stop = bool(early_stop)
        self.eot_samples = eot_samples

    def _loss(self, logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        """Per-sample objective ``(N,)`` to maximise."""
        name = self.loss or ("ce" if targets is not None else "margin")
        return ce_loss(logits, y, targets) if name == "ce" else margin_loss(logits, y, targets)

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if x.dim() not in (3, 4):
            raise SpecError.single(
                "inputs",
                f"Square needs images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}",
            )
        images = x if x.dim() == 4 else x.unsqueeze(1)
        best = images.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        queries = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        eot = self.eot_samples
        evaluations = max(self.queries // eot, 1)
        restarts = min(self.restarts, evaluations)
        share, extra = divmod(evaluations, restarts)
        model = averaged_model(model, eot)
        rnd = self._randomness(x)  # per-sample squares, colours and signs
        with torch.no_grad():
            for r in range(restarts):
                idx = (~done).nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                t = targets[idx] if targets is not None else None
                budget = share + (1 if r < extra else 0)
                adv, used, hit = self._single_run(
                    model, x.shape, images[idx], y[idx], t, budget, rnd.rows(idx)
                )
                queries[idx] += used * eot
                if r == 0:
                    best[idx] = adv
                else:
                    best[idx[hit]] = adv[hit]
                done[idx[hit]] = True
        return best.reshape(x.shape), queries

    def _single_run(
        self,
        model: ModelFn,
        shape: torch.Size,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        budget: int,
        draws: SampleDraws,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One run of at most ``budget`` queries on images ``x`` ``(n, C, H, W)``.

        Returns the best inputs ``(n, C, H, W)``, the evaluations spent ``(n,)`` int64 and
        whether each sample was found adversarial ``(n,)`` bool. Without early stop every sample
        runs the whole budget and ends at its highest-loss candidate.
        """

        def query(inputs: Tensor, st: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            logits = model(inputs.reshape(-1, *shape[1:]))
            tgt = st.get("t")
            return self._loss(logits, st["y"], tgt), is_adversarial(logits, st["y"], tgt)

        linf = self.threat.norm == "linf"
        # Per-sample state, compacted as samples succeed; `act` maps rows back to the batch.
        state = {"x": x, "y": y}
        if targets is not None:
            state["t"] = targets
        if linf:
            state["lo"], state["hi"] = self._corners(x)
            state["best"] = self._init_linf(state, draws)
        else:
            state["best"] = self._init_l2(x, draws)
        state["loss"], success = query(state["best"], state)
        used = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
        result = state["best"].clone()

        act = (~success).nonzero().squeeze(1) if self.early_stop else torch.arange(x.shape[0])
        act = act.to(x.device)
        draws = draws.subset(act)
        state = {k: v[act] for k, v in state.items()}
        state["hit"] = success[act]
        for it in range(budget - 1):
            if act.numel() == 0:
                break
            p = p_schedule(self.p_init, it, budget)
            cand = self._step_linf(state, p, draws) if linf else self._step_l2(state, p, draws)
            loss, adv = query(cand, state)
            used[act] += 1
            better = (loss > state["loss"]) | (adv & self.early_stop)
            state["best"] = torch.where(better[:, None, None, None], cand, state["best"])
            state["loss"] = torch.where(better, loss, state["loss"])
            state["hit"] = torch.where(better, adv, state["hit"])
            if self.early_stop and bool(adv.any()):
                result[act[adv]] = cand[adv]
                success[act[adv]] = True
                keep = ~adv
                act = act[keep]
                draws = draws.subset(keep)
                state = {k: v[keep] for k, v in state.items()}
        success[act] = state["hit"]
        result[act] = state["best"]
        return result, used, success

    # --- L∞ ---------------------------------------------------------------------------------

    def _corners(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x - ε`` and ``x + ε`` ``(n, C, H, W)``, projected onto the ball and the bounds.

        Every L∞ iterate is a pixel-wise choice between the two, so it stays exactly inside the
        ball without projecting again.
        """
        eps = self.threat.epsilon
        return project(x - eps, x, self.threat), project(x + eps, x, self.threat)

    def _init_linf(self, state: dict[str, Tensor], draws: SampleDraws) -> Tensor:
        """Vertical stripes: each column of each channel set to ``x + ε`` or ``x - ε``."""
        n, c, _, w = state["x"].shape
        up = draws.randint(0, 2, (n, c, 1, w), state["x"].device).bool()
        return torch.where(up, state["hi"], state["lo"])

    def _step_linf(self, state: dict[str, Tensor], p: float, draws: SampleDraws) -> Tensor:
        """Set one random square per sample to ``x ± ε``, one sign per channel (its colour).

        As in the reference, the colour is drawn uniformly among those that change the current
        best inside the square (by rejection, over ``_COLOUR_DRAWS`` draws; if all fail, the
        first is negated, which always changes something when ε > 0).
        """
        best, lo, hi = state["best"], state["lo"], state["hi"]
        n, c, h, w = best.shape
        side = min(max(round(math.sqrt(p * h * w)), 1), max(min(h, w) - 1, 1))
        mask, _, _ = _windows(n, side, h, w, draws, best.device)
        outside = ~mask
        # (n, C): the square of channel k already holds x + ε (resp. x - ε) everywhere.
        at_hi = ((best == hi) | outside).flatten(2).all(dim=2)
        at_lo = ((best == lo) | outside).flatten(2).all(dim=2)
        up = draws.randint(0, 2, (n, _COLOUR_DRAWS, c), best.device).transpose(0, 1).bool()
        same = torch.where(up, at_hi, at_lo).all(dim=2)  # (draws, n)
        first = (~same).to(torch.int8).argmax(dim=0)
        colour = up[first, torch.arange(n, device=best.device)]
        colour = torch.where(same.all(dim=0)[:, None], ~up[0], colour)
        return torch.where(mask, torch.where(colour[:, :, None, None], hi, lo), best)

    # --- L2 ---------------------------------------------------------------------------------

    def _init_l2(self, x: Tensor, draws: SampleDraws) -> Tensor:
        """A 5×5-ish grid of pseudo-Gaussian bumps with random signs per sample and channel,
        rescaled to norm ε, projected."""
        n, c, h, w = x.shape
        side = max(min(h, w) // 5, 1)
        start = (h - side * 5) // 2 if h >= side * 5 else 0
        bump = _bump(side, x)
        delta = torch.zeros_like(x)
        for i in range(h // side):
            top = start + i * side
            for j in range(w // side):
                left = start + j * side
                flip = draws.randint(0, 2, (n,), x.device).bool()
                pattern = torch.where(flip[:, None, None], bump.t(), bump)  # (n, side, side)
                rows = max(min(side, h - top), 0)
                cols = max(min(side, w - left), 0)
                sign = _signs((n, c, 1, 1), draws, x)
                delta[:, :, top : top + rows, left : left + cols] += (
                    pattern[:, None, :rows, :cols] * sign
                )
        return self._rescale_l2(x, delta)

    def _rescale_l2(self, x: Tensor, delta: Tensor) -> Tensor:
        """``x + ε · delta / ||delta||₂`` per sample, projected onto the ball and the bounds."""
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return project(x + self.threat.epsilon * delta / norms, x, self.threat)

    def _step_l2(self, state: dict[str, Tensor], p: float, draws: SampleDraws) -> Tensor:
        """Move perturbation mass from a random square W2 into a random square W1 (per sample).

        W1 receives a signed pseudo-Gaussian bump plus its current normalised content, scaled so
        the total stays at ε; W2 is then zeroed, and the whole perturbation is rescaled to ε.
        """
        x, x_best = state["x"], state["best"]
        n, c, h, w = x.shape
        eps = self.threat.epsilon
        side = max(round(math.sqrt(p * h * w)), 3)
        side += 1 - side % 2
        side = min(side, h, w)
        mask1, rows, cols = _windows(n, side, h, w, draws, x.device)
        mask2, _, _ = _windows(n, side, h, w, draws, x.device)
        bump = _bump(side, x)
        patterns = torch.stack([bump, bump.t()])
        orient = draws.randint(0, 2, (n,), x.device)
        r = rows.clamp(0, side - 1)[:, :, None]
        k = cols.clamp(0, side - 1)[:, None, :]
        placed = (patterns[orient[:, None, None], r, k][:, None] * mask1).to(x.dtype)

        delta = x_best - x
        in1 = delta * mask1
        norm1 = in1.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_both = (delta * (mask1 | mask2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()

        new = placed * _signs((n, c, 1, 1), draws, x) + in1 / (norm1 + 1e-10)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        room = ((eps**2 - norm_img.pow(2)).clamp_min(0) / c + norm_both.pow(2)).sqrt()
        new = new / new_norm * room
        delta = torch.where(mask2, torch.zeros_like(delta), delta)
        delta = torch.where(mask1, new, delta)
        return self._rescale_l2(x, delta)
