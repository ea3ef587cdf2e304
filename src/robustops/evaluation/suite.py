"""The evaluation suite: every attack of every threat against one model, per-sample worst case.

Attacks of a threat run one after another on the samples still robust (AutoAttack's order), so
a sample counts as robust only if it was classified correctly and *every* attack failed on it.
A success is only counted when the adversarial input is verified to respect the threat (tensors:
inside its ball and bounds, and the attack's own constraints such as a tabular schema; texts:
the recorded edits replay onto the original text to give the adversarial one, within the edit
share and the query budget) and the model's re-prediction is wrong; an attack (e.g. a plug-in)
that breaks this contract cannot inflate the numbers.

One suite serves every modality: tensor inputs (images, tabular rows) with an ``nn.Module``
returning logits, and texts (a list of strings) with a
:class:`~robustops.text.models.TextClassifier`; both give the same :class:`SuiteResult`.
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
from robustops.attacks.eot import is_stochastic, mean_logits
from robustops.errors import ModelOutputError, SpecError
from robustops.evaluation.metrics import TemperatureFit, calibration_metrics
from robustops.evaluation.result import (
    AdversarialExample,
    AttackFigures,
    ExampleEdit,
    LatencyFigures,
    SamplesRecord,
    StochasticRecord,
    SuiteCalibration,
    SuiteResult,
    ThreatCalibration,
    ThreatResult,
)
from robustops.models.classifier import eval_mode, resolve_device
from robustops.text.attacks import (
    TextAttack,
    TextEdit,
    apply_edits,
    edit_violation,
    margin_objective,
    max_word_edits,
    split_words,
)
from robustops.text.models import TextClassifier, predict_text_logits
from robustops.threats import ThreatModel

__all__ = ["ProgressEvent", "SuiteThreat", "run_suite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteThreat:
    """A threat and the attacks that exercise it, run in this order."""

    threat: ThreatModel
    attacks: Sequence[Attack | TextAttack] = field(default_factory=list)

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


@dataclass
class _Attempt:
    """One attack call on a batch, as the suite checked it.

    ``ok``: the outputs respect the threat; ``logits``: the model's re-prediction ``(B, K)``
    (CPU); ``size``: per sample, the perturbation in the threat's norm (texts: edited share);
    ``item(j)``: what an example of sample ``j`` keeps (its adversarial input, on the CPU);
    ``edits``: texts, per sample, the number of edited words."""

    ok: Tensor
    logits: Tensor
    queries: Tensor
    size: Tensor
    item: Callable[[int], Any]
    edits: Tensor | None = None


class _TensorBackend:
    """Tensor inputs ``(N, ...)`` and an ``nn.Module`` returning logits.

    A model whose two forward passes on the same inputs differ (random input transformations,
    noise layers, dropout left on) is *stochastic*: with ``eot_samples > 1`` every prediction
    the suite makes is then the mean logits of ``eot_samples`` passes, and :meth:`adapt` gives
    every attack as many EOT samples per gradient or score (Athalye et al. 2018) and turns its
    early stop off (a point across the boundary for one draw of the noise is not one for its
    mean). An attack that cannot be adapted is recorded as run unadapted."""

    modality = "tensor"

    def __init__(
        self, model: nn.Module, x: Tensor, batch_size: int, dev: torch.device, eot_samples: int
    ) -> None:
        self.model, self.x, self.batch_size, self.dev = model, x.detach().cpu(), batch_size, dev
        self.n = int(self.x.shape[0])
        self.num_classes: int | None = None
        self.stochastic, self.gap = False, 0.0
        if self.n:
            first = self.x[: min(self.n, batch_size)].to(dev)
            with torch.no_grad():
                logits = model(first)
            self._check(logits, first.shape[0], _rows("clean samples", 0, len(first)))
            self.stochastic, self.gap = is_stochastic(model, first, logits)
        self.eot = eot_samples if self.stochastic else 1
        self.adapted: list[str] = []
        self.unadapted: list[str] = []

    def _check(self, logits: Tensor, rows: int, where: str) -> Tensor:
        """``logits`` ``(rows, K)`` as float32 on the CPU, once checked (see :func:`_checked`)."""
        out = _checked(logits, rows, where, self.num_classes)
        self.num_classes = int(out.shape[1])
        return out

    def adapt(self, attack: Attack | TextAttack) -> Attack | TextAttack:
        """For a stochastic model, ``attack`` rebuilt with ``eot_samples`` passes per query or
        gradient and without early stop, when it left those at one pass / on (the original is
        not changed); else ``attack`` itself. An attack without an ``eot_samples`` parameter
        cannot be adapted and is recorded as run unadapted (so is every attack when the caller
        asked for single passes on a stochastic model)."""
        if not self.stochastic:
            return attack
        params = attack.params()
        if self.eot == 1 or not isinstance(attack, Attack) or "eot_samples" not in params:
            self.unadapted.append(attack.name)
            return attack
        if params["eot_samples"] != 1:
            return attack  # the caller chose its EOT budget
        changes: dict[str, Any] = {"eot_samples": self.eot}
        if params.get("early_stop"):
            changes["early_stop"] = False
        self.adapted.append(attack.name)
        return attack.with_params(**changes)

    def record(self) -> StochasticRecord:
        return StochasticRecord(
            detected=self.stochastic,
            max_logit_gap=self.gap,
            eot_samples=self.eot,
            adapted_attacks=sorted(set(self.adapted)),
            unadapted_attacks=sorted(set(self.unadapted)),
        )

    def clean_logits(self) -> Tensor:
        return torch.cat(
            [
                self._forward(
                    self.x[i : i + self.batch_size].to(self.dev),
                    _rows("clean samples", i, min(i + self.batch_size, self.n)),
                )
                for i in range(0, self.n, self.batch_size)
            ]
        )

    def call_one(self, i: int) -> None:
        self.model(self.x[i : i + 1].to(self.dev))

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def _forward(self, x: Tensor, where: str) -> Tensor:
        return self._check(mean_logits(self.model, x, self.eot), x.shape[0], where)

    def attack(
        self, attack: Attack | TextAttack, b: Tensor, y: Tensor, t: Tensor | None
    ) -> _Attempt:
        if not isinstance(attack, Attack):
            raise TypeError(f"{attack.name!r} is not an attack on tensor inputs")
        xb = self.x[b].to(self.dev)
        res = attack(
            self.model, xb, y.to(self.dev), targets=t.to(self.dev) if t is not None else None
        )
        ok = (
            _contract_ok(res.adversarial, xb, attack.threat) & attack.respects(res.adversarial, xb)
        ).cpu()
        adv = res.adversarial.detach()
        return _Attempt(
            ok=ok,
            logits=self._forward(adv, _batch(attack.name, b)),
            queries=res.queries.cpu(),
            size=res.perturbation.cpu(),
            item=lambda j: adv[j].cpu(),
        )

    def examples(
        self,
        y: Tensor,
        targets: Tensor | None,
        clean_logits: Tensor,
        kept: list[tuple[int, str, Any]],
        threat: ThreatModel,
    ) -> list[AdversarialExample]:
        """Records of the kept examples, with the attribution ``δ ⊙ ∇(z_adv − z_label)`` at the
        adversarial input: the first-order share of each feature's change in the logit margin
        that flipped the prediction (zeros for a model without gradients)."""
        model, dev, x = self.model, self.dev, self.x
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
        adv_logits = logits.detach().float().cpu()
        norms = perturbation_norm(adv.cpu() - clean.cpu(), threat.norm)

        def flat(v: Tensor) -> list[float]:
            return [round(f, 5) for f in v.flatten().tolist()]

        return [
            _example(
                i,
                attack,
                y,
                targets,
                clean_logits,
                adv_logits[k],
                float(norms[k]),
                shape=list(x.shape[1:]),
                clean=flat(x[i]),
                adversarial=flat(adv[k].cpu()),
                attribution=[float(f"{v:.4g}") for v in attribution[k].flatten().tolist()],
            )
            for k, (i, attack, _) in enumerate(kept)
        ]


class _TextBackend:
    """Texts and a :class:`~robustops.text.models.TextClassifier` (``predict_logits``)."""

    modality = "text"

    def __init__(self, model: TextClassifier, texts: Sequence[str], batch_size: int) -> None:
        self.model, self.texts, self.batch_size = model, list(texts), batch_size
        self.n = len(self.texts)
        self.dev = torch.device("cpu")
        self.num_classes: int | None = None

    def adapt(self, attack: Attack | TextAttack) -> Attack | TextAttack:
        return attack  # text classifiers are queried as they are

    def record(self) -> StochasticRecord | None:
        return None

    def predict(self, texts: Sequence[str], where: str) -> Tensor:
        logits = predict_text_logits(self.model, texts, self.batch_size)
        out = _checked(logits, len(texts), where, self.num_classes)
        self.num_classes = int(out.shape[1])
        return out

    def clean_logits(self) -> Tensor:
        return self.predict(self.texts, _rows("clean texts", 0, self.n))

    def call_one(self, i: int) -> None:
        self.model.predict_logits([self.texts[i]])

    def sync(self) -> None:
        pass

    def attack(
        self, attack: Attack | TextAttack, b: Tensor, y: Tensor, t: Tensor | None
    ) -> _Attempt:
        if not isinstance(attack, TextAttack):
            raise TypeError(f"{attack.name!r} is not a text attack")
        threat = attack.threat
        originals = [self.texts[i] for i in b.tolist()]
        res = attack(self.model, originals, y, t)
        ok = torch.tensor(
            [
                _edits_ok(text, adv, edits, q, threat)
                for text, adv, edits, q in zip(
                    originals, res.adversarial, res.edits, res.queries.tolist(), strict=True
                )
            ],
            dtype=torch.bool,
        )
        return _Attempt(
            ok=ok,
            logits=self.predict(res.adversarial, _batch(attack.name, b)),
            queries=res.queries.cpu(),
            size=res.edit_share.float(),
            item=lambda j: (res.adversarial[j], res.edits[j]),
            edits=torch.tensor([len(e) for e in res.edits], dtype=torch.float64),
        )

    def examples(
        self,
        y: Tensor,
        targets: Tensor | None,
        clean_logits: Tensor,
        kept: list[tuple[int, str, Any]],
        threat: ThreatModel,
    ) -> list[AdversarialExample]:
        """Records of the kept examples; each edit's ``contribution`` is the drop of the
        attacker's objective when only that edit is reverted (one query per edit)."""
        out = []
        for i, attack, (adv_text, edits) in kept:
            original = self.texts[i]
            reverted = [
                apply_edits(original, [e for e in edits if e is not skip]) for skip in edits
            ]
            logits = self.predict([adv_text, *reverted], f"the edits of sample {i}")
            label = y[i : i + 1].expand(logits.shape[0])
            tgt = targets[i : i + 1].expand(logits.shape[0]) if targets is not None else None
            obj, _ = margin_objective(logits, label, tgt)
            n_words = len(split_words(original)[0])
            out.append(
                _example(
                    i,
                    attack,
                    y,
                    targets,
                    clean_logits,
                    logits[0],
                    len(edits) / n_words if n_words else 0.0,
                    clean_text=original,
                    adversarial_text=adv_text,
                    edits=[
                        ExampleEdit(
                            position=e.position,
                            kind=e.kind,
                            before=e.before,
                            after=e.after,
                            score_change=round(e.score_change, 6),
                            contribution=round(float(obj[0] - obj[k + 1]), 6),
                        )
                        for k, e in enumerate(edits)
                    ],
                )
            )
        return out


