"""Auto-PGD (Croce & Hein, ICML 2020) for L∞ and L2: PGD with momentum and a step size that
halves at fixed checkpoints when progress stalls, so it needs no step-size tuning.

Schedule, as published: checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``,
``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; initial step
``eta = 2 * epsilon``; momentum ``alpha = 0.75``. At checkpoint ``w_j`` a sample's step halves
and it restarts from its best point when (1) its loss rose in fewer than
``rho * (w_j - w_{j-1})`` of the steps since the previous checkpoint, or (2) its step was not
halved at the previous checkpoint and its best loss has not improved since.

Where the paper is silent we follow the authors' code: the random start lies on the sphere of
radius epsilon; after a restart from the best point the momentum term is ``x_max - x_{k-1}`` and
the next rise is judged against the loss last evaluated. Unlike that code, ``steps`` counts every
forward+backward pass (the start included), and the checkpoints are the published ``ceil`` ones
(the code's integer decrements give other ones unless ``steps`` is a multiple of 100).

Variants are small subclasses: :class:`APGDDLR` fixes the DLR loss; :class:`APGDT` (AutoAttack's
APGD-T) runs the targeted DLR loss towards each of the top-ranked wrong classes in turn.

All bookkeeping is per sample and vectorised; a sample that becomes adversarial keeps that point
and leaves the batch, so later steps cost only what is still robust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

from robustops.attacks.base import Attack, ModelFn, is_adversarial, perturbation_norm, project
from robustops.attacks.eot import (
    LOSSES,
    LossFn,
    ascent_direction,
    loss_and_grad,
    mean_logits,
)
from robustops.attacks.randomness import SampleDraws, SampleRandomness
from robustops.attacks.registry import register_attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["APGD", "APGDDLR", "APGDT", "apgd_checkpoints"]

_P1 = Fraction(22, 100)
_DECAY = Fraction(3, 100)
_MIN_GAP = Fraction(6, 100)


def apgd_checkpoints(steps: int) -> list[int]:
    """The published checkpoints ``[w_0 = 0, w_1, ...]`` for ``steps`` iterations.

    ``w_j = ceil(p_j * steps)`` for every ``p_j <= 1``, computed in exact rational arithmetic
    (so ``0.57 * 100`` is 57, not 58); repeated values (tiny ``steps``) appear once.
    For ``steps = 100``: ``[0, 22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SpecError.single("steps", f"must be an int > 0, got {steps!r}")
    p_prev, p = Fraction(0), _P1
    points = [0]
    while p <= 1:
        w = math.ceil(p * steps)
        if w != points[-1]:
            points.append(w)
        p_prev, p = p, p + max(p - p_prev - _DECAY, _MIN_GAP)
    return points


def _view(v: Tensor, ref: Tensor) -> Tensor:
    """``v`` ``(n,)`` shaped to broadcast against ``ref`` ``(n, ...)``."""
    return v.view(-1, *([1] * (ref.dim() - 1)))


def _reference_start(x: Tensor, threat: ThreatModel, draws: SampleDraws) -> Tensor:
    """The reference implementation's random start: ``x + eps * t / ||t||`` (``t`` uniform in
    ``[-1, 1]`` for L∞, Gaussian for L2), i.e. a random point on the sphere of radius epsilon,
    then projected onto the bounds. ``x`` ``(n, ...)``, one row of ``draws`` per sample; returns
    ``(n, ...)``."""
    if threat.norm == "linf":
        t = draws.rand(tuple(x.shape), x) * 2 - 1
    else:
        t = draws.randn(tuple(x.shape), x)
    scale = perturbation_norm(t, threat.norm)
    return project(x + threat.epsilon * (t / _view(scale.clamp_min(1e-12), x)), x, threat)


def _checked(name: str, fn: LossFn) -> LossFn:
    """``fn``, refusing logits with too few classes for the DLR loss (3, or 4 when targeted)."""
    if name != "dlr":
        return fn

    def wrapped(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        need = 3 if targets is None else 4
        if logits.shape[1] < need:
            kind = "untargeted" if targets is None else "targeted"
            raise SpecError.single(
                "loss",
                f"the {kind} DLR loss needs >= {need} classes; the model returns "
                f"{logits.shape[1]}. Use loss='ce' or 'margin'.",
            )
        return fn(logits, labels, targets)

    return wrapped


@dataclass
class _Run:
    """State of the samples still attacked in one restart; every tensor has ``n`` rows.

    ``idx`` ``(n,)`` positions in the caller's batch; ``x0`` clean inputs; ``t0`` the threat's
    targets (the goal, ``None`` when untargeted); ``aim`` the classes the loss pulls towards
    (``t0``, or APGD-T's own targets under an untargeted threat); ``x_cur``/``x_prev``
    the current and previous iterates; ``grad`` the loss gradient at ``x_cur``; ``loss_cur``
    ``(n,)`` the loss last evaluated; ``x_max``/``f_max``/``g_max`` the best point, its loss and
    gradient; ``eta`` ``(n,)`` step sizes in input units; ``rises`` ``(n,)`` steps since the last
    checkpoint in which the loss rose; ``f_max_check`` best loss at the last checkpoint;
    ``reduced`` ``(n,)`` bool, the step was halved at the last checkpoint.
    """

    idx: Tensor
    x0: Tensor
    y0: Tensor
    t0: Tensor | None
    aim: Tensor | None
    x_cur: Tensor
    x_prev: Tensor
    grad: Tensor
    loss_cur: Tensor
    x_max: Tensor
    f_max: Tensor
    g_max: Tensor
    eta: Tensor
    rises: Tensor
    f_max_check: Tensor
    reduced: Tensor

    def select(self, keep: Tensor) -> _Run:
        """The rows where ``keep`` ``(n,)`` bool is true."""
        return _Run(
            idx=self.idx[keep],
            x0=self.x0[keep],
            y0=self.y0[keep],
            t0=self.t0[keep] if self.t0 is not None else None,
            aim=self.aim[keep] if self.aim is not None else None,
            x_cur=self.x_cur[keep],
            x_prev=self.x_prev[keep],
            grad=self.grad[keep],
            loss_cur=self.loss_cur[keep],
            x_max=self.x_max[keep],
            f_max=self.f_max[keep],
            g_max=self.g_max[keep],
            eta=self.eta[keep],
            rises=self.rises[keep],
            f_max_check=self.f_max_check[keep],
            reduced=self.reduced[keep],
        )


@dataclass
class _Outcome:
    """What the restarts found so far for the caller's batch of ``n`` samples: ``best`` the
    adversarial point of each sample broken, else its point of highest loss; ``best_loss``
    ``(n,)`` that loss; ``done`` ``(n,)`` bool, broken; ``queries`` ``(n,)`` passes spent."""

    best: Tensor
    best_loss: Tensor
    done: Tensor
    queries: Tensor

    @classmethod
    def start(cls, x: Tensor) -> _Outcome:
        n = x.shape[0]
        return cls(
            best=x.clone(),
            best_loss=torch.full((n,), -math.inf, dtype=x.dtype, device=x.device),
            done=torch.zeros(n, dtype=torch.bool, device=x.device),
            queries=torch.zeros(n, dtype=torch.int64, device=x.device),
        )


@register_attack
class APGD(Attack):
    """APGD with the cross-entropy loss by default (AutoAttack's ``apgd-ce``).

    Args:
        threat: norm (``"linf"`` or ``"l2"``), epsilon in input units, bounds and goal. When
            targeted, each call needs ``targets`` ``(N,)``; the losses then pull towards them
            (targeted DLR as in :func:`robustops.attacks.losses.dlr_loss`).
        steps: iterations per restart; each is ``eot_samples`` forward+backward passes, so a
            sample costs at most ``steps * restarts * eot_samples`` queries.
        restarts: runs from fresh random starts, each only on the samples not yet adversarial.
        rho: share of rising steps below which the step size halves at a checkpoint, in (0, 1].
        alpha: momentum weight of the new gradient step, in (0, 1] (1: no momentum).
        loss: ``"ce"``, ``"dlr"`` (needs >= 3 classes, >= 4 when targeted) or ``"margin"``.
        eot_samples: passes averaged per iteration (Expectation over Transformation, for
            stochastic models): the gradient, the loss behind the step-size decisions and the
            logits behind early stop are means over them. 1: the plain attack.
        seed: seeds the random starts.

    Returns (through :class:`~robustops.attacks.base.AttackResult`) the first adversarial
    point found for each sample, otherwise the point of highest loss over all restarts.
    """

    name = "apgd-ce"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        alpha: float = 0.75,
        loss: Literal["ce", "dlr", "margin"] = "ce",
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(threat, seed=seed)
        self._check_positive("steps", steps, integer=True)
        self._check_positive("restarts", restarts, integer=True)
        self._check_positive("eot_samples", eot_samples, integer=True)
        self._check_positive("rho", rho)
        self._check_positive("alpha", alpha)
        for pname, value in (("rho", rho), ("alpha", alpha)):
            if value > 1:
                raise SpecError.single(pname, f"must be in (0, 1], got {value!r}")
        if loss not in LOSSES:
            raise SpecError.single("loss", f"must be one of {sorted(LOSSES)}, got {loss!r}")
        self.steps = steps
        self.restarts = restarts
        self.rho = float(rho)
        self.alpha = float(alpha)
        self.loss = loss
        self.eot_samples = eot_samples

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        out = _Outcome.start(x)
        self._restarts(model, x, y, targets, targets, self._randomness(x), out)
        return out.best, out.queries

    def _restarts(
        self,
        model: ModelFn,
        x: Tensor,
        y: Tensor,
        targets: Tensor | None,
        aim: Tensor | None,
        rnd: SampleRandomness,
        out: _Outcome,
    ) -> None:
        """``restarts`` runs on the samples of ``x`` ``(n, ...)`` not yet ``out.done``, the loss
        pulled towards ``aim`` ``(n,)`` (``None``: untargeted loss); a sample is broken when
        misclassified (untargeted threat) or labelled ``targets``. Updates ``out``."""
        for _ in range(self.restarts):
            idx = (~out.done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t0 = targets[idx] if targets is not None else None
            a0 = aim[idx] if aim is not None else None
            run = self._single_run(model, x[idx], y[idx], t0, a0, idx, rnd.rows(idx), out)
            if run is not None and run.idx.numel():
                better = run.f_max > out.best_loss[run.idx]
                out.best[run.idx[better]] = run.x_max[better]
                out.best_loss[run.idx[better]] = run.f_max[better]

    def _single_run(
        self,
        model: ModelFn,
        x0: Tensor,
        y0: Tensor,
        t0: Tensor | None,
        aim0: Tensor | None,
        idx: Tensor,
        draws: SampleDraws,
        out: _Outcome,
    ) -> _Run | None:
        """One restart on ``x0`` ``(n, ...)`` (rows ``idx`` of the caller's batch), the loss
        pulled towards ``aim0`` (``None``: untargeted), success judged against ``t0``.

        Writes adversarial points into ``out.best`` and marks them in ``out.done`` as they are
        found, adds one to ``out.queries`` per forward+backward pass (``eot_samples`` per
        iteration); returns the samples still robust at the end (with their best points), or
        ``None`` when none are.
        """
        threat = self.threat
        loss_fn = _checked(self.loss, LOSSES[self.loss])
        start = _reference_start(x0, threat, draws)
        eot = self.eot_samples
        logits, loss, grad = loss_and_grad(model, start, y0, aim0, loss_fn, eot)
        out.queries[idx] += eot
        zeros = torch.zeros_like(loss, dtype=torch.int64)
        run = _Run(
            idx=idx,
            x0=x0,
            y0=y0,
            t0=t0,
            aim=aim0,
            x_cur=start,
            x_prev=start,
            grad=grad,
            loss_cur=loss,
            x_max=start,
            f_max=loss,
            g_max=grad,
            eta=torch.full_like(loss, 2.0 * threat.epsilon),
            rises=zeros,
            f_max_check=loss,
            reduced=torch.ones_like(zeros, dtype=torch.bool),
        )
        maybe = self._drop_hits(run, logits, out)
        if maybe is None:
            return None
        run = maybe
        checkpoints = frozenset(apgd_checkpoints(self.steps)[1:])
        last_check = 0
        for k in range(1, self.steps):
            a = self.alpha if k > 1 else 1.0
            eta = _view(run.eta, run.x0)
            z = project(run.x_cur + eta * ascent_direction(run.grad, threat.norm), run.x0, threat)
            step = a * (z - run.x_cur) + (1.0 - a) * (run.x_cur - run.x_prev)
            x_new = project(run.x_cur + step, run.x0, threat)
            logits, loss, grad = loss_and_grad(model, x_new, run.y0, run.aim, loss_fn, eot)
            out.queries[run.idx] += eot
            run.x_prev, run.x_cur, run.grad = run.x_cur, x_new, grad
            run.rises = run.rises + (loss > run.loss_cur).to(torch.int64)
            run.loss_cur = loss
            up = loss > run.f_max
            up_x = _view(up, x_new)
            run.x_max = torch.where(up_x, x_new, run.x_max)
            run.g_max = torch.where(up_x, grad, run.g_max)
            run.f_max = torch.where(up, loss, run.f_max)
            maybe = self._drop_hits(run, logits, out)
            if maybe is None:
                return None
            run = maybe
            if k in checkpoints:
                stalled = run.rises.to(loss.dtype) < self.rho * (k - last_check)
                flat = ~run.reduced & (run.f_max <= run.f_max_check)
                halve = stalled | flat
                halve_x = _view(halve, run.x_cur)
                run.eta = torch.where(halve, run.eta / 2, run.eta)
                run.x_cur = torch.where(halve_x, run.x_max, run.x_cur)
                run.grad = torch.where(halve_x, run.g_max, run.grad)
                run.reduced = halve
                run.f_max_check = run.f_max
                run.rises = torch.zeros_like(run.rises)
                last_check = k
        return run

    @staticmethod
    def _drop_hits(run: _Run, logits: Tensor, out: _Outcome) -> _Run | None:
        """Record in ``out`` the samples whose current point ``logits`` ``(n, K)`` call
        adversarial and return the rest (``None`` if none remain)."""
        hit = is_adversarial(logits, run.y0, run.t0)
        if not bool(hit.any()):
            return run
        out.best[run.idx[hit]] = run.x_cur[hit]
        out.done[run.idx[hit]] = True
        if bool(hit.all()):
            return None
        return run.select(~hit)


@register_attack
class APGDDLR(APGD):
    """APGD on the difference-of-logits-ratio loss (AutoAttack's ``apgd-dlr``; targeted: the
    targeted DLR loss). Needs >= 3 classes (>= 4 when targeted). Same arguments as
    :class:`APGD` except ``loss``, which is fixed to ``"dlr"``."""

    name = "apgd-dlr"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        alpha: float = 0.75,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            threat,
            steps=steps,
            restarts=restarts,
            rho=rho,
            alpha=alpha,
            loss="dlr",
            eot_samples=eot_samples,
            seed=seed,
        )


@register_attack
class APGDT(APGD):
    """APGD-T (AutoAttack's ``apgd-t``): for an untargeted threat, APGD with the targeted DLR
    loss towards each of the ``n_target_classes`` classes the clean logits rank highest after
    the label, one after another on the samples still robust (``restarts`` runs per class).
    A sample is broken as soon as it is misclassified, as any class.

    Needs >= 4 classes. Same arguments as :class:`APGD` except ``loss`` (fixed to the targeted
    DLR loss), plus:

        n_target_classes: target classes tried per sample, in ``[1, K - 1]`` for ``K`` classes
            (capped at ``K - 1`` at call time); AutoAttack uses 9.

    A sample costs at most ``eot_samples * (1 + n_target_classes * restarts * steps)`` queries
    (the first pass ranks the classes). Under a targeted threat the target is given: the attack
    is then ``apgd-dlr`` towards it (``restarts`` runs, no ranking pass).
    """

    name = "apgd-t"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        alpha: float = 0.75,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            threat,
            steps=steps,
            restarts=restarts,
            rho=rho,
            alpha=alpha,
            loss="dlr",
            eot_samples=eot_samples,
            seed=seed,
        )
        self._check_positive("n_target_classes", n_target_classes, integer=True)
        self.n_target_classes = n_target_classes

    def _randomness(self, x: Tensor) -> SampleRandomness:
        """APGD-DLR's per-sample generators: given a target, this attack *is* ``apgd-dlr``
        towards it, and draws the same starts."""
        return SampleRandomness(x, f"apgd-dlr|{self.seed}")

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        out = _Outcome.start(x)
        rnd = self._randomness(x)
        if targets is not None or x.shape[0] == 0:
            self._restarts(model, x, y, targets, targets, rnd, out)
            return out.best, out.queries
        logits = mean_logits(model, x, self.eot_samples)
        out.queries += self.eot_samples
        others = logits.scatter(1, y[:, None], -math.inf)  # the label is never a target
        ranked = others.argsort(dim=1, descending=True)
        for j in range(min(self.n_target_classes, logits.shape[1] - 1)):
            self._restarts(model, x, y, None, ranked[:, j], rnd, out)
        return out.best, out.queries
