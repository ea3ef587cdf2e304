"""Gradient-masking audit: sanity checks that a robustness number is not an artefact of
gradients that mislead the attacks.

The checks follow Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of
security" (ICML 2018) and Carlini et al., "On evaluating adversarial robustness" (2019):

1. ``iterative_beats_single_step``: PGD must do at least as well as FGSM.
2. ``white_box_beats_black_box``: a score-based attack (Square) must not break samples that
   the white-box attacks (PGD, APGD-CE, APGD-DLR) could not.
3. ``monotone_in_epsilon``: PGD's success must not fall as the budget grows, and an unbounded
   budget (one that reaches every point of the input box) must break every sample.
4. ``noise_never_beats_gradient``: random points of the ball must not find what the gradient
   attacks missed.
5. ``gradient_health``: the input gradient of the loss must not be zero, underflowing or NaN
   (non-differentiable fronts, softmax saturation).
6. ``stochastic_model``: two passes on the same input must agree; if not, the white-box
   attacks run with Expectation over Transformation and successes are judged on the mean logits.
7. ``more_iterations_change_little``: doubling PGD's steps must add only a few points.

Each check reports ``pass``, ``warn``, ``fail`` or ``skip`` with its figures; the verdict is the
worst of them. The audit runs on the samples the model classifies correctly, in eval mode,
deterministically under ``seed`` (the global torch generator, which a stochastic model may
draw from, is seeded for the audit and restored afterwards).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from robustops._util import make_generator
from robustops.attacks import build_attack, is_adversarial
from robustops.attacks.base import frozen_parameters
from robustops.attacks.eot import is_stochastic, loss_and_grad, mean_logits
from robustops.attacks.losses import ce_loss, margin_loss
from robustops.errors import SpecError
from robustops.format import percent, points
from robustops.models.classifier import eval_mode, resolve_device
from robustops.schema import StrictModel
from robustops.threats import ThreatModel

__all__ = ["AuditCheck", "AuditResult", "AuditSettings", "CheckStatus", "audit_gradient_masking"]

CheckStatus = Literal["pass", "warn", "fail", "skip"]
Verdict = Literal["pass", "warn", "fail"]

# --- thresholds -------------------------------------------------------------------------------
# Shares are of the audited (correctly classified) samples. Where a share is compared with a
# tolerance, the tolerance is never below 1.5 samples, so one sample's chance never decides.
SINGLE_STEP_TOLERANCE = 0.02
"""FGSM may beat PGD by at most this share before the check fails."""
BLACK_BOX_WARN, BLACK_BOX_FAIL = 0.02, 0.10
"""Share of samples broken by Square but no white-box attack: warn above, fail above."""
MONOTONE_WARN, MONOTONE_FAIL = 0.02, 0.10
"""Largest drop of PGD's success between consecutive budgets: warn above, fail above."""
UNBOUNDED_MIN_SUCCESS = 0.95
"""PGD's success with an unbounded budget must reach this (ideally 100%)."""
NOISE_FAIL = 0.02
"""Share broken by noise but no gradient attack: warn above zero, fail above this."""
DEAD_GRADIENT_WARN, DEAD_GRADIENT_FAIL = 0.01, 0.10
"""Share of samples with a zero, underflowing or non-finite input gradient."""
MORE_STEPS_WARN = 0.05
"""Gain of PGD's success from doubling its steps above which the attack is under-converged."""
EPSILON_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Budgets of the epsilon sweep, in multiples of the threat's epsilon (then the unbounded one)."""

_RANK: dict[str, int] = {"skip": -1, "pass": 0, "warn": 1, "fail": 2}


class AuditCheck(StrictModel):
    """One check of the audit."""

    name: str = Field(description="the check, e.g. 'gradient_health'")
    status: CheckStatus = Field(
        description="pass; warn (suspicious); fail (masking); skip (not applicable)"
    )
    reason: str = Field(description="one human sentence with the numbers behind the status")
    figures: dict[str, float] = Field(
        description="the measured quantities (success rates and shares in [0, 1], counts, norms)"
    )


