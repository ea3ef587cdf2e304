"""The evaluation suite: every attack of every threat against one model, per-sample worst case.

Attacks of a threat run one after another on the samples still robust (AutoAttack's order), so
a sample counts as robust only if it was classified correctly and *every* attack failed on it.
A success is only counted when the adversarial input is verified to lie in the threat's ball
and bounds and the model's re-prediction is wrong; an attack (e.g. a plug-in) that breaks
this contract cannot inflate the numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import environment, make_generator
from robustops.attacks import Attack, is_adversarial, perturbation_norm
from robustops.evaluation.metrics import TemperatureFit, calibration_metrics
from robustops.evaluation.result import (
    AdversarialExample,
    AttackFigures,
    LatencyFigures,
    SamplesRecord,
    SuiteCalibration,
    SuiteResult,
    ThreatCalibration,
    ThreatResult,
)
from robustops.models.classifier import predict_logits, resolve_device
from robustops.threats import ThreatModel

__all__ = ["ProgressEvent", "SuiteThreat", "run_suite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteThreat:
    """A threat and the attacks that exercise it, run in this order."""

    threat: ThreatModel
    attacks: Sequence[Attack] = field(default_factory=list)

    def __post_init__(self) -> None:
        for attack in self.attacks:
            if attack.threat != self.threat:
                raise ValueError(
                    f"attack {attack.name!r} was built for another threat than {self.threat.name!r}"
                )


@dataclass(frozen=True)
class ProgressEvent:
    """Sent after each batch: ``done`` of ``total`` samples of (``threat``, ``attack``)."""

    threat: str
    attack: str
    done: int
    total: int


def _contract_ok(adv: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    """``(N,)`` bool: the adversarial input lies in the threat's ball (float32 rounding allowed)
    and bounds."""
    low, high = threat.bounds
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "linf" else delta.norm(p=2, dim=1)
    in_ball = size <= threat.epsilon * (1 + 1e-6) + 1e-7
    flat = adv.flatten(1)
    in_bounds = (flat >= low).all(1) & (flat <= high).all(1)
    return in_ball & in_bounds


def run_suite(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    threats: Sequence[SuiteThreat],
    *,
    name: str = "suite",
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    indices: Sequence[int] | None = None,
    data_info: dict[str, Any] | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    calibration: bool = True,
    temperature: TemperatureFit | None = None,
    n_bins: int = 15,
    latency_calls: int = 100,
    n_examples: int = 4,
) -> SuiteResult:
    """Evaluate ``model`` on ``inputs`` ``(N, ...)`` / ``labels`` ``(N,)`` under each threat.

    Args:
        model: a module returning logits; put in eval mode for the run and restored after.
        threats: threats with their attacks, in the order they should run.
        batch_size: samples per attack call.
        seed: draws the targets of targeted threats (a random wrong class per sample).
        device: where to run; default the model's device.
        indices: positions of ``inputs`` in their split, recorded in the result.
        data_info, model_info: identity records (fingerprints, hashes) copied into the result.
        progress: called after each batch, e.g. to drive a progress bar.
        calibration: report ECE, Brier and NLL on clean inputs and, per threat, on the attacked
            inputs (each sample's worst case: the input that broke it, else the attempt with the
            highest loss, else the clean input for samples never attacked).
        temperature: a temperature fitted on held-out data (see
            :func:`robustops.defenses.fit_temperature_on`); the calibration figures are then
            reported before and after scaling. Predictions, hence robust accuracy, do not change.
        n_bins: equal-width (and equal-mass) bins of the calibration figures.
        latency_calls: single-input forward calls timed for the latency percentiles (0: none).
        n_examples: adversarial examples kept per threat for reports (the first ones broken),
            with their attribution maps.
    """
    if inputs.shape[0] != labels.shape[0]:
        raise ValueError("inputs and labels differ in length")
    dev = resolve_device(model, device)
    was_training = model.training
    model.eval()
    t_start = time.perf_counter()
    try:
        x, y = inputs.detach().cpu(), labels.detach().cpu().to(torch.int64)
        n = x.shape[0]
        t_clean = time.perf_counter()
        clean_logits = predict_logits(model, x, batch_size, dev)
        clean_s = time.perf_counter() - t_clean
        latency = (
            _latency(model, x, dev, latency_calls, batch_size, clean_s)
            if latency_calls > 0 and n
            else None
        )
        clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
        gen = make_generator(seed)
        threat_results = []
        for st in threats:
            tr, attacked_logits = _run_threat(
                model, x, y, clean_logits, st, batch_size, dev, gen, progress, n_examples
            )
            if calibration and n:
                tr.calibration = ThreatCalibration(
                    attacked=calibration_metrics(attacked_logits, y, n_bins=n_bins),
                    attacked_scaled=calibration_metrics(
                        attacked_logits, y, n_bins=n_bins, temperature=temperature.temperature
                    )
                    if temperature is not None
                    else None,
                )
            threat_results.append(tr)
    finally:
        model.train(was_training)
    suite_calibration = None
    if calibration and n:
        suite_calibration = SuiteCalibration(
            n_bins=n_bins,
            clean=calibration_metrics(clean_logits, y, n_bins=n_bins),
            clean_scaled=calibration_metrics(
                clean_logits, y, n_bins=n_bins, temperature=temperature.temperature
            )
            if temperature is not None
            else None,
            temperature=temperature,
        )
    return SuiteResult(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
        device=str(dev),
        n_samples=n,
        clean_accuracy=int(clean_correct.sum()) / n if n else 0.0,
        threats=threat_results,
        data=data_info or {},
        model=model_info or {},
        environment=environment(),
        samples=SamplesRecord(
            indices=list(indices) if indices is not None else list(range(n)),
            labels=y.tolist(),
            clean_correct=clean_correct.tolist(),
        ),
        wall_time_s=time.perf_counter() - t_start,
        calibration=suite_calibration,
        latency=latency,
    )


@torch.no_grad()
def _latency(
    model: nn.Module, x: Tensor, dev: torch.device, calls: int, batch_size: int, batched_s: float
) -> LatencyFigures:
    """Time ``calls`` single-input forward passes (cycling over ``x``, after 5 warm-up calls);
    throughput from the batched clean pass that took ``batched_s`` seconds."""
    n = x.shape[0]
    for i in range(min(5, n)):
        model(x[i : i + 1].to(dev))
    times = []
    for i in range(calls):
        xi = x[i % n : i % n + 1].to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        model(xi)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(ms, torch.tensor([0.5, 0.95, 0.99], dtype=torch.float64))
    return LatencyFigures(
        n_calls=calls,
        p50_ms=float(q[0]),
        p95_ms=float(q[1]),
        p99_ms=float(q[2]),
        mean_ms=float(ms.mean()),
        batch_size=batch_size,
        throughput_per_s=n / batched_s if batched_s > 0 else 0.0,
    )


def _run_threat(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean_logits: Tensor,
    st: SuiteThreat,
    batch_size: int,
    dev: torch.device,
    gen: torch.Generator,
    progress: Callable[[ProgressEvent], None] | None,
    n_examples: int,
) -> tuple[ThreatResult, Tensor]:
    """The threat's figures and, per sample, the logits ``(N, K)`` of its worst-case input."""
    threat = st.threat
    n = x.shape[0]
    num_classes = int(clean_logits.shape[1]) if n else 0
    clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
    # Worst case per sample so far: its logits and loss (CE against the label, or minus CE
    # against the target); the input that broke a sample is kept whatever its loss.
    worst_logits = clean_logits.clone()
    targets: Tensor | None = None
    if threat.targeted:
        shift = torch.randint(1, max(num_classes, 2), (n,), generator=gen)
        targets = (y + shift) % max(num_classes, 2)
    worst_loss = _threat_loss(clean_logits, y, targets)
    robust = clean_correct.clone()
    broken_by: list[str | None] = [None] * n
    queries = torch.zeros(n, dtype=torch.int64)
    figures: list[AttackFigures] = []
    kept: list[tuple[int, str, Tensor]] = []  # the first broken samples: index, attack, input
    t_threat = time.perf_counter()
    for attack in st.attacks:
        idx = robust.nonzero().squeeze(1)
        t0 = time.perf_counter()
        n_broken, total_q, perts = 0, 0, []
        for start in range(0, idx.numel(), batch_size):
            b = idx[start : start + batch_size]
            xb, yb = x[b].to(dev), y[b].to(dev)
            tb = targets[b].to(dev) if targets is not None else None
            res = attack(model, xb, yb, targets=tb)
            ok = _contract_ok(res.adversarial, xb, threat).cpu()
            if not bool(ok.all()):
                log.warning(
                    "attack %s returned %d inputs outside threat %s; their successes are not counted",
                    attack.name,
                    int((~ok).sum()),
                    threat.name,
                )
            with torch.no_grad():
                adv_logits = model(res.adversarial).float().cpu()
            tb_cpu = targets[b] if targets is not None else None
            # The suite's own re-prediction decides, not what the attack reports.
            success = ok & is_adversarial(adv_logits, y[b], tb_cpu)
            loss = _threat_loss(adv_logits, y[b], tb_cpu)
            better = ok & (success | (loss > worst_loss[b]))
            worst_logits[b[better]] = adv_logits[better]
            worst_loss[b[better]] = loss[better]
            q = res.queries.cpu()
            queries[b] += q
            total_q += int(q.sum())
            hit = b[success]
            robust[hit] = False
            for i in hit.tolist():
                broken_by[i] = attack.name
            for j in success.nonzero().squeeze(1).tolist():
                if len(kept) < n_examples:
                    kept.append((int(b[j]), attack.name, res.adversarial[j].detach().cpu()))
            n_broken += int(success.sum())
            perts.append(res.perturbation.cpu()[success])
            if progress is not None:
                progress(
                    ProgressEvent(
                        threat.name, attack.name, min(start + batch_size, idx.numel()), idx.numel()
                    )
                )
        if progress is not None and idx.numel() == 0:
            progress(ProgressEvent(threat.name, attack.name, 0, 0))
        succ_perts = torch.cat(perts) if perts else torch.empty(0)
        n_att = int(idx.numel())
        figures.append(
            AttackFigures(
                name=attack.name,
                params=attack.params(),
                n_attacked=n_att,
                n_broken=n_broken,
                success_rate=n_broken / n_att if n_att else 0.0,
                mean_queries=total_q / n_att if n_att else 0.0,
                total_queries=total_q,
                median_perturbation=float(succ_perts.median()) if succ_perts.numel() else None,
                wall_time_s=time.perf_counter() - t0,
            )
        )
    n_correct = int(clean_correct.sum())
    n_robust = int(robust.sum())
    result = ThreatResult(
        name=threat.name,
        threat=threat,
        robust_accuracy=n_robust / n if n else 0.0,
        attack_success_rate=(n_correct - n_robust) / n_correct if n_correct else 0.0,
        n_robust=n_robust,
        attacks=figures,
        total_queries=int(queries.sum()),
        wall_time_s=time.perf_counter() - t_threat,
        robust=robust.tolist(),
        broken_by=broken_by,
        queries=queries.tolist(),
        targets=targets.tolist() if targets is not None else None,
        examples=_examples(model, x, y, targets, clean_logits, kept, threat, dev),
    )
    return result, worst_logits