_Backend = _TensorBackend | _TextBackend


def _rows(what: str, start: int, stop: int) -> str:
    return f"{what} {start}-{stop - 1}"


def _batch(attack: str, b: Tensor) -> str:
    idx = b.tolist()
    shown = ", ".join(map(str, idx[:5])) + (", ..." if len(idx) > 5 else "")
    return f"the outputs of attack {attack!r} on samples [{shown}]"


def _checked(logits: object, rows: int, where: str, num_classes: int | None) -> Tensor:
    """``logits`` as float32 on the CPU once they are a finite ``(rows, K)`` tensor (``K`` equal
    to ``num_classes`` when given); else :class:`ModelOutputError` naming ``where`` they came from
    and the first bad row. A score computed from NaN is not a robustness figure."""
    expected = f"({rows}, {num_classes if num_classes is not None else 'classes'})"
    if not isinstance(logits, Tensor):
        raise ModelOutputError(
            f"the model returned {type(logits).__name__} for {where}, expected a logits tensor "
            f"{expected}"
        )
    if (
        logits.dim() != 2
        or logits.shape[0] != rows
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        raise ModelOutputError(
            f"the model returned logits of shape {tuple(logits.shape)} for {where}, expected "
            f"{expected}"
        )
    out = logits.detach().float().cpu()
    bad = ~torch.isfinite(out).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ModelOutputError(
            f"the model returned non-finite logits (NaN or infinite) for {where}: first at row "
            f"{row} of that batch ({int(bad.sum())} bad rows of {out.shape[0]})"
        )
    return out


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


def _edits_ok(
    text: str, adversarial: str, edits: Sequence[TextEdit], queries: int, threat: ThreatModel
) -> bool:
    """The text attack's contract: its edits replay onto ``text`` to give ``adversarial``, each
    is what its kind allows (:func:`~robustops.text.attacks.edit_violation`), they edit at most
    the threat's share of the words, and the attack kept to the query budget."""
    if len(edits) > max_word_edits(threat.epsilon, len(split_words(text)[0])):
        return False
    if any(edit_violation(e) is not None for e in edits):
        return False
    if threat.query_budget is not None and queries > threat.query_budget:
        return False
    try:
        return apply_edits(text, edits) == adversarial
    except SpecError:
        return False


def _example(
    i: int,
    attack: str,
    y: Tensor,
    targets: Tensor | None,
    clean_logits: Tensor,
    adv_logits: Tensor,
    norm: float,
    **fields: Any,
) -> AdversarialExample:
    clean_probs = clean_logits[i].float().softmax(0)
    adv_probs = adv_logits.float().softmax(0)
    p_clean, p_adv = int(clean_probs.argmax()), int(adv_probs.argmax())
    return AdversarialExample(
        index=i,
        label=int(y[i]),
        target=int(targets[i]) if targets is not None else None,
        attack=attack,
        clean_prediction=p_clean,
        clean_confidence=float(clean_probs[p_clean]),
        adversarial_prediction=p_adv,
        adversarial_confidence=float(adv_probs[p_adv]),
        perturbation_norm=norm,
        **fields,
    )


def _modality(inputs: Tensor | Sequence[str]) -> str:
    return "tensor" if isinstance(inputs, Tensor) else "text"


def _backend(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
    batch_size: int,
    device: str | torch.device | None,
    eot_samples: int,
) -> _Backend:
    """The backend for ``inputs``: tensors with an ``nn.Module``, texts with a text classifier."""
    if isinstance(inputs, Tensor):
        if not isinstance(model, nn.Module):
            raise TypeError("tensor inputs need an nn.Module returning logits")
        dev = resolve_device(model, device)
        return _TensorBackend(model, inputs, batch_size, dev, eot_samples)
    if isinstance(inputs, str) or not callable(getattr(model, "predict_logits", None)):
        raise TypeError("texts must be a sequence of strings, with a text classifier")
    return _TextBackend(model, inputs, batch_size)  # type: ignore[arg-type]


def run_suite(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
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
    eot_samples: int = 10,
) -> SuiteResult:
    """Evaluate ``model`` on ``inputs`` / ``labels`` ``(N,)`` under each threat.

    Args:
        model: an ``nn.Module`` returning logits for tensor ``inputs`` ``(N, ...)`` (every
            submodule in eval mode for the run, each restored to its own mode after), or a text
            classifier (``predict_logits(texts) -> (N, K)``) for ``inputs`` given as a list of
            strings. Outputs must be finite logits of one shape ``(B, K)``, else
            :class:`~robustops.errors.ModelOutputError` names the first bad batch.
        threats: threats with their attacks, in the order they should run; ``word-edits``
            threats (text attacks) for texts, ``linf``/``l2`` threats for tensors.
        batch_size: samples per attack call.
        seed: draws the targets of targeted threats (a random wrong class per sample, unless
            the threat fixes a ``target_class``).
        device: where to run tensor models; default the model's device (texts: the CPU).
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
            with their attribution maps (texts: their edits and each edit's contribution).
        eot_samples: for a tensor model found stochastic (two passes on the first batch
            differ), forward passes averaged for every prediction the suite makes (clean,
            success, calibration) and EOT samples given to every attack left at one pass (which
            also loses its early stop), gradient- and score-based alike; recorded in
            ``SuiteResult.stochastic`` with the attacks that could not be adapted. ``1`` keeps
            single passes and the attacks as configured (all recorded as unadapted).
    """
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"eot_samples must be an int >= 1, got {eot_samples!r}")
    if len(inputs) != labels.shape[0]:
        raise ValueError("inputs and labels differ in length")
    if any(st.threat.modality != _modality(inputs) for st in threats):
        st = next(st for st in threats if st.threat.modality != _modality(inputs))
        raise ValueError(
            f"threat {st.threat.name!r} ({st.threat.norm}) is for {st.threat.modality} "
            f"inputs, not {_modality(inputs)} ones"
        )
    t_start = time.perf_counter()
    # Every submodule in eval mode before the first pass (the stochasticity probe included):
    # a batch-norm left in training would learn from the test batch, a dropout would look random.
    with eval_mode(model):
        backend = _backend(model, inputs, batch_size, device, eot_samples)
        if isinstance(backend, _TensorBackend) and backend.stochastic:
            log.warning(
                "the model is stochastic (two passes differ by up to %.3g in a logit): %s",
                backend.gap,
                f"predictions average {backend.eot} passes and attacks use EOT"
                if backend.eot > 1
                else "single passes as asked (eot_samples=1); robust accuracy may be overstated",
            )
        y = labels.detach().cpu().to(torch.int64)
        n = backend.n
        t_clean = time.perf_counter()
        clean_logits = backend.clean_logits()
        clean_s = time.perf_counter() - t_clean
        if n and int(y.max()) >= clean_logits.shape[1]:
            raise ModelOutputError(
                f"the model has {clean_logits.shape[1]} outputs but the labels go up to "
                f"{int(y.max())}"
            )
        latency = (
            _latency(backend, latency_calls, batch_size, clean_s)
            if latency_calls > 0 and n
            else None
        )
        clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
        gen = make_generator(seed)
        threat_results = []
        for st in threats:
            tr, attacked_logits = _run_threat(
                backend, y, clean_logits, st, batch_size, gen, progress, n_examples
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
        device=str(backend.dev),
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
        stochastic=backend.record(),
    )


