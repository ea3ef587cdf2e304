"""The attack contract, one for every modality: built as ``Attack(threat, *, seed, **options)``,
called as ``attack(model, inputs, labels, *, targets=None)``, returning an :class:`AttackResult`.

An attack holds its threat and hyper-parameters only; each call is independent and
deterministic (its random generator is re-seeded from ``seed`` on every call). Hyper-parameters
are the keyword-only arguments of the constructors along the class's MRO, stored under the same
names (scikit-learn's ``get_params`` rule): :meth:`Attack.params` reads them, and
:meth:`Attack.with_params` rebuilds the attack through the constructor, which validates them.

Tensor attacks (images, tabular rows) implement ``_run`` and get the checks, the final
projection and the verification pass from this base; attacks on other inputs (texts) override
``_check_call`` and ``_attack``. An attack states constraints beyond its threat's budget through
:meth:`Attack.respects`; the budget itself is checked by the evaluation suite from the threat,
not by the attack.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import Tensor

from robustops._util import make_generator
from robustops.attacks.randomness import SampleRandomness
from robustops.errors import SpecError
from robustops.threats import Knowledge, ThreatModel
from robustops.threats.geometry import perturbation_norm, project, random_start

__all__ = [
    "Attack",
    "AttackResult",
    "ModelFn",
    "frozen_parameters",
    "is_adversarial",
    "knowledge_suffices",
    "perturbation_norm",
    "project",
    "random_start",
]

ModelFn = Callable[[Tensor], Tensor]
"""A model: maps inputs ``(N, ...)`` to logits (or log-probabilities) ``(N, K)``."""

_KNOWLEDGE_RANK: dict[str, int] = {"decision-based": 0, "score-based": 1, "white-box": 2}


def knowledge_suffices(needed: Knowledge, granted: Knowledge) -> bool:
    """Whether a threat granting ``granted`` access allows an attack needing ``needed``
    (white-box > score-based > decision-based)."""
    return _KNOWLEDGE_RANK[needed] <= _KNOWLEDGE_RANK[granted]


@dataclass(frozen=True)
class AttackResult:
    """What one attack call produced, one entry per input sample.

    Attributes:
        adversarial: the adversarial inputs, of the inputs' kind: tensors ``(N, ...)`` of the
            inputs' shape, dtype and device, each within the threat's budget around its input
            and inside its bounds; texts a list of ``N`` strings.
        success: ``(N,)`` bool; verified by re-predicting ``adversarial`` (untargeted: the
            prediction differs from the label; targeted: it equals the target).
        queries: ``(N,)`` int64; model evaluations spent on each sample (a forward+backward
            pass counts as one), excluding the final verification pass.
        perturbation: ``(N,)`` float; the size of each perturbation in the threat's unit
            (:meth:`Attack._perturbation`: a norm, a patch side in pixels, the share of the
            spatial budget used, a severity, a share of words).
        predictions: ``(N,)`` int64; the model's label for each adversarial input.
        details: what the family needs beyond the inputs to check the budget, per sample
            (texts: the list of word edits; spatial: ``(N, 3)`` angle in degrees and shifts in
            pixels; patch: ``(N, 2)`` int64 top-left (row, column), -1 for none; ``None`` when
            the inputs say it all).
    """

    adversarial: Any
    success: Tensor
    queries: Tensor
    perturbation: Tensor
    predictions: Tensor
    details: Any = None

    def __len__(self) -> int:
        return int(self.success.shape[0])


def is_adversarial(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """``(N,)`` bool: untargeted, the prediction differs from ``labels``; targeted, equals ``targets``."""
    pred = logits.argmax(dim=1)
    return pred == targets if targets is not None else pred != labels


@contextlib.contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
    """Temporarily stop gradients to a module's parameters (attacks need input gradients only)."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Attack:
    """Base of every attack. Subclasses set ``name``, ``knowledge`` and ``norms`` (the threat
    families they serve) and implement ``_run`` (tensor inputs) or override ``_check_call`` and
    ``_attack`` (other inputs).

    Args:
        threat: the budget and goal (family, epsilon, bounds, targeted, query budget).
        seed: seeds the attack's generator, re-created on each call so calls are reproducible.
    """

    name: ClassVar[str] = ""
    knowledge: ClassVar[Knowledge] = "white-box"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(self, threat: ThreatModel, *, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise SpecError.single("threat", f"expected a ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise SpecError.single(
                "threat.norm",
                f"attack {self.name!r} supports norms {list(self.norms)}, not {threat.norm!r}",
            )
        if not knowledge_suffices(self.knowledge, threat.knowledge):
            raise SpecError.single(
                "threat.knowledge",
                f"attack {self.name!r} needs {self.knowledge} access but the threat grants {threat.knowledge}",
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise SpecError.single("seed", f"must be an int, got {seed!r}")
        self.threat = threat
        self.seed = seed

    @staticmethod
    def _check_positive(
        name: str, value: float, *, integer: bool = False, allow_zero: bool = False
    ) -> None:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
            kind = "int" if integer else "number"
            bound = ">= 0" if allow_zero else "> 0"
            raise SpecError.single(name, f"must be a {kind} {bound}, got {value!r}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every hyper-parameter of this class and its default (:data:`inspect.Parameter.empty`
        when it has none): the keyword-only arguments of its ``__init__`` and, while an
        ``__init__`` passes ``**kwargs`` up, those of the next one along the MRO (the most
        derived default wins)."""
        return cls._init_keywords(follow_kwargs=True)

    @classmethod
    def _init_keywords(cls, *, follow_kwargs: bool) -> dict[str, Any]:
        """The keyword-only arguments (name → default) of the ``__init__`` methods along the
        MRO, most derived first; with ``follow_kwargs``, only as far as each passes
        ``**kwargs`` up (what the constructor accepts), else of all of them."""
        out: dict[str, Any] = {}
        for klass in cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            for p in params:
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    out.setdefault(p.name, p.default)
            if follow_kwargs and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                break
        return out

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters as the constructor stored them (its keyword-only arguments, read
        back from the attributes of the same names): what :meth:`with_params` passes on."""
        names = self.param_defaults()
        stored = [k for k in vars(self) if k in names]  # in the order the constructor set them
        return {k: getattr(self, k) for k in [*stored, *(k for k in names if k not in stored)]}

    def params(self) -> dict[str, Any]:
        """The hyper-parameters as recorded in results and reports (JSON-ready; an attack
        holding an object, e.g. an embedding, records its name instead): :meth:`get_params`,
        and the options a subclass fixes for its parent (APGD-DLR's ``loss``), so that a result
        says everything the run used."""
        every = self._init_keywords(follow_kwargs=False)
        stored = {k: v for k, v in vars(self).items() if k in every}
        return {**stored, **{k: v for k, v in self.get_params().items() if k not in stored}}

    def with_params(self, **changes: Any) -> Self:
        """A new attack of this class and threat with :meth:`get_params` updated by ``changes``,
        built (and so validated) by the constructor (scikit-learn's ``clone`` rule: what the
        constructor stored is what it is given back); this attack is left as it is.

        Raises :class:`SpecError` naming a parameter this attack does not have.
        """
        params = self.get_params()
        for key in changes:
            if key not in params:
                raise SpecError.single(key, f"attack {self.name!r} has no parameter {key!r}")
        return type(self)(self.threat, **{**params, **changes})

    def __call__(
        self, model: Any, inputs: Any, labels: Tensor, *, targets: Tensor | None = None
    ) -> AttackResult:
        """Attack ``inputs`` (tensors ``(N, ...)`` inside the threat's bounds, or ``N`` texts for
        a text attack) with true ``labels`` ``(N,)``.

        ``targets`` ``(N,)`` is required when the threat is targeted and refused otherwise.
        The model's train/eval mode is left as the caller set it.
        """
        x, y, t = self._check_call(model, inputs, labels, targets)
        return self._attack(model, x, y, t)

    def _attack(self, model: Any, x: Any, y: Tensor, t: Tensor | None) -> AttackResult:
        """The attack on checked inputs: for tensors, ``_run``, the final projection and the
        verification pass."""
        gen = make_generator(self.seed, device=x.device)
        with frozen_parameters(model):
            adv, queries, details = self._run_detailed(model, x, y, t, gen)
            adv = self._finalize(adv.detach(), x)
            with torch.no_grad():
                logits = model(adv)
        return AttackResult(
            adversarial=adv,
            success=is_adversarial(logits, y, t),
            queries=queries.to(torch.int64),
            perturbation=self._perturbation(adv, x, details),
            predictions=logits.argmax(dim=1),
            details=details,
        )

    def _run_detailed(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Any]:
        """``_run`` and the result's ``details`` (``None`` here). Attacks whose budget check needs
        more than the inputs (a spatial transform's parameters, a patch's place) override this
        instead of ``_run``; ``details`` must describe the output after :meth:`_finalize`."""
        adv, queries = self._run(model, x, y, targets, gen)
        return adv, queries, None

    def _perturbation(self, adv: Tensor, x: Tensor, details: Any) -> Tensor:
        """``(N,)`` float: the size of each perturbation in the threat's unit, here its norm
        (families measured otherwise, a patch side, a share of a spatial budget, a severity,
        override this)."""
        return perturbation_norm(adv - x, self.threat.norm)

    def _finalize(self, adv: Tensor, x: Tensor) -> Tensor:
        """The last projection of the adversarial inputs: onto the threat's ball and bounds
        (attacks with extra constraints, e.g. a tabular schema, extend it)."""
        return project(adv, x, self.threat)

    def respects(self, adversarial: Tensor, inputs: Tensor) -> Tensor:
        """``(N,)`` bool: the attack's own constraints beyond the threat's ball and bounds hold
        for ``adversarial`` around ``inputs`` (e.g. a tabular schema). The evaluation suite
        checks this on every output and does not count a success that breaks it; the base
        attack has no extra constraint."""
        return torch.ones(adversarial.shape[0], dtype=torch.bool, device=adversarial.device)

    def _check_call(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if not callable(model):
            raise SpecError.single("model", "must be callable (a torch.nn.Module returning logits)")
        if self.knowledge == "white-box" and getattr(model, "differentiable", True) is False:
            raise SpecError.single(
                "model", f"attack {self.name!r} needs gradients; this model has none"
            )
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
            raise SpecError.single("inputs", "must be a floating-point tensor of shape (N, ...)")
        if not isinstance(labels, Tensor) or labels.shape != inputs.shape[:1]:
            raise SpecError.single("labels", f"must be a tensor of shape ({inputs.shape[0]},)")
        low, high = self.threat.bounds
        if inputs.numel() and (float(inputs.min()) < low or float(inputs.max()) > high):
            raise SpecError.single(
                "inputs", f"values must lie in the threat bounds {self.threat.bounds}"
            )
        if self.threat.targeted:
            if targets is None or not isinstance(targets, Tensor) or targets.shape != labels.shape:
                raise SpecError.single(
                    "targets", "a targeted threat needs targets of the labels' shape"
                )
            targets = targets.to(device=inputs.device, dtype=torch.int64)
        elif targets is not None:
            raise SpecError.single("targets", "given, but the threat is untargeted")
        return inputs.detach(), labels.to(device=inputs.device, dtype=torch.int64), targets

    def _randomness(self, x: Tensor) -> SampleRandomness:
        """Per-sample generators for the batch ``x`` ``(N, ...)``, keyed by the attack's name, its
        seed and each sample's content: what the built-in tensor attacks draw from instead of
        the batch generator ``gen``, so a sample's result does not depend on its batch.

        Keyed by content rather than by the sample's index in its data set: an attack is called
        on a batch and knows no indices, the contract stays ``attack(model, inputs, labels)``,
        and a sample gets the same draws whether the suite runs it alone, in any batch, after
        earlier attacks removed its neighbours, or in any shard of a sharded run (the suite's
        own draws, the targets, are keyed by (seed, sample index)). Two identical inputs get
        identical draws, which is what a deterministic attack would give them anyway."""
        return SampleRandomness(x, f"{self.name}|{self.seed}")

    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return adversarial inputs ``(N, ...)`` and queries per sample ``(N,)`` (tensor
        attacks implement this; attacks overriding ``_attack`` do not)."""
        raise NotImplementedError(f"attack {self.name!r} implements neither _run nor _attack")
