"""The evaluation suite: every attack of every threat against one model, per-sample worst case.

Attacks of a threat run one after another on the samples still robust (AutoAttack's order), so
a sample counts as robust only if it was classified correctly and *every* attack failed on it.
A success is only counted when the adversarial input is verified to respect the threat
(:func:`verify`: tensors by :func:`robustops.attacks.budget.check_budget` — the ball, patch
square, spatial transform or corruption, the bounds and the attack's own constraints such as a
tabular schema; texts by :func:`robustops.attacks.text.edits_within_budget` — the recorded edits
replay onto the original text within the edit share and the query budget) and the model's
re-prediction is wrong; an attack (e.g. a plug-in) that breaks this contract cannot inflate the
numbers.

Corruption threats are not adversarial: every corruption runs on every attacked sample
(``SuiteThreat.independent``), so each attack's figures are the accuracy under that corruption,
and the threat's robust accuracy is still the per-sample worst case.

The suite runs every attack the same way, whatever its modality; only the model differs: tensor
inputs (images, tabular rows) with an ``nn.Module`` returning logits, or texts (a list of
strings) with a :class:`~robustops.text.models.TextClassifier`. Both give the same
:class:`SuiteResult`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import digest_seed, environment, make_generator
from robustops.attacks import Attack, AttackResult, is_adversarial
from robustops.attacks.budget import BudgetCheck, check_budget
from robustops.attacks.eot import is_stochastic, mean_logits
from robustops.attacks.text import (
    apply_edits,
    edits_within_budget,
    margin_objective,
    split_words,
)
from robustops.errors import ModelOutputError
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
from robustops.text.models import TextClassifier, predict_text_logits
from robustops.threats import ThreatModel

__all__ = [
    "ProgressEvent",
    "SuiteOptions",
    "SuiteRecord",
    "SuiteRun",
    "SuiteThreat",
    "ThreatDetails",
    "run_suite",
    "run_suite_detailed",
    "verify",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteThreat:
    """A threat and the attacks that exercise it, run in this order.

    ``independent``: every attack runs on every attacked sample instead of on those the
    previous attacks left robust, so each attack's figures stand on their own (``None``: so for
    ``corruption`` threats, whose attacks are fixed corruptions rather than searches).
    """

    threat: ThreatModel
    attacks: Sequence[Attack] = field(default_factory=list)
    independent: bool | None = None

    def __post_init__(self) -> None:
        for attack in self.attacks:
            if attack.threat != self.threat:
                raise ValueError(
                    f"attack {attack.name!r} was built for another threat than {self.threat.name!r}"
                )

    @property
    def runs_independently(self) -> bool:
        """Whether every attack runs on every attacked sample (see the class doc)."""
        return (
            self.independent if self.independent is not None else self.threat.norm == "corruption"
        )


@dataclass(frozen=True)
class SuiteOptions:
    """How the suite runs.

    Attributes:
        batch_size: samples per attack call.
        seed: draws the targets of targeted threats (a random wrong class per sample, unless
            the threat fixes a ``target_class``), each from a generator keyed by (seed, threat,
            the sample's index in its split, ``SuiteRecord.indices``): a sample's target does
            not depend on the other samples, so a sharded run draws the same ones.
        device: where to run tensor models; default the model's device (texts: the CPU).
        calibration: report ECE, Brier and NLL on clean inputs and, per threat, on the attacked
            inputs (each sample's worst case: the input that broke it, else the attempt with the
            highest loss, else the clean input for samples never attacked).
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

    batch_size: int = 500
    seed: int = 0
    device: str | torch.device | None = None
    calibration: bool = True
    n_bins: int = 15
    latency_calls: int = 100
    n_examples: int = 4
    eot_samples: int = 10

    def __post_init__(self) -> None:
        for name in ("batch_size", "n_bins", "eot_samples", "latency_calls", "n_examples"):
            value = getattr(self, name)
            low = 1 if name in ("batch_size", "n_bins", "eot_samples") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class SuiteRecord:
    """What the result records about its inputs, copied as given.

    Attributes:
        name: the result's name.
        indices: positions of the inputs in their split (default ``0..N-1``).
        data_info, model_info: identity records (fingerprints, hashes).
    """

    name: str = "suite"
    indices: Sequence[int] | None = None
    data_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent after each batch: ``done`` of ``total`` samples of (``threat``, ``attack``)."""

    threat: str
    attack: str
    done: int
    total: int


@dataclass(frozen=True)
class ThreatDetails:
    """What a threat's figures are computed from, beyond its per-sample record (what merging
    shards needs to recompute them).

    Attributes:
        worst_logits: ``(N, K)`` float32, each sample's worst-case logits (see
            ``SuiteOptions.calibration``).
        sizes: per attack, the perturbation sizes of the samples it broke (threat's unit).
        edits: per attack, texts: the words edited in each sample it broke (else empty).
        success_queries: per attack, the queries it spent on the samples it broke.
    """

    worst_logits: Tensor
    sizes: list[list[float]]
    edits: list[list[float]]
    success_queries: list[int]


@dataclass(frozen=True)
class SuiteRun:
    """A suite run's result with the per-sample tensors behind its figures: the clean logits
    ``(N, K)`` and, per threat, :class:`ThreatDetails`."""

    result: SuiteResult
    clean_logits: Tensor
    threats: list[ThreatDetails]


@dataclass
class _Attempt:
    """One attack call on a batch, as the suite checked it.

    ``ok``: the outputs respect the threat; ``logits``: the model's re-prediction ``(B, K)``
    (CPU); ``size``: per sample, the perturbation in the threat's unit, measured by the suite;
    ``item(j)``: what an example of sample ``j`` keeps (its adversarial input on the CPU, with
    its details); ``edits``: texts, per sample, the number of edited words."""

    ok: Tensor
    logits: Tensor
    queries: Tensor
    size: Tensor
    item: Callable[[int], Any]
    edits: Tensor | None = None


def verify(attack: Attack, inputs: Tensor | Sequence[str], result: AttackResult) -> BudgetCheck:
    """Whether each output of ``result`` respects ``attack.threat`` around its input, and the
    size of its perturbation in the threat's unit, measured from the inputs and outputs (texts:
    the edited share of the words, from the edits that replay)."""
    threat = attack.threat
    if isinstance(inputs, Tensor):
        return check_budget(attack, inputs, result)
    ok = edits_within_budget(threat, inputs, result)
    sizes = [
        len(result.details[j]) / max(len(split_words(text)[0]), 1) if bool(ok[j]) else 0.0
        for j, text in enumerate(inputs)
    ]
    return BudgetCheck(ok=ok, size=torch.tensor(sizes, dtype=torch.float64))


def _attempt(backend: _Backend, attack: Attack, b: Tensor, y: Tensor, t: Tensor | None) -> _Attempt:
    """Run ``attack`` on samples ``b`` (labels ``y``, targets ``t``, CPU) and check its outputs."""
    inputs = backend.take(b)
    dev = backend.dev
    res = attack(backend.model, inputs, y.to(dev), targets=t.to(dev) if t is not None else None)
    check = verify(attack, inputs, res)
    details = res.details

    def item(j: int) -> Any:
        adv = res.adversarial[j]
        return (adv.detach().cpu() if isinstance(adv, Tensor) else adv), (
            details[j] if details is not None else None
        )

    return _Attempt(
        ok=check.ok.cpu(),
        logits=backend.predict(res.adversarial, _batch(attack.name, b)),
        queries=res.queries.cpu(),
        size=check.size.float().cpu(),
        item=item,
        edits=backend.edit_counts(res),
    )


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

    def adapt(self, attack: Attack) -> Attack:
        """For a stochastic model, ``attack`` rebuilt with ``eot_samples`` passes per query or
        gradient and without early stop, when it left those at one pass / on (the original is
        not changed); else ``attack`` itself. An attack without an ``eot_samples`` parameter
        cannot be adapted and is recorded as run unadapted (so is every attack when the caller
        asked for single passes on a stochastic model)."""
        if not self.stochastic:
            return attack
        params = attack.params()
        if self.eot == 1 or "eot_samples" not in params:
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

    def take(self, b: Tensor) -> Tensor:
        """Samples ``b`` on the model's device."""
        return self.x[b].to(self.dev)

    def predict(self, adversarial: object, where: str) -> Tensor:
        """Checked logits ``(B, K)`` (CPU) of the attack's outputs (the mean of the EOT passes)."""
        if not isinstance(adversarial, Tensor):
            raise ModelOutputError(f"{where} are {type(adversarial).__name__}, not a tensor")
        return self._forward(adversarial.detach().to(self.dev), where)

    def edit_counts(self, res: AttackResult) -> None:
        return None

    def examples(
        self,
        y: Tensor,
        targets: Tensor | None,
        clean_logits: Tensor,
        kept: list[_Kept],
    ) -> list[AdversarialExample]:
        """Records of the kept examples, with the attribution ``δ ⊙ ∇(z_adv − z_label)`` at the
        adversarial input: the first-order share of each feature's change in the logit margin
        that flipped the prediction (zeros for a model without gradients)."""
        model, dev, x = self.model, self.dev, self.x
        idx = torch.tensor([k.index for k in kept])
        adv = torch.stack([k.adversarial for k in kept]).to(dev)
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

        def flat(v: Tensor) -> list[float]:
            return [round(f, 5) for f in v.flatten().tolist()]

        return [
            _example(
                ex,
                y,
                targets,
                clean_logits,
                adv_logits[k],
                shape=list(x.shape[1:]),
                clean=flat(x[ex.index]),
                adversarial=flat(adv[k].cpu()),
                attribution=[float(f"{v:.4g}") for v in attribution[k].flatten().tolist()],
            )
            for k, ex in enumerate(kept)
        ]