class AuditResult(StrictModel):
    """The gradient-masking audit of one model under one threat."""

    threat: str = Field(description="name of the audited threat")
    n_inputs: int = Field(description="inputs given to the audit")
    n_samples: int = Field(description="inputs audited: those the model classifies correctly")
    verdict: Verdict = Field(description="worst status of the checks (skips ignored)")
    summary: str = Field(description="one line explaining the verdict")
    checks: list[AuditCheck]
    stochastic: bool = Field(description="two forward passes on the same inputs differed")
    eot_samples: int = Field(
        description="passes averaged per gradient by the white-box attacks (1: EOT not used)"
    )
    seed: int
    wall_time_s: float

    def check(self, name: str) -> AuditCheck:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if c.status == "fail"]


@dataclass
class _Ctx:
    """What every check needs: the audited samples ``x`` ``(n, ...)`` (CPU), labels ``y``
    ``(n,)``, targets ``t`` ``(n,)`` or ``None``, the white-box threat and run settings."""

    model: nn.Module
    x: Tensor
    y: Tensor
    t: Tensor | None
    threat: ThreatModel
    dev: torch.device
    batch_size: int
    seed: int
    eot: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def batches(self, idx: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """``(positions, x, y, t)`` on the device, ``batch_size`` rows of ``idx`` at a time."""
        out = []
        for start in range(0, idx.numel(), self.batch_size):
            b = idx[start : start + self.batch_size]
            tb = self.t[b].to(self.dev) if self.t is not None else None
            out.append((b, self.x[b].to(self.dev), self.y[b].to(self.dev), tb))
        return out

    def run(
        self, name: str, idx: Tensor | None = None, threat: ThreatModel | None = None, **params: Any
    ) -> Tensor:
        """Run attack ``name`` on rows ``idx`` (default all) and return ``(n,)`` bool successes
        (rows outside ``idx`` false). White-box attacks use EOT when the model is stochastic;
        then every success is judged on the mean logits of ``eot`` passes."""
        threat = threat or self.threat
        attack = build_attack(name, threat, seed=self.seed, **params)
        idx = torch.arange(self.n) if idx is None else idx
        success = torch.zeros(self.n, dtype=torch.bool)
        for b, xb, yb, tb in self.batches(idx):
            res = attack(self.model, xb, yb, targets=tb)
            ok = res.success
            if self.eot > 1:
                ok = is_adversarial(mean_logits(self.model, res.adversarial, self.eot), yb, tb)
            success[b] = ok.cpu()
        return success


@dataclass(frozen=True)
class AuditSettings:
    """How hard the audit tries (validated on construction; :class:`SpecError` names the field).

    Attributes:
        steps: PGD and APGD iterations (PGD also runs with ``2 * steps``).
        square_queries: Square Attack's budget per sample.
        noise_draws: random points of the ball tried per sample.
        eot_samples: passes averaged per gradient when the model turns out stochastic.
        batch_size: samples per attack call.
        seed: seeds every attack, the targets and the global torch generator during the audit.
    """

    steps: int = 20
    square_queries: int = 500
    noise_draws: int = 100
    eot_samples: int = 10
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        for pname in ("steps", "square_queries", "noise_draws", "eot_samples", "batch_size"):
            value = getattr(self, pname)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError.single(pname, f"must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SpecError.single("seed", f"must be an int, got {self.seed!r}")


def audit_gradient_masking(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    threat: ThreatModel,
    *,
    steps: int = 20,
    square_queries: int = 500,
    noise_draws: int = 100,
    eot_samples: int = 10,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> AuditResult:
    """Audit ``model`` for gradient masking on ``inputs`` ``(N, ...)`` with ``labels`` ``(N,)``.

    Args:
        model: a differentiable module returning logits ``(N, K)``; in eval mode for the audit,
            the train/eval flag of each submodule restored afterwards.
        inputs: inside ``threat.bounds``; only those the model classifies correctly are audited
            (for a stochastic model: correctly on the mean logits of ``eot_samples`` passes).
        labels: true classes ``(N,)``.
        threat: norm, epsilon, bounds and goal. The audit needs gradients and sets its own
            query budgets, so it uses a white-box copy of the threat without ``query_budget``.
            When targeted, a random wrong class per input is drawn from ``seed``.
        steps, square_queries, noise_draws, eot_samples, batch_size, seed: see
            :class:`AuditSettings`.
        device: where to run; default the model's device.

    Returns:
        An :class:`AuditResult` whose ``checks`` are, in order, ``iterative_beats_single_step``,
        ``white_box_beats_black_box``, ``monotone_in_epsilon``, ``noise_never_beats_gradient``,
        ``gradient_health``, ``stochastic_model`` and ``more_iterations_change_little``.

    Raises:
        SpecError: invalid arguments, or no input the model classifies correctly.
    """
    settings = AuditSettings(steps, square_queries, noise_draws, eot_samples, batch_size, seed)
    _check_inputs(inputs, labels, threat)
    dev = resolve_device(model, device)
    t_start = time.perf_counter()
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        audited = _audited_samples(model, inputs, labels, threat, settings, dev)
        result = _audit(audited, threat, settings)
    return result.model_copy(update={"wall_time_s": time.perf_counter() - t_start})


def _check_inputs(inputs: Tensor, labels: Tensor, threat: ThreatModel) -> None:
    if not isinstance(threat, ThreatModel):
        raise SpecError.single("threat", f"expected a ThreatModel, got {type(threat).__name__}")
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
        raise SpecError.single("inputs", "must be a floating-point tensor of shape (N, ...)")
    if not isinstance(labels, Tensor) or labels.shape != inputs.shape[:1]:
        raise SpecError.single("labels", f"must be a tensor of shape ({inputs.shape[0]},)")
    if inputs.shape[0] == 0:
        raise SpecError.single("inputs", "no samples to audit")


@dataclass(frozen=True)
class _Audited:
    """The samples the audit runs on (``ctx``), how many inputs it was given, and what the
    stochasticity probe found."""

    ctx: _Ctx
    n_inputs: int
    num_classes: int
    stochastic: bool
    max_diff: float


@dataclass(frozen=True)
class _Runs:
    """``(n,)`` bool successes of each attack the checks share (``square`` ``None`` for
    non-image inputs), the epsilon sweep and the clean input-gradient norms."""

    fgsm: Tensor
    pgd: Tensor
    pgd_long: Tensor
    white: Tensor
    square: Tensor | None
    noise: Tensor
    sweep: list[tuple[float, float]]
    ce_norm: Tensor
    margin_norm: Tensor


def _audit(audited: _Audited, threat: ThreatModel, settings: AuditSettings) -> AuditResult:
    """Run the attacks on the ``audited`` samples and grade every check (``threat`` is the
    one the caller gave, before its white-box copy)."""
    ctx = audited.ctx
    runs = _run_attacks(audited, settings, targeted=threat.targeted)
    steps = settings.steps
    checks = [
        _check_single_step(ctx.n, runs.fgsm, runs.pgd, steps),
        _check_black_box(ctx.n, runs.white, runs.square),
        _check_monotone(ctx.n, runs.sweep),
        _check_noise(ctx.n, runs.white, runs.noise, settings.noise_draws),
        _check_gradients(runs.ce_norm, runs.margin_norm, torch.finfo(ctx.x.dtype).tiny),
        _check_stochastic(audited.stochastic, audited.max_diff, ctx.eot),
        _check_more_steps(ctx.n, runs.pgd, runs.pgd_long, steps),
    ]
    verdict: Verdict = "pass"
    for c in checks:
        if c.status != "skip" and _RANK[c.status] > _RANK[verdict]:
            verdict = c.status
    return AuditResult(
        threat=threat.name,
        n_inputs=audited.n_inputs,
        n_samples=ctx.n,
        verdict=verdict,
        summary=_summary(verdict, checks, ctx.n, threat.name),
        checks=checks,
        stochastic=audited.stochastic,
        eot_samples=ctx.eot,
        seed=settings.seed,
        wall_time_s=0.0,
    )


def _audited_samples(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    threat: ThreatModel,
    settings: AuditSettings,
    dev: torch.device,
) -> _Audited:
    """Probe the model for stochasticity and keep the inputs it classifies correctly (on the
    mean logits of ``eot_samples`` passes when stochastic) and that the threat attacks."""
    batch_size, seed = settings.batch_size, settings.seed
    x_all = inputs.detach().cpu()
    y_all = labels.detach().cpu().to(torch.int64)
    n_inputs = int(x_all.shape[0])
    stochastic, max_diff = is_stochastic(model, x_all[:batch_size].to(dev))
    eot = settings.eot_samples if stochastic else 1
    logits = torch.cat(
        [
            mean_logits(model, x_all[i : i + batch_size].to(dev), eot).cpu()
            for i in range(0, n_inputs, batch_size)
        ]
    )
    num_classes = int(logits.shape[1])
    targets_all = threat.draw_targets(y_all, num_classes, make_generator(seed))
    correct = (logits.argmax(dim=1) == y_all) & threat.attacked(y_all)
    if not bool(correct.any()):
        raise SpecError.single("inputs", "the model classifies none of the attacked ones correctly")
    keep = correct.nonzero().squeeze(1)
    ctx = _Ctx(
        model=model,
        x=x_all[keep],
        y=y_all[keep],
        t=targets_all[keep] if targets_all is not None else None,
        threat=threat.model_copy(update={"knowledge": "white-box", "query_budget": None}),
        dev=dev,
        batch_size=batch_size,
        seed=seed,
        eot=eot,
    )
    return _Audited(ctx, n_inputs, num_classes, stochastic, max_diff)


def _run_attacks(audited: _Audited, settings: AuditSettings, *, targeted: bool) -> _Runs:
    """Every attack the checks need, each run once."""
    ctx, steps = audited.ctx, settings.steps
    wb: dict[str, Any] = {"eot_samples": ctx.eot}
    # On a stochastic model an early-stopped PGD point sits just across the boundary of one
    # noisy estimate and fresh passes often disagree: run every step and judge the last point.
    pgd_kw: dict[str, Any] = {**wb, "steps": steps, "early_stop": not audited.stochastic}
    fgsm = ctx.run("fgsm", **wb)
    pgd = ctx.run("pgd", **pgd_kw)
    pgd_long = ctx.run("pgd", **{**pgd_kw, "steps": 2 * steps})
    white = pgd.clone()
    white |= ctx.run("apgd-ce", idx=(~white).nonzero().squeeze(1), steps=steps, **wb)
    if audited.num_classes >= (4 if targeted else 3):
        white |= ctx.run("apgd-dlr", idx=(~white).nonzero().squeeze(1), steps=steps, **wb)
    sweep = _epsilon_sweep(ctx, pgd, pgd_kw)
    square = (
        ctx.run("square", idx=(~white).nonzero().squeeze(1), queries=settings.square_queries)
        if ctx.x.dim() in (3, 4)
        else None
    )
    noise = ctx.run("uniform_noise", idx=(~white).nonzero().squeeze(1), draws=settings.noise_draws)
    ce_norm, margin_norm = _gradient_norms(ctx)
    return _Runs(fgsm, pgd, pgd_long, white, square, noise, sweep, ce_norm, margin_norm)


# --- measurements -----------------------------------------------------------------------------


def _unbounded_epsilon(threat: ThreatModel, x: Tensor) -> float:
    """A radius whose ball around any point of the bounds covers the whole input box
    (``x`` ``(n, ...)`` gives the dimension): ``high - low`` for L∞, ``(high - low) sqrt(d)``
    for L2."""
    low, high = threat.bounds
    width = high - low
    if threat.norm == "linf":
        return width
    return width * math.sqrt(x[0].numel())


def _epsilon_sweep(ctx: _Ctx, pgd: Tensor, pgd_kw: dict[str, Any]) -> list[tuple[float, float]]:
    """``[(epsilon, PGD success rate)]`` over the multiples of epsilon (capped at the unbounded
    radius) then the unbounded radius. ``pgd`` ``(n,)`` is the run at epsilon itself, made with
    the parameters ``pgd_kw`` that the other budgets use."""
    eps = ctx.threat.epsilon
    top = _unbounded_epsilon(ctx.threat, ctx.x)
    out = []
    for m in (*EPSILON_MULTIPLIERS, None):
        e = top if m is None else min(m * eps, top)
        if m == 1.0:
            rate = _rate(pgd)
        else:
            threat = ctx.threat.model_copy(update={"epsilon": e})
            rate = _rate(ctx.run("pgd", threat=threat, **pgd_kw))
        out.append((e, rate))
    return out


def _gradient_norms(ctx: _Ctx) -> tuple[Tensor, Tensor]:
    """``(n,)`` input-gradient norms of the cross-entropy and of the (scale-free) margin loss at
    the clean inputs (EOT means when stochastic); NaN where the gradient is not finite."""
    ce: list[Tensor] = []
    margin: list[Tensor] = []
    with frozen_parameters(ctx.model):
        for _, xb, yb, tb in ctx.batches(torch.arange(ctx.n)):
            for loss_fn, out in ((ce_loss, ce), (margin_loss, margin)):
                _, _, grad = loss_and_grad(ctx.model, xb, yb, tb, loss_fn, ctx.eot)
                flat = grad.flatten(1)
                norm = flat.norm(p=2, dim=1)
                norm = torch.where(torch.isfinite(flat).all(dim=1), norm, torch.nan)
                out.append(norm.cpu())
    return torch.cat(ce), torch.cat(margin)


# --- checks -----------------------------------------------------------------------------------


def _check_single_step(n: int, fgsm: Tensor, pgd: Tensor, steps: int) -> AuditCheck:
    r_fgsm, r_pgd = _rate(fgsm), _rate(pgd)
    only_fgsm = int((fgsm & ~pgd).sum())
    tol = _tolerance(n, SINGLE_STEP_TOLERANCE)
    figures = {
        "fgsm_success": r_fgsm,
        "pgd_success": r_pgd,
        "fgsm_only": float(only_fgsm),
        "tolerance": tol,
    }
    counts = f"FGSM broke {_frac(fgsm)}, PGD-{steps} {_frac(pgd)}"
    if r_fgsm - r_pgd > tol:
        return _make(
            "iterative_beats_single_step",
            "fail",
            f"{counts}: one step beats {steps} by {points(r_fgsm - r_pgd)} (tolerance "
            f"{points(tol)}), so the iterates are misled, as with a masked or noisy gradient",
            figures,
        )
    return _make(
        "iterative_beats_single_step",
        "pass",
        f"{counts}: the iterative attack is at least as strong (within {points(tol)})",
        figures,
    )


def _check_black_box(n: int, white: Tensor, square: Tensor | None) -> AuditCheck:
    name = "white_box_beats_black_box"
    if square is None:
        return _make(name, "skip", "Square Attack needs image inputs (N, C, H, W)", {})
    only = int((square & ~white).sum())
    share = only / n
    figures = {
        "white_box_success": _rate(white),
        "square_only": float(only),
        "square_only_share": share,
    }
    lead = (
        f"Square broke {only}/{n} ({percent(share)}) samples that PGD and APGD did not "
        f"(white-box success {_frac(white)})"
    )
    if share > BLACK_BOX_FAIL:
        return _make(
            name,
            "fail",
            f"{lead}: above {percent(BLACK_BOX_FAIL)}, the gradients mislead the white-box attacks",
            figures,
        )
    if share > _tolerance(n, BLACK_BOX_WARN):
        return _make(name, "warn", f"{lead}: above {percent(BLACK_BOX_WARN)}", figures)
    return _make(name, "pass", f"{lead}: the white-box attacks are at least as strong", figures)


def _check_monotone(n: int, sweep: list[tuple[float, float]]) -> AuditCheck:
    name = "monotone_in_epsilon"
    figures: dict[str, float] = {}
    for i, (e, rate) in enumerate(sweep):
        key = "unbounded" if i == len(sweep) - 1 else f"x{EPSILON_MULTIPLIERS[i]:g}"
        figures[f"eps_{key}"] = e
        figures[f"success_{key}"] = rate
    drops = [max(a[1] - b[1], 0.0) for a, b in itertools.pairwise(sweep)]
    max_drop = max(drops, default=0.0)
    unbounded = sweep[-1][1]
    figures["max_drop"] = max_drop
    curve = ", ".join(f"{e:.3g}: {percent(r)}" for e, r in sweep)
    problems: list[str] = []
    status: CheckStatus = "pass"
    if unbounded < UNBOUNDED_MIN_SUCCESS:
        problems.append(
            f"the unbounded budget ({sweep[-1][0]:.3g}) breaks only {percent(unbounded)} "
            f"(< {percent(UNBOUNDED_MIN_SUCCESS)}), so PGD cannot follow the gradient anywhere"
        )
        status = "fail"
    if max_drop > MONOTONE_FAIL:
        problems.append(f"success falls by {points(max_drop)} as epsilon grows")
        status = "fail"
    elif max_drop > _tolerance(n, MONOTONE_WARN):
        problems.append(f"success falls by {points(max_drop)} as epsilon grows")
        status = "warn" if status == "pass" else status
    if problems:
        return _make(
            name, status, f"PGD success by epsilon ({curve}): {'; '.join(problems)}", figures
        )
    return _make(
        name,
        "pass",
        f"PGD success by epsilon ({curve}) rises with the budget and reaches "
        f"{percent(unbounded)} when unbounded",
        figures,
    )


def _check_noise(n: int, white: Tensor, noise: Tensor, draws: int) -> AuditCheck:
    name = "noise_never_beats_gradient"
    only = int((noise & ~white).sum())
    share = only / n
    figures = {
        "white_box_success": _rate(white),
        "noise_only": float(only),
        "noise_only_share": share,
        "draws": float(draws),
    }
    lead = (
        f"{draws} random points of the ball broke {only}/{n} ({percent(share)}) samples that "
        f"the gradient attacks did not (white-box success {_frac(white)})"
    )
    if share > _tolerance(n, NOISE_FAIL):
        return _make(name, "fail", f"{lead}: the gradients point the wrong way", figures)
    if only:
        return _make(name, "warn", f"{lead}: look at these samples", figures)
    return _make(name, "pass", lead, figures)


def _check_gradients(ce: Tensor, margin: Tensor, tiny: float) -> AuditCheck:
    name = "gradient_health"
    n = int(ce.numel())

    def dead(norm: Tensor) -> Tensor:
        return ~torch.isfinite(norm) | (norm <= tiny)

    ce_dead, margin_dead = dead(ce), dead(margin)
    any_dead = ce_dead | margin_dead
    share = _rate(any_dead)
    finite = ce[torch.isfinite(ce)]
    figures = {
        "ce_dead_share": _rate(ce_dead),
        "margin_dead_share": _rate(margin_dead),
        "nonfinite_share": _rate(~torch.isfinite(ce) | ~torch.isfinite(margin)),
        "dead_share": share,
        "ce_grad_norm_median": _finite(float(finite.median())) if finite.numel() else 0.0,
        "margin_grad_norm_median": _finite(float(margin[torch.isfinite(margin)].median()))
        if bool(torch.isfinite(margin).any())
        else 0.0,
    }
    lead = (
        f"input gradient zero, underflowing (norm <= {tiny:.3g}) or non-finite on "
        f"{int(any_dead.sum())}/{n} samples ({percent(share)}): cross-entropy "
        f"{int(ce_dead.sum())}, margin loss {int(margin_dead.sum())}"
    )
    if share > DEAD_GRADIENT_WARN:
        if _rate(ce_dead) > 2 * _rate(margin_dead):
            cause = "the softmax saturates (logits too large): CE gradients underflow to 0"
        else:
            cause = "the model is flat or non-differentiable in its input"
        status: CheckStatus = "fail" if share > DEAD_GRADIENT_FAIL else "warn"
        return _make(name, status, f"{lead}; {cause}", figures)
    return _make(
        name,
        "pass",
        f"{lead}; median CE gradient norm {figures['ce_grad_norm_median']:.3g}",
        figures,
    )


def _check_stochastic(stochastic: bool, max_diff: float, eot: int) -> AuditCheck:
    name = "stochastic_model"
    figures = {"max_logit_difference": max_diff, "eot_samples": float(eot)}
    if stochastic:
        return _make(
            name,
            "warn",
            f"two forward passes on the same inputs differ (largest logit gap {max_diff:.3g}): "
            f"white-box attacks ran with EOT over {eot} passes (PGD without early stop) and "
            f"every success was judged on the mean logits of {eot} fresh passes",
            figures,
        )
    if max_diff == 0.0:
        return _make(name, "pass", "two forward passes on the same inputs agree exactly", figures)
    return _make(
        name,
        "pass",
        f"two forward passes on the same inputs agree up to {max_diff:.3g} in the logits "
        f"(floating-point non-determinism, below the tolerance)",
        figures,
    )


def _check_more_steps(n: int, pgd: Tensor, pgd_long: Tensor, steps: int) -> AuditCheck:
    name = "more_iterations_change_little"
    gain = _rate(pgd_long) - _rate(pgd)
    tol = _tolerance(n, MORE_STEPS_WARN)
    figures = {"pgd_success": _rate(pgd), "pgd_2x_success": _rate(pgd_long), "gain": gain}
    lead = f"PGD-{steps} broke {_frac(pgd)}, PGD-{2 * steps} {_frac(pgd_long)}"
    if gain > tol:
        return _make(
            name,
            "warn",
            f"{lead}: doubling the steps gains {points(gain)} (> {points(tol)}), the attack has not "
            f"converged and the robustness is overestimated",
            figures,
        )
    return _make(name, "pass", f"{lead}: a gain of {points(gain)} (<= {points(tol)})", figures)


# --- helpers ----------------------------------------------------------------------------------


def _make(name: str, status: CheckStatus, reason: str, figures: dict[str, float]) -> AuditCheck:
    return AuditCheck(
        name=name, status=status, reason=reason, figures={k: _finite(v) for k, v in figures.items()}
    )


def _summary(verdict: Verdict, checks: list[AuditCheck], n: int, threat: str) -> str:
    where = f"{n} samples, {threat}"
    if verdict == "pass":
        ran = sum(c.status != "skip" for c in checks)
        return f"pass: no sign of gradient masking in {ran} checks ({where})"
    parts = []
    for status, word in (("fail", "failed"), ("warn", "warned")):
        names = [c.name for c in checks if c.status == status]
        if names:
            parts.append(f"{', '.join(names)} {word}")
    return f"{verdict}: {'; '.join(parts)} ({where})"


def _tolerance(n: int, share: float) -> float:
    """``share``, but never below 1.5 samples' worth of ``n``."""
    return max(share, 1.5 / max(n, 1))


def _rate(mask: Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def _frac(mask: Tensor) -> str:
    return f"{int(mask.sum())}/{mask.numel()} ({percent(_rate(mask))})"


def _finite(v: float) -> float:
    """JSON-safe: NaN to 0, infinities to the largest float."""
    return float(torch.nan_to_num(torch.tensor(v, dtype=torch.float64)))