def _examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    clean_logits: Tensor,
    kept: list[tuple[int, str, Tensor]],
    threat: ThreatModel,
    dev: torch.device,
) -> list[AdversarialExample]:
    """Records of the kept adversarial examples, with the attribution ``δ ⊙ ∇(z_adv − z_label)``
    at the adversarial input: the first-order share of each feature's change in the logit
    margin that flipped the prediction (zeros for a model without gradients)."""
    if not kept:
        return []
    idx = torch.tensor([k[0] for k in kept])
    adv = torch.stack([k[2] for k in kept]).to(dev)
    clean = x[idx].to(dev)
    labels = y[idx].to(dev)
    differentiable = getattr(model, "differentiable", True)
    with torch.enable_grad():
        inp = adv.clone().requires_grad_(differentiable)
        logits = model(inp)
        pred = logits.argmax(1)
        if differentiable:
            rows = torch.arange(len(kept), device=dev)
            margin = logits[rows, pred] - logits[rows, labels]
            (grad,) = torch.autograd.grad(margin.sum(), inp)
            attribution = ((adv - clean) * grad).detach().cpu()
        else:
            attribution = torch.zeros_like(adv).cpu()
    adv_probs = logits.detach().float().softmax(1).cpu()
    clean_probs = clean_logits[idx].softmax(1)
    norms = perturbation_norm(adv.cpu() - clean.cpu(), threat.norm)

    def flat(t: Tensor) -> list[float]:
        return [round(v, 5) for v in t.flatten().tolist()]

    out = []
    for k, (i, attack, _) in enumerate(kept):
        p_adv = int(pred[k])
        p_clean = int(clean_probs[k].argmax())
        out.append(
            AdversarialExample(
                index=i,
                label=int(y[i]),
                target=int(targets[i]) if targets is not None else None,
                attack=attack,
                shape=list(x.shape[1:]),
                clean=flat(x[i]),
                adversarial=flat(adv[k].cpu()),
                attribution=[float(f"{v:.4g}") for v in attribution[k].flatten().tolist()],
                clean_prediction=p_clean,
                clean_confidence=float(clean_probs[k, p_clean]),
                adversarial_prediction=p_adv,
                adversarial_confidence=float(adv_probs[k, p_adv]),
                perturbation_norm=float(norms[k]),
            )
        )
    return out


def _threat_loss(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """``(N,)`` what the attacker maximises: CE of the label, or minus CE of the target."""
    if targets is None:
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