@torch.no_grad()
def _latency(backend: _Backend, calls: int, batch_size: int, batched_s: float) -> LatencyFigures:
    """Time ``calls`` single-input forward passes (cycling over the inputs, after 5 warm-up
    calls); throughput from the batched clean pass that took ``batched_s`` seconds."""
    n = backend.n
    for i in range(min(5, n)):
        backend.call_one(i)
    times = []
    for i in range(calls):
        backend.sync()
        t0 = time.perf_counter()
        backend.call_one(i % n)
        backend.sync()
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
    backend: _Backend,
    y: Tensor,
    clean_logits: Tensor,
    st: SuiteThreat,
    batch_size: int,
    gen: torch.Generator,
    progress: Callable[[ProgressEvent], None] | None,
    n_examples: int,
) -> tuple[ThreatResult, Tensor]:
    """The threat's figures and, per sample, the logits ``(N, K)`` of its worst-case input."""
    threat = st.threat
    n = backend.n
    num_classes = int(clean_logits.shape[1]) if n else 0
    clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
    # Worst case per sample so far: its logits and loss (CE against the label, or minus CE
    # against the target); the input that broke a sample is kept whatever its loss.
    worst_logits = clean_logits.clone()
    targets = threat.draw_targets(y, num_classes, gen)
    worst_loss = _threat_loss(clean_logits, y, targets)
    robust = clean_correct.clone()
    attacked = clean_correct & threat.attacked(y)
    broken_by: list[str | None] = [None] * n
    queries = torch.zeros(n, dtype=torch.int64)
    figures: list[AttackFigures] = []
    kept: list[tuple[int, str, Any]] = []  # the first broken samples: index, attack, input
    t_threat = time.perf_counter()
    for attack in map(backend.adapt, st.attacks):
        idx = (robust & attacked).nonzero().squeeze(1)
        t0 = time.perf_counter()
        n_broken, total_q, succ_q = 0, 0, 0
        perts: list[Tensor] = []
        edit_counts: list[Tensor] = []
        for start in range(0, idx.numel(), batch_size):
            b = idx[start : start + batch_size]
            tb = targets[b] if targets is not None else None
            att = backend.attack(attack, b, y[b], tb)
            ok = att.ok
            if not bool(ok.all()):
                log.warning(
                    "attack %s returned %d inputs that break threat %s; their successes are "
                    "not counted",
                    attack.name,
                    int((~ok).sum()),
                    threat.name,
                )
            # The suite's own re-prediction decides, not what the attack reports.
            success = ok & is_adversarial(att.logits, y[b], tb)
            loss = _threat_loss(att.logits, y[b], tb)
            better = ok & (success | (loss > worst_loss[b]))
            worst_logits[b[better]] = att.logits[better]
            worst_loss[b[better]] = loss[better]
            queries[b] += att.queries
            total_q += int(att.queries.sum())
            succ_q += int(att.queries[success].sum())
            hit = b[success]
            robust[hit] = False
            for i in hit.tolist():
                broken_by[i] = attack.name
            for j in success.nonzero().squeeze(1).tolist():
                if len(kept) < n_examples:
                    kept.append((int(b[j]), attack.name, att.item(j)))
            n_broken += int(success.sum())
            perts.append(att.size[success])
            if att.edits is not None:
                edit_counts.append(att.edits[success])
            if progress is not None:
                progress(
                    ProgressEvent(
                        threat.name, attack.name, min(start + batch_size, idx.numel()), idx.numel()
                    )
                )
        if progress is not None and idx.numel() == 0:
            progress(ProgressEvent(threat.name, attack.name, 0, 0))
        succ_perts = torch.cat(perts) if perts else torch.empty(0)
        edits_all = torch.cat(edit_counts) if edit_counts else None
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
                mean_queries_per_success=succ_q / n_broken if n_broken else None,
                mean_edits=float(edits_all.mean())
                if edits_all is not None and edits_all.numel()
                else None,
            )
        )
    n_robust = int(robust.sum())
    n_attacked = int(attacked.sum())
    n_broken_all = int((attacked & ~robust).sum())
    result = ThreatResult(
        name=threat.name,
        threat=threat,
        robust_accuracy=n_robust / n if n else 0.0,
        attack_success_rate=n_broken_all / n_attacked if n_attacked else 0.0,
        n_robust=n_robust,
        n_attacked=n_attacked,
        attacks=figures,
        total_queries=int(queries.sum()),
        wall_time_s=time.perf_counter() - t_threat,
        robust=robust.tolist(),
        broken_by=broken_by,
        queries=queries.tolist(),
        targets=targets.tolist() if targets is not None else None,
        examples=backend.examples(y, targets, clean_logits, kept, threat) if kept else [],
    )
    return result, worst_logits


def _threat_loss(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """``(N,)`` what the attacker maximises: CE of the label, or minus CE of the target."""
    if targets is None:
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