class _TextBackend:
    """Texts and a :class:`~robustops.text.models.TextClassifier` (``predict_logits``)."""

    modality = "text"

    def __init__(self, model: TextClassifier, texts: Sequence[str], batch_size: int) -> None:
        self.model, self.texts, self.batch_size = model, list(texts), batch_size
        self.n = len(self.texts)
        self.dev = torch.device("cpu")
        self.num_classes: int | None = None

    def adapt(self, attack: Attack) -> Attack:
        return attack  # text classifiers are queried as they are

    def record(self) -> StochasticRecord | None:
        return None

    def take(self, b: Tensor) -> list[str]:
        """Texts ``b``."""
        return [self.texts[i] for i in b.tolist()]

    def predict(self, texts: object, where: str) -> Tensor:
        """Checked logits ``(B, K)`` of the attack's output texts."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ModelOutputError(f"{where} are {type(texts).__name__}, not a list of texts")
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

    def edit_counts(self, res: AttackResult) -> Tensor:
        """Per text, the number of edited words."""
        details = res.details if isinstance(res.details, list) else []
        return torch.tensor(
            [len(e) if isinstance(e, list) else 0 for e in details], dtype=torch.float64
        )

    def examples(
        self,
        y: Tensor,
        targets: Tensor | None,
        clean_logits: Tensor,
        kept: list[_Kept],
    ) -> list[AdversarialExample]:
        """Records of the kept examples; each edit's ``contribution`` is the drop of the
        attacker's objective when only that edit is reverted (one query per edit)."""
        out = []
        for ex in kept:
            i, adv_text, edits = ex.index, ex.adversarial, ex.details
            original = self.texts[i]
            reverted = [
                apply_edits(original, [e for e in edits if e is not skip]) for skip in edits
            ]
            logits = self.predict([adv_text, *reverted], f"the edits of sample {i}")
            label = y[i : i + 1].expand(logits.shape[0])
            tgt = targets[i : i + 1].expand(logits.shape[0]) if targets is not None else None
            obj, _ = margin_objective(logits, label, tgt)
            out.append(
                _example(
                    ex,
                    y,
                    targets,
                    clean_logits,
                    logits[0],
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


@dataclass(frozen=True)
class _Kept:
    """A broken sample kept as an example: its index, the attack that broke it, its
    adversarial input (CPU) and details, and the size of its perturbation."""

    index: int
    attack: str
    adversarial: Any
    details: Any
    size: float


def _example(
    ex: _Kept,
    y: Tensor,
    targets: Tensor | None,
    clean_logits: Tensor,
    adv_logits: Tensor,
    **fields: Any,
) -> AdversarialExample:
    i = ex.index
    clean_probs = clean_logits[i].float().softmax(0)
    adv_probs = adv_logits.float().softmax(0)
    p_clean, p_adv = int(clean_probs.argmax()), int(adv_probs.argmax())
    return AdversarialExample(
        index=i,
        label=int(y[i]),
        target=int(targets[i]) if targets is not None else None,
        attack=ex.attack,
        clean_prediction=p_clean,
        clean_confidence=float(clean_probs[p_clean]),
        adversarial_prediction=p_adv,
        adversarial_confidence=float(adv_probs[p_adv]),
        perturbation_norm=ex.size,
        **fields,
    )


def _modality(inputs: Tensor | Sequence[str]) -> str:
    return "tensor" if isinstance(inputs, Tensor) else "text"


def _backend(
    model: nn.Module | TextClassifier, inputs: Tensor | Sequence[str], opts: SuiteOptions
) -> _Backend:
    """The backend for ``inputs``: tensors with an ``nn.Module``, texts with a text classifier."""
    if isinstance(inputs, Tensor):
        if not isinstance(model, nn.Module):
            raise TypeError("tensor inputs need an nn.Module returning logits")
        dev = resolve_device(model, opts.device)
        backend = _TensorBackend(model, inputs, opts.batch_size, dev, opts.eot_samples)
        if backend.stochastic:
            log.warning(
                "the model is stochastic (two passes differ by up to %.3g in a logit): %s",
                backend.gap,
                f"predictions average {backend.eot} passes and attacks use EOT"
                if backend.eot > 1
                else "single passes as asked (eot_samples=1); robust accuracy may be overstated",
            )
        return backend
    if isinstance(inputs, str) or not callable(getattr(model, "predict_logits", None)):
        raise TypeError("texts must be a sequence of strings, with a text classifier")
    return _TextBackend(model, inputs, opts.batch_size)  # type: ignore[arg-type]


def run_suite(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
    labels: Tensor,
    threats: Sequence[SuiteThreat],
    options: SuiteOptions | None = None,
    *,
    record: SuiteRecord | None = None,
    temperature: TemperatureFit | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> SuiteResult:
    """Evaluate ``model`` on ``inputs`` / ``labels`` ``(N,)`` under each threat (see
    :func:`run_suite_detailed` for the arguments)."""
    return run_suite_detailed(
        model,
        inputs,
        labels,
        threats,
        options,
        record=record,
        temperature=temperature,
        progress=progress,
    ).result


def run_suite_detailed(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
    labels: Tensor,
    threats: Sequence[SuiteThreat],
    options: SuiteOptions | None = None,
    *,
    record: SuiteRecord | None = None,
    temperature: TemperatureFit | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> SuiteRun:
    """Evaluate ``model`` on ``inputs`` / ``labels`` ``(N,)`` under each threat; the result with
    the logits behind its figures (what :mod:`robustops.evaluation.sharding` merges).

    Args:
        model: an ``nn.Module`` returning logits for tensor ``inputs`` ``(N, ...)`` (every
            submodule in eval mode for the run, each restored to its own mode after), or a text
            classifier (``predict_logits(texts) -> (N, K)``) for ``inputs`` given as a list of
            strings. Outputs must be finite logits of one shape ``(B, K)``, else
            :class:`~robustops.errors.ModelOutputError` names the first bad batch.
        threats: threats with their attacks, in the order they should run; ``word-edits``
            threats for texts, the other families for tensors.
        options: how the suite runs (:class:`SuiteOptions`; default values when ``None``).
        record: the result's name and the identity records it copies (:class:`SuiteRecord`).
        temperature: a temperature fitted on held-out data (see
            :func:`robustops.defenses.fit_temperature_on`); the calibration figures are then
            reported before and after scaling. Predictions, hence robust accuracy, do not change.
        progress: called after each batch, e.g. to drive a progress bar.
    """
    opts, rec = options or SuiteOptions(), record or SuiteRecord()
    _check_inputs(inputs, labels, threats)
    t_start = time.perf_counter()
    # Every submodule in eval mode before the first pass (the stochasticity probe included):
    # a batch-norm left in training would learn from the test batch, a dropout would look random.
    with eval_mode(model):
        backend = _backend(model, inputs, opts)
        y = labels.detach().cpu().to(torch.int64)
        t_clean = time.perf_counter()
        clean_logits = backend.clean_logits()
        clean_s = time.perf_counter() - t_clean
        n = backend.n
        if n and int(y.max()) >= clean_logits.shape[1]:
            raise ModelOutputError(
                f"the model has {clean_logits.shape[1]} outputs but the labels go up to "
                f"{int(y.max())}"
            )
        latency = _latency(backend, opts.latency_calls, opts.batch_size, clean_s) if n else None
        indices = list(rec.indices) if rec.indices is not None else list(range(n))
        runs = [_ThreatRun(backend, y, clean_logits, st, indices, opts) for st in threats]
        threat_results = [r.run(progress, temperature) for r in runs]
    clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
    result = SuiteResult(
        name=rec.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=opts.seed,
        device=str(backend.dev),
        n_samples=n,
        clean_accuracy=int(clean_correct.sum()) / n if n else 0.0,
        threats=threat_results,
        data=dict(rec.data_info),
        model=dict(rec.model_info),
        environment=environment(),
        samples=SamplesRecord(
            indices=indices,
            labels=y.tolist(),
            clean_correct=clean_correct.tolist(),
        ),
        wall_time_s=time.perf_counter() - t_start,
        calibration=suite_calibration(clean_logits, y, opts, temperature) if n else None,
        latency=latency,
        stochastic=backend.record(),
    )
    return SuiteRun(result, clean_logits, [r.details() for r in runs])


def _check_inputs(
    inputs: Tensor | Sequence[str], labels: Tensor, threats: Sequence[SuiteThreat]
) -> None:
    if len(inputs) != labels.shape[0]:
        raise ValueError("inputs and labels differ in length")
    modality = _modality(inputs)
    for st in threats:
        if st.threat.modality != modality:
            raise ValueError(
                f"threat {st.threat.name!r} ({st.threat.norm}) is for {st.threat.modality} "
                f"inputs, not {modality} ones"
            )


def suite_calibration(
    clean_logits: Tensor, y: Tensor, opts: SuiteOptions, temperature: TemperatureFit | None
) -> SuiteCalibration | None:
    """The clean calibration figures of logits ``(N, K)`` and labels ``(N,)`` (``None`` when
    calibration is off); also what a sharded run recomputes on the merged logits."""
    if not opts.calibration:
        return None
    t = temperature.temperature if temperature is not None else None
    return SuiteCalibration(
        n_bins=opts.n_bins,
        clean=calibration_metrics(clean_logits, y, n_bins=opts.n_bins),
        clean_scaled=calibration_metrics(clean_logits, y, n_bins=opts.n_bins, temperature=t)
        if t is not None
        else None,
        temperature=temperature,
    )


@torch.no_grad()
def _latency(
    backend: _Backend, calls: int, batch_size: int, batched_s: float
) -> LatencyFigures | None:
    """Time ``calls`` single-input forward passes (cycling over the inputs, after 5 warm-up
    calls); throughput from the batched clean pass that took ``batched_s`` seconds. ``None``
    for no calls."""
    if calls <= 0:
        return None
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


class _ThreatRun:
    """One threat's evaluation: its attacks in order, each on the samples it is owed (those
    still robust, or every attacked one for an independent threat), keeping per sample the
    worst case so far: its logits and loss (CE against the label, or minus CE against the
    target); the input that broke a sample is kept whatever its loss."""

    def __init__(
        self,
        backend: _Backend,
        y: Tensor,
        clean_logits: Tensor,
        st: SuiteThreat,
        indices: Sequence[int],
        opts: SuiteOptions,
    ) -> None:
        self.backend, self.y, self.clean_logits, self.st, self.opts = (
            backend,
            y,
            clean_logits,
            st,
            opts,
        )
        n = backend.n
        clean_correct = clean_logits.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
        self.targets = _draw_targets(
            st.threat, y, int(clean_logits.shape[1]) if n else 0, opts.seed, indices
        )
        self.worst_logits = clean_logits.clone()
        self.worst_loss = _threat_loss(clean_logits, y, self.targets)
        self.robust = clean_correct.clone()
        self.attacked = clean_correct & st.threat.attacked(y)
        self.broken_by: list[str | None] = [None] * n
        self.queries = torch.zeros(n, dtype=torch.int64)
        self.kept: list[_Kept] = []
        self.tallies: list[AttackTally] = []

    def details(self) -> ThreatDetails:
        """The per-sample tensors behind the figures (after :meth:`run`)."""
        return ThreatDetails(
            worst_logits=self.worst_logits,
            sizes=[torch.cat(t.sizes).tolist() if t.sizes else [] for t in self.tallies],
            edits=[torch.cat(t.edits).tolist() if t.edits else [] for t in self.tallies],
            success_queries=[t.success_queries for t in self.tallies],
        )

    def run(
        self,
        progress: Callable[[ProgressEvent], None] | None,
        temperature: TemperatureFit | None,
    ) -> ThreatResult:
        """Every attack of the threat, then its figures."""
        t0 = time.perf_counter()
        figures = [self._attack(a, progress) for a in map(self.backend.adapt, self.st.attacks)]
        return self._result(figures, time.perf_counter() - t0, temperature)

    def _attack(
        self, attack: Attack, progress: Callable[[ProgressEvent], None] | None
    ) -> AttackFigures:
        owed = self.attacked if self.st.runs_independently else self.robust & self.attacked
        idx = owed.nonzero().squeeze(1)
        t0 = time.perf_counter()
        tally = AttackTally(record_broken=self.st.runs_independently)
        self.tallies.append(tally)
        for start in range(0, idx.numel(), self.opts.batch_size):
            b = idx[start : start + self.opts.batch_size]
            self._batch(attack, b, tally)
            if progress is not None:
                done = min(start + self.opts.batch_size, idx.numel())
                progress(ProgressEvent(self.st.threat.name, attack.name, done, idx.numel()))
        if progress is not None and idx.numel() == 0:
            progress(ProgressEvent(self.st.threat.name, attack.name, 0, 0))
        return tally.figures(
            attack.name, attack.params(), int(idx.numel()), time.perf_counter() - t0
        )

    def _batch(self, attack: Attack, b: Tensor, tally: AttackTally) -> None:
        """Attack samples ``b`` and fold the checked outcome into the worst case."""
        tb = self.targets[b] if self.targets is not None else None
        att = _attempt(self.backend, attack, b, self.y[b], tb)
        if not bool(att.ok.all()):
            log.warning(
                "attack %s returned %d inputs that break threat %s; their successes are "
                "not counted",
                attack.name,
                int((~att.ok).sum()),
                self.st.threat.name,
            )
        # The suite's own re-prediction decides, not what the attack reports.
        success = att.ok & is_adversarial(att.logits, self.y[b], tb)
        loss = _threat_loss(att.logits, self.y[b], tb)
        better = att.ok & (success | (loss > self.worst_loss[b])) & self.robust[b]
        self.worst_logits[b[better]] = att.logits[better]
        self.worst_loss[b[better]] = loss[better]
        self.queries[b] += att.queries
        for j in success.nonzero().squeeze(1).tolist():
            i = int(b[j])
            if self.broken_by[i] is None:
                self.broken_by[i] = attack.name
            if len(self.kept) < self.opts.n_examples and all(k.index != i for k in self.kept):
                adv, details = att.item(j)
                self.kept.append(_Kept(i, attack.name, adv, details, float(att.size[j])))
        self.robust[b[success]] = False
        tally.add(att, success, b)

    def _result(
        self, figures: list[AttackFigures], wall_s: float, temperature: TemperatureFit | None
    ) -> ThreatResult:
        n, threat, y = self.backend.n, self.st.threat, self.y
        n_robust, n_attacked = int(self.robust.sum()), int(self.attacked.sum())
        n_broken = int((self.attacked & ~self.robust).sum())
        return ThreatResult(
            name=threat.name,
            threat=threat,
            robust_accuracy=n_robust / n if n else 0.0,
            attack_success_rate=n_broken / n_attacked if n_attacked else 0.0,
            n_robust=n_robust,
            n_attacked=n_attacked,
            attacks=figures,
            total_queries=int(self.queries.sum()),
            wall_time_s=wall_s,
            robust=self.robust.tolist(),
            broken_by=self.broken_by,
            queries=self.queries.tolist(),
            targets=self.targets.tolist() if self.targets is not None else None,
            examples=self.backend.examples(y, self.targets, self.clean_logits, self.kept)
            if self.kept
            else [],
            calibration=threat_calibration(self.worst_logits, self.y, self.opts, temperature)
            if self.opts.calibration and n
            else None,
            independent=self.st.runs_independently,
        )


def threat_calibration(
    worst_logits: Tensor, y: Tensor, opts: SuiteOptions, temperature: TemperatureFit | None
) -> ThreatCalibration:
    """A threat's calibration figures on each sample's worst-case logits ``(N, K)`` (also what a
    sharded run recomputes on the merged logits)."""
    bins = opts.n_bins
    return ThreatCalibration(
        attacked=calibration_metrics(worst_logits, y, n_bins=bins),
        attacked_scaled=calibration_metrics(
            worst_logits, y, n_bins=bins, temperature=temperature.temperature
        )
        if temperature is not None
        else None,
    )


@dataclass
class AttackTally:
    """One attack's counts over its batches (or, merged, over the shards of a sharded run),
    from which its :class:`AttackFigures` are built: successes, queries, the perturbation sizes
    and edit counts of the successes, and with ``record_broken`` the samples broken."""

    n_broken: int = 0
    total_queries: int = 0
    success_queries: int = 0
    sizes: list[Tensor] = field(default_factory=list)
    edits: list[Tensor] = field(default_factory=list)
    record_broken: bool = False
    broken: list[int] = field(default_factory=list)

    def add(self, att: _Attempt, success: Tensor, b: Tensor) -> None:
        if self.record_broken:
            self.broken += b[success].tolist()
        self.n_broken += int(success.sum())
        self.total_queries += int(att.queries.sum())
        self.success_queries += int(att.queries[success].sum())
        self.sizes.append(att.size[success])
        if att.edits is not None:
            self.edits.append(att.edits[success])

    def figures(
        self, name: str, params: dict[str, Any], n_attacked: int, wall_s: float
    ) -> AttackFigures:
        """The figures of attack ``name`` run on ``n_attacked`` samples in ``wall_s`` seconds."""
        sizes = torch.cat(self.sizes) if self.sizes else torch.empty(0)
        edits = torch.cat(self.edits) if self.edits else torch.empty(0)
        return AttackFigures(
            name=name,
            params=params,
            n_attacked=n_attacked,
            n_broken=self.n_broken,
            success_rate=self.n_broken / n_attacked if n_attacked else 0.0,
            mean_queries=self.total_queries / n_attacked if n_attacked else 0.0,
            total_queries=self.total_queries,
            median_perturbation=float(sizes.median()) if sizes.numel() else None,
            wall_time_s=wall_s,
            mean_queries_per_success=self.success_queries / self.n_broken
            if self.n_broken
            else None,
            mean_edits=float(edits.mean()) if edits.numel() else None,
            broken=sorted(self.broken) if self.record_broken else None,
        )


def _draw_targets(
    threat: ThreatModel, y: Tensor, num_classes: int, seed: int, indices: Sequence[int]
) -> Tensor | None:
    """``(N,)`` targets of ``threat`` for labels ``y`` (``None``: untargeted): sample ``i``'s
    drawn by :meth:`ThreatModel.draw_targets` from its own generator, seeded from (``seed``,
    the threat's name, ``indices[i]``, its index in the split), so it is the same in any
    shard."""
    if not threat.targeted or threat.target_class is not None or y.numel() == 0:
        return threat.draw_targets(y, num_classes, make_generator(seed))
    if len(indices) != y.shape[0]:
        raise ValueError(f"{len(indices)} sample indices for {y.shape[0]} labels")
    out = []
    for i, index in enumerate(indices):
        key = hashlib.sha256(f"targets|{seed}|{threat.name}|{int(index)}".encode()).digest()
        gen = make_generator(digest_seed(key))
        drawn = threat.draw_targets(y[i : i + 1], num_classes, gen)
        assert drawn is not None
        out.append(drawn)
    return torch.cat(out)


def _threat_loss(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """``(N,)`` what the attacker maximises: CE of the label, or minus CE of the target."""
    if targets is None:
        return torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
