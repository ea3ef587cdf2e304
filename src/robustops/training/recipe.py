"""The training recipe: an objective plus its schedules, validated by pydantic.

Every section refuses unknown keys, and a parameter that the chosen variant does not use (say
``beta`` for ``pgd-at``) is refused too, so a typo never silently falls back to a default. A
recipe is what the ``train:`` section of a pipeline spec holds (plus ``out``); the library
accepts it directly too::

    Recipe(epochs=10, objective={"name": "pgd-at", "steps": 10},
           threats=[{"kind": "linf", "epsilon": 0.3}])
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from robustops.attacks.base import Attack
from robustops.attacks.registry import AttackSpec, build_attack
from robustops.errors import SpecError
from robustops.schema import StrictModel
from robustops.threats.model import ThreatModel

__all__ = [
    "AWPSpec",
    "AugmentSpec",
    "CurriculumSpec",
    "EarlyStoppingSpec",
    "GuardSpec",
    "ObjectiveSpec",
    "OptimizerSpec",
    "PerturbationSpec",
    "Recipe",
    "ScheduleSpec",
    "ValidationSpec",
]

ObjectiveName = Literal["standard", "pgd-at", "trades", "fast", "gaussian"]
PerturbationKind = Literal["linf", "l2", "patch", "noise"]


def _refuse_unused(
    data: Any, choice_key: str, default: str, used: dict[str, set[str]], common: set[str]
) -> Any:
    """Before-validator helper: refuse keys that the chosen variant (``data[choice_key]``) does
    not read, naming them (pydantic then reports the error at the section's path)."""
    if not isinstance(data, dict):
        return data
    choice = data.get(choice_key, default)
    if not isinstance(choice, str) or choice not in used:
        return data
    unused = sorted(k for k in data if k not in used[choice] | common | {choice_key})
    known = set().union(*used.values()) | common | {choice_key}
    unused = [k for k in unused if k in known]  # truly unknown keys: extra="forbid" names them
    if unused:
        raise ValueError(
            f"{', '.join(unused)}: not a parameter of {choice_key} {choice!r} "
            f"(it reads {sorted(used[choice] | common) or 'nothing else'})"
        )
    return data


class ObjectiveSpec(StrictModel):
    """What the model is trained to minimise.

    * ``standard``: cross-entropy on clean inputs.
    * ``pgd-at`` (Madry et al. 2018): cross-entropy on PGD adversarial inputs (``steps`` steps of
      ``step_size``, default ``2.5 * epsilon / steps``, from a random start).
    * ``trades`` (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with ``x'``
      maximising the KL inside the ball (``steps``, ``step_size`` as above).
    * ``fast`` (Wong et al. 2020): one FGSM step of ``step_size`` (default ``1.25 * epsilon``) from
      a uniform random start of radius ``start_scale * epsilon``, projected back onto the ball
      (``clip``); pair it with a cyclic schedule and the overfitting guard. ``start_scale: 2``,
      ``step_size: epsilon``, ``clip: false`` is N-FGSM (de Jorge et al. 2022).
    * ``gaussian``: cross-entropy on ``x + sigma * N(0, I)`` (training for randomized smoothing;
      not clipped to the bounds, as Cohen et al. 2019).

    ``step_size`` is in input units at the full budget of the recipe's first ``linf``/``l2``
    perturbation (without one: a share of the bounds' width); the other perturbations of a mix,
    and the curriculum's smaller budgets, use the same step-to-budget ratio, a patch taking it
    as a share of the bounds' width.
    """

    name: ObjectiveName = "standard"
    steps: int | None = Field(default=None, ge=1)
    step_size: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    random_start: bool = True
    beta: float = Field(default=6.0, ge=0, allow_inf_nan=False)
    sigma: float = Field(default=0.25, gt=0, allow_inf_nan=False)
    start_scale: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    clip: bool = True

    @model_validator(mode="before")
    @classmethod
    def _only_used(cls, data: Any) -> Any:
        return _refuse_unused(
            data,
            "name",
            "standard",
            {
                "standard": set(),
                "pgd-at": {"steps", "step_size", "random_start"},
                "trades": {"steps", "step_size", "beta"},
                "fast": {"step_size", "start_scale", "clip"},
                "gaussian": {"sigma"},
            },
            set(),
        )

    @property
    def adversarial(self) -> bool:
        """Whether the objective searches for adversarial inputs (and so needs threats)."""
        return self.name in ("pgd-at", "trades", "fast")

    def resolved_steps(self) -> int:
        """Inner-maximisation steps: ``steps``, else 10 (PGD-AT, TRADES) or 1 (fast)."""
        if self.name == "fast":
            return 1
        return self.steps if self.steps is not None else 10


class PerturbationSpec(StrictModel):
    """One family of perturbations of a recipe's mix, drawn per batch with probability
    proportional to ``weight``.

    * ``linf`` / ``l2``: a norm ball of radius ``epsilon`` (input units), searched by the
      objective's inner maximisation.
    * ``patch``: an occluding square of ``size`` × ``size`` pixels at a random place per sample,
      whose content the inner maximisation chooses freely inside the bounds.
    * ``noise``: additive Gaussian noise of standard deviation ``sigma``, clipped to the bounds
      (not searched).

    The epsilon curriculum scales ``epsilon`` and ``sigma``.
    """

    kind: PerturbationKind = "linf"
    epsilon: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    size: int | None = Field(default=None, ge=1)
    sigma: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _only_used(cls, data: Any) -> Any:
        return _refuse_unused(
            data,
            "kind",
            "linf",
            {"linf": {"epsilon"}, "l2": {"epsilon"}, "patch": {"size"}, "noise": {"sigma"}},
            {"weight"},
        )

    @model_validator(mode="after")
    def _required(self) -> PerturbationSpec:
        need = {"linf": "epsilon", "l2": "epsilon", "patch": "size", "noise": "sigma"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind!r} perturbation needs {need!r}")
        return self


class CurriculumSpec(StrictModel):
    """How much of each perturbation's budget is used over training (a factor in [0, 1]).

    * ``constant``: the full budget throughout.
    * ``linear``: from ``start`` to 1 over the first ``ramp_epochs`` epochs, updated every batch.
    * ``step``: ``values[i]`` from epoch ``milestones[i-1]`` on (``values[0]`` before the first
      milestone); ``len(values) == len(milestones) + 1``.
    * ``adaptive``: starts at ``start``; after each epoch whose validation robust accuracy at the
      current budget reaches ``target``, grows by ``increment`` (needs validation).
    """

    kind: Literal["constant", "linear", "step", "adaptive"] = "constant"
    start: float = Field(default=0.0, ge=0, le=1)
    ramp_epochs: float = Field(default=1.0, gt=0)
    milestones: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)
    target: float = Field(default=0.5, gt=0, le=1)
    increment: float = Field(default=0.25, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _only_used(cls, data: Any) -> Any:
        return _refuse_unused(
            data,
            "kind",
            "constant",
            {
                "constant": set(),
                "linear": {"start", "ramp_epochs"},
                "step": {"milestones", "values"},
                "adaptive": {"start", "target", "increment"},
            },
            set(),
        )

    @model_validator(mode="after")
    def _consistent(self) -> CurriculumSpec:
        if self.kind == "step":
            if len(self.values) != len(self.milestones) + 1:
                raise ValueError("a step curriculum needs len(values) == len(milestones) + 1")
            if self.milestones != sorted(set(self.milestones)) or any(
                m < 1 for m in self.milestones
            ):
                raise ValueError("milestones must be strictly increasing epochs >= 1")
            if any(not 0 <= v <= 1 for v in self.values):
                raise ValueError("values must lie in [0, 1]")
        return self


class ScheduleSpec(StrictModel):
    """Learning-rate schedule, evaluated every batch from the recipe's peak ``lr``.

    * ``constant``: ``lr`` throughout (after an optional linear ``warmup_epochs``).
    * ``cosine``: cosine decay from ``lr`` to ``min_factor * lr`` (after the warm-up).
    * ``piecewise``: multiplied by ``factor`` at each of ``milestones`` (epochs).
    * ``cyclic``: one triangle (Wong et al. 2020): linear from ``min_factor * lr`` up to ``lr`` at
      ``peak`` (a fraction of training), then linearly down to ``min_factor * lr``.
    """

    kind: Literal["constant", "cosine", "piecewise", "cyclic"] = "constant"
    warmup_epochs: float = Field(default=0.0, ge=0)
    min_factor: float = Field(default=0.0, ge=0, le=1)
    milestones: list[float] = Field(default_factory=list)
    factor: float = Field(default=0.1, gt=0, le=1)
    peak: float = Field(default=0.4, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _only_used(cls, data: Any) -> Any:
        return _refuse_unused(
            data,
            "kind",
            "constant",
            {
                "constant": {"warmup_epochs"},
                "cosine": {"warmup_epochs", "min_factor"},
                "piecewise": {"warmup_epochs", "milestones", "factor"},
                "cyclic": {"min_factor", "peak"},
            },
            set(),
        )

    @model_validator(mode="after")
    def _sorted(self) -> ScheduleSpec:
        if self.milestones != sorted(self.milestones):
            raise ValueError("milestones must be increasing")
        return self


class OptimizerSpec(StrictModel):
    """``adam`` (default) or ``sgd`` (with ``momentum`` and optional ``nesterov``)."""

    name: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)

    @model_validator(mode="before")
    @classmethod
    def _only_used(cls, data: Any) -> Any:
        return _refuse_unused(
            data, "name", "adam", {"adam": {"betas"}, "sgd": {"momentum", "nesterov"}}, set()
        )


class AWPSpec(StrictModel):
    """Adversarial weight perturbation (Wu et al. 2020) on top of PGD-AT or TRADES: before each
    update, every weight matrix ``w`` moves by ``gamma * ||w|| * g / ||g||`` along the gradient
    ``g`` of the training loss, the update is computed there, and the move is undone."""

    gamma: float = Field(default=5e-3, gt=0, le=1)
    warmup_epochs: int = Field(default=0, ge=0)


class ValidationSpec(StrictModel):
    """Hold out ``holdout`` training samples (a seeded draw) to measure clean and robust accuracy
    after each epoch; robust accuracy is under PGD (``pgd_steps`` steps, one random start) at the
    full budget of the first ``linf``/``l2`` perturbation of the mix."""

    holdout: int = Field(default=0, ge=0)
    pgd_steps: int = Field(default=10, ge=1)
    batch_size: int = Field(default=500, ge=1)


class EarlyStoppingSpec(StrictModel):
    """Stop when validation robust accuracy has not improved by more than ``min_delta`` for
    ``patience`` epochs (counted once the curriculum reached the full budget; Rice et al.
    2020)."""

    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class GuardSpec(StrictModel):
    """Catastrophic-overfitting guard (for fast training). After each epoch, on the first
    ``samples`` held-out inputs, measure FGSM accuracy and PGD accuracy (``pgd_steps`` steps) at
    the full budget. If PGD accuracy fell by at least ``drop`` since the last good epoch while
    FGSM accuracy did not fall by more than ``fgsm_tolerance``, the weights and optimizer state
    are restored from the last good epoch and the training step size is multiplied by
    ``step_factor`` (at most ``max_restores`` times)."""

    samples: int = Field(default=256, ge=1)
    pgd_steps: int = Field(default=10, ge=1)
    drop: float = Field(default=0.1, gt=0, le=1)
    fgsm_tolerance: float = Field(default=0.05, ge=0, le=1)
    step_factor: float = Field(default=0.75, gt=0, lt=1)
    max_restores: int = Field(default=3, ge=0)


class AugmentSpec(StrictModel):
    """Adversarial data augmentation for text models (the text trainer only,
    :func:`robustops.training.text.fit_text`).

    Before some epochs the trainer attacks a sample of the training texts with the current
    model, and the adversarial texts that fooled it join the training data, with their true
    labels, from that epoch on (as TextAttack's ``Trainer`` does adversarial training).

    Attributes:
        threat: the attacker's budget during augmentation; must be ``norm: word-edits``
            (``epsilon`` is the largest share of a text's words edited, ``query_budget`` model
            queries per text, ``targeted``/``target_class`` the attacker's goal).
        attacks: text attacks by registry name (:mod:`robustops.attacks.text`) with their
            hyper-parameters (``seed`` is set per round by the trainer; the edit share,
            query budget and goal come from ``threat``, as for every attack). The drawn samples are
            shared round-robin (sample ``k`` gets attack ``k mod len(attacks)``), so a round
            costs about one search per sample whatever the number of attacks.
        samples: training samples attacked per round (count), drawn with a seeded generator
            among those the threat attacks (``threat.attacked(labels)``: with ``target_class: 0``
            only the samples not of class 0); all of them when there are fewer.
        every: epochs between two rounds.
        start_epoch: 1-based epoch before which the first round runs (the model first learns
            from clean data); rounds then run before epochs ``start_epoch``,
            ``start_epoch + every``, ... up to ``epochs``.
        pool: ``accumulate`` keeps the adversarial texts of every round; ``replace`` trains on
            the latest round's only.
    """

    threat: ThreatModel
    attacks: list[AttackSpec] = Field(min_length=1)
    samples: int = Field(default=256, ge=1)
    every: int = Field(default=1, ge=1)
    start_epoch: int = Field(default=2, ge=1)
    pool: Literal["accumulate", "replace"] = "accumulate"

    @field_validator("threat")
    @classmethod
    def _word_edits(cls, threat: ThreatModel) -> ThreatModel:
        if threat.norm != "word-edits":
            raise ValueError(
                f"augmentation attacks texts: the threat needs norm 'word-edits', "
                f"not {threat.norm!r}"
            )
        return threat

    def build_attacks(self, seed: int) -> list[Attack]:
        """The attacks, built for :attr:`threat` with ``seed`` (one per entry of
        :attr:`attacks`, in order).

        Raises :class:`SpecError` with paths ``augment.attacks.J.<param>`` (``.name`` for an
        unknown attack) or ``augment.threat.<field>``; callers add their own prefix.
        """
        built: list[Attack] = []
        errors: list[tuple[str, str]] = []
        for j, spec in enumerate(self.attacks):
            params = spec.params()
            if "seed" in params:
                errors.append(
                    (f"augment.attacks.{j}.seed", "set per augmentation round by the trainer")
                )
                continue
            try:
                built.append(build_attack(spec.name, self.threat, seed=seed, **params))
            except SpecError as exc:
                for path, msg in exc.errors:
                    if path.startswith("threat"):
                        errors.append((f"augment.{path}", msg))
                    else:
                        errors.append((f"augment.attacks.{j}.{path}", msg))
        if errors:
            raise SpecError(errors)
        return built


class Recipe(StrictModel):
    """A whole training recipe.

    Attributes:
        epochs: passes over the training data (minus the validation holdout).
        batch_size: global batch size; under ``torchrun`` each of N processes takes
            ``batch_size / N`` samples of every batch (it must divide evenly).
        lr: peak learning rate; the schedule shapes it.
        weight_decay: L2 penalty passed to the optimizer.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        objective, threats, curriculum, schedule, optimizer, awp, validation, early_stopping,
        guard: see their classes.
        keep_best: with validation, the result is the epoch of best robust accuracy (Rice et al.
            2020), else the last epoch.
        deterministic: use deterministic algorithms (exact resume on CPU).
        bounds: valid input range ``(low, high)``; perturbed inputs stay inside it.
        memory_format: layout the model trains in; ``auto`` is channels-last for image batches
            ``(N, C, H, W)`` (several times faster pooling and faster convolutions on CPU with
            oneDNN), the default layout otherwise. The model is handed back in the default
            layout; the numbers it computes do not depend on the choice beyond rounding.
        inner_precision: ``bfloat16`` runs the search for adversarial inputs under autocast
            (mixed precision; about 2-3× faster on CPUs with AVX512-BF16 or AMX); the weight
            update, validation and the guard stay in float32.
        augment: adversarial data augmentation of text models (see :class:`AugmentSpec`);
            the image/tabular trainer refuses it.
    """

    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    threats: list[PerturbationSpec] = Field(default_factory=list)
    curriculum: CurriculumSpec = Field(default_factory=CurriculumSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    awp: AWPSpec | None = None
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    early_stopping: EarlyStoppingSpec | None = None
    guard: GuardSpec | None = None
    keep_best: bool = True
    deterministic: bool = True
    bounds: tuple[float, float] = (0.0, 1.0)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    inner_precision: Literal["float32", "bfloat16"] = "float32"
    augment: AugmentSpec | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Recipe:
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds}")
        if self.augment is not None and self.augment.start_epoch > self.epochs:
            raise ValueError(
                f"augment.start_epoch ({self.augment.start_epoch}) is after the last epoch "
                f"({self.epochs}): no augmentation round would run"
            )
        obj = self.objective
        if obj.adversarial and not self.threats:
            raise ValueError(f"objective {obj.name!r} needs at least one entry in threats")
        if obj.adversarial and not any(t.kind in ("linf", "l2", "patch") for t in self.threats):
            raise ValueError(f"objective {obj.name!r} needs a linf, l2 or patch threat to search")
        if self.awp is not None and obj.name not in ("pgd-at", "trades"):
            raise ValueError("awp works on top of the pgd-at or trades objective only")
        needs_val = []
        if self.early_stopping is not None:
            needs_val.append("early_stopping")
        if self.guard is not None:
            needs_val.append("guard")
        if self.curriculum.kind == "adaptive":
            needs_val.append("an adaptive curriculum")
        if needs_val and self.validation.holdout == 0:
            raise ValueError(f"{' and '.join(needs_val)} need(s) validation.holdout > 0")
        if needs_val and self.primary_norm_threat() is None:
            raise ValueError(f"{' and '.join(needs_val)} need(s) a linf or l2 threat")
        if self.guard is not None and self.guard.samples > self.validation.holdout:
            raise ValueError("guard.samples must not exceed validation.holdout")
        return self

    def primary_norm_threat(self) -> PerturbationSpec | None:
        """The first ``linf``/``l2`` perturbation: the budget of validation and of the guard."""
        return next((t for t in self.threats if t.kind in ("linf", "l2")), None)
