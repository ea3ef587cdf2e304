"""The pipeline spec: one YAML file naming data, model, training and evaluation suite.

Validated by pydantic; every error carries the dotted path of its field
(``evaluation.threats.1.attacks.0.steps``). Relative paths are resolved against the spec
file's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from robustops.attacks import Attack, build_attack
from robustops.attacks.registry import AttackSpec
from robustops.data import DATASETS, TEXT_DATASETS, DataSource
from robustops.data.extra import ExtraTrainData
from robustops.errors import SpecError, shorten
from robustops.evaluation.suite import SuiteThreat
from robustops.gate import DEFAULT_KEY, GatePolicy, GatePolicyFile
from robustops.io import load_yaml
from robustops.monitoring.config import MonitorConfig
from robustops.schema import StrictModel
from robustops.serving.config import ServeConfig
from robustops.threats import ThreatCatalog, ThreatModel, validation_error_to_spec_error
from robustops.training.recipe import Recipe
from robustops.trust import REF_PATTERN, check_ref

__all__ = [
    "AttackSpec",
    "DataSpec",
    "EvaluationSpec",
    "HuggingFaceSpec",
    "ModelSpec",
    "PipelineSpec",
    "ThreatSpec",
    "TrainSpec",
    "load_spec",
]


class DataSpec(StrictModel):
    """Which data and how to split it: an embedded set by ``name`` (images and tables,
    :data:`DATASETS`: ``mnist_subset``, ``digits``, ``breast_cancer``; texts,
    :data:`TEXT_DATASETS`: ``sms_spam``), or the user's own data in ``source`` (see
    :mod:`robustops.data.sources`: ``image-folder``, ``arrays``, ``image-manifest``, ``csv``,
    ``parquet``, ``text-csv``, ``jsonl``, ``hf-saved``), then ``name`` is free: it labels the
    data in results (default: the source's kind)."""

    source: DataSource | None = None
    name: str | None = Field(
        default=None,
        description="an embedded data set (default mnist_subset), or with `source` a label for "
        "the user's data",
    )
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    max_text_chars: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="text data: the longest text accepted, in characters; a longer one is "
        "refused with this cap in the message (attack cost grows with text length)",
    )
    extra_train: list[ExtraTrainData] = Field(
        default_factory=list,
        description="extra labelled samples appended to the training split only (e.g. a "
        "reviewed data set from `robustops review dataset`): [{path: .npz or .jsonl, sha256}]",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | None, info: ValidationInfo) -> str | None:
        # Only without a source (an invalid source is reported on its own, not here).
        embedded = "source" in info.data and info.data["source"] is None
        if embedded and name is not None and name not in DATASETS and name not in TEXT_DATASETS:
            known = sorted([*DATASETS, *TEXT_DATASETS])
            raise ValueError(f"unknown data set {name!r}; available: {known} (or give a `source`)")
        return name

    @model_validator(mode="after")
    def _default_name(self) -> DataSpec:
        if self.name is None:
            self.name = self.source.kind if self.source is not None else "mnist_subset"
        return self

    @property
    def label(self) -> str:
        """The data's name in results: the embedded set's name, or the user's label."""
        assert self.name is not None  # set by the validator
        return self.name

    @property
    def modality(self) -> Literal["tensor", "text"]:
        """``"text"`` for text data, ``"tensor"`` for images and tables."""
        if self.source is not None:
            return self.source.modality
        return "text" if self.name in TEXT_DATASETS else "tensor"


class NormalizeSpec(StrictModel):
    """Per-channel input normalisation the model expects, ``(x - mean) / std``: the built model
    is wrapped in :class:`robustops.models.Normalized`, so data, attacks and threat budgets stay
    in pixel space [0, 1]. One value per channel (or one for all)."""

    mean: list[float] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}; give one per channel"
            )
        return self


class HuggingFaceSpec(StrictModel):
    """A Hugging Face sequence-classification model (``model.huggingface``): a local
    ``save_pretrained`` directory with ``config.json``, ``*.safetensors`` weights and the
    tokenizer's files. Loaded with ``local_files_only`` and ``trust_remote_code=False``; a
    directory holding any pickle file is refused (see :mod:`robustops.text.hf`)."""

    path: Path = Field(
        description="the model directory (relative to the spec): evaluated when model.weights "
        "is not set, and the starting point of fine-tuning"
    )
    max_length: int = Field(
        default=128, ge=1, le=65_536, description="tokens per text; longer texts are truncated"
    )
    batch_size: int = Field(default=64, ge=1, description="texts per forward pass")


class ModelSpec(StrictModel):
    """The model: a factory ``module:callable`` with keyword arguments and optional safetensors
    weights, or a Hugging Face model directory (``huggingface``; text data only). For a Hugging
    Face model, ``weights`` names a fine-tuned directory (what ``robustops train`` writes to
    ``train.out``) and ``sha256`` pins the content fingerprint of the evaluated directory.
    ``normalize``: the model's own input normalisation (tensor data only; the weights file holds
    the inner model's weights)."""

    factory: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    huggingface: HuggingFaceSpec | None = None
    weights: Path | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    normalize: NormalizeSpec | None = None

    @field_validator("weights")
    @classmethod
    def _safetensors_only(cls, v: Path | None) -> Path | None:
        if v is not None and v.suffix not in (".safetensors", ""):
            raise ValueError(
                "weights must be a .safetensors file, or a folder for a Hugging Face model "
                "(pickle-based formats are refused)"
            )
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if (self.factory is None) == (self.huggingface is None):
            raise ValueError("give exactly one of factory and huggingface")
        if self.huggingface is not None and self.kwargs:
            raise ValueError("kwargs are for a factory; a huggingface model takes none")
        return self

    def errors(self, train_out: Path | None) -> list[tuple[str, str]]:
        """``(field path, message)`` for weights and training output that do not fit the model's
        kind: files (``.safetensors``) for a factory, folders for a Hugging Face model."""
        errors: list[tuple[str, str]] = []
        hf = self.huggingface is not None
        want = "a folder (no suffix)" if hf else "a .safetensors file"
        for field, p in (("model.weights", self.weights), ("train.out", train_out)):
            if p is not None and (p.suffix == ".safetensors") == hf:
                errors.append((field, f"must name {want} for this model"))
        return errors

    def with_paths(self, fix: Callable[[Path | None], Path | None]) -> ModelSpec:
        """This section with ``weights`` and ``huggingface.path`` passed through ``fix``."""
        update: dict[str, Any] = {"weights": fix(self.weights)}
        if self.huggingface is not None:
            path = fix(self.huggingface.path)
            update["huggingface"] = self.huggingface.model_copy(update={"path": path})
        return self.model_copy(update=update)


class TrainSpec(Recipe):
    """The ``train:`` section: a training recipe (see :class:`robustops.training.Recipe`: epochs,
    batch_size, lr, weight_decay, objective, threats, curriculum, schedule, optimizer, awp,
    validation, early_stopping, guard, …) plus where its files go.

    Attributes:
        out: the final weights (safetensors; a JSON sidecar ``<out>.json`` is written next to it).
        checkpoint_dir: per-epoch checkpoints for resuming; default ``<out>.ckpt/``.
        metrics: per-epoch metrics, JSON lines; default ``<out>.metrics.jsonl``.
        keep_checkpoints: epoch checkpoints kept (older ones are deleted).
    """

    out: Path
    checkpoint_dir: Path | None = None
    metrics: Path | None = None
    keep_checkpoints: int = Field(default=2, ge=1)

    @field_validator("out")
    @classmethod
    def _safetensors_out(cls, v: Path) -> Path:
        if v.suffix not in (".safetensors", ""):
            raise ValueError(
                "out must name a .safetensors file (a folder for a Hugging Face model)"
            )
        return v

    def checkpoint_path(self) -> Path:
        """``checkpoint_dir``, or ``<out>.ckpt`` next to the weights."""
        return self.checkpoint_dir or self.out.with_name(self.out.name + ".ckpt")

    def metrics_path(self) -> Path:
        """``metrics``, or ``<out>.metrics.jsonl`` next to the weights."""
        return self.metrics or self.out.with_name(self.out.name + ".metrics.jsonl")


class ThreatSpec(ThreatModel):
    """A threat (the fields and checks of :class:`robustops.threats.ThreatModel`) and the
    attacks that exercise it."""

    attacks: list[AttackSpec] = Field(min_length=1)

    def threat(self) -> ThreatModel:
        """The threat model alone."""
        return ThreatModel.model_validate(self.model_dump(exclude={"attacks"}))


# The attack the temperature fit uses by default, per family of the threat (ball threats pick by
# knowledge below): the cheapest one that makes confident mistakes within the budget.
_FAMILY_CALIBRATION_ATTACK: dict[str, dict[str, Any]] = {
    "word-edits": {"name": "char-edit"},
    "patch": {"name": "occlusion"},
    "spatial": {"name": "spatial-grid"},
    "corruption": {"name": "gaussian-noise"},
}


def _default_calibration_attack(threat: ThreatModel) -> AttackSpec:
    """For ``linf``/``l2`` threats an attack the threat's knowledge allows: PGD with 10 steps
    (white-box), Square with 200 queries (score-based), 20 uniform noise draws
    (decision-based); character edits for text threats, occlusion for patches, the spatial grid
    search, Gaussian noise for corruptions."""
    if threat.norm in _FAMILY_CALIBRATION_ATTACK:
        return AttackSpec.model_validate(_FAMILY_CALIBRATION_ATTACK[threat.norm])
    by_knowledge: dict[str, dict[str, Any]] = {
        "white-box": {"name": "pgd", "steps": 10},
        "score-based": {"name": "square", "queries": 200},
        "decision-based": {"name": "uniform_noise", "draws": 20},
    }
    return AttackSpec.model_validate(by_knowledge[threat.knowledge])


class CalibrationSpec(StrictModel):
    """Calibration under attack (on by default): ECE, Brier and NLL on clean and attacked inputs,
    and a temperature fitted on held-out test samples that are never evaluated.

    Attributes:
        enabled: report the figures at all.
        n_bins: bins of the ECE and the reliability diagrams.
        fit_on: held-out inputs for the temperature: ``clean``, ``adversarial``, ``mix`` (both),
            or ``none`` (no temperature).
        n_samples: held-out samples: the test samples right after the evaluated ones (default:
            all of the rest).
        threat: the threat whose budget the adversarial held-out inputs use (default: the first).
        attack: the attack that makes them (default: for tensor threats one the threat's
            knowledge allows: PGD, 10 steps, which like the suite's attacks stops on a sample as
            soon as it is misclassified (``early_stop: false`` makes confident mistakes
            instead), Square with 200 queries for score-based threats, 20 uniform noise draws
            for decision-based ones; for text threats ``char-edit``). Not built, hence not
            checked against the threat, when calibration is disabled.
    """

    enabled: bool = True
    n_bins: int = Field(default=15, ge=1)
    fit_on: Literal["none", "clean", "adversarial", "mix"] = "mix"
    n_samples: int | None = Field(default=None, ge=1)
    threat: str | None = None
    attack: AttackSpec | None = None


class AuditSpec(StrictModel):
    """The gradient-masking audit (see :mod:`robustops.evaluation.masking`), per threat.

    Attributes:
        threats: names of the threats to audit (default: all).
        n_samples: the first test samples audited.
        steps, square_queries, noise_draws, eot_samples: budgets of the audit's attacks.
    """

    threats: list[str] | None = None
    n_samples: int = Field(default=100, ge=1)
    steps: int = Field(default=20, ge=1)
    square_queries: int = Field(default=500, ge=1)
    noise_draws: int = Field(default=100, ge=1)
    eot_samples: int = Field(default=10, ge=1)


class CertificationSpec(StrictModel):
    """Randomized-smoothing certification (Cohen et al. 2019) of the spec's model.

    Attributes:
        sigma: standard deviation of the Gaussian noise, in input units.
        n0, n: noisy samples to pick the class and to estimate its probability.
        alpha: failure probability of each certificate.
        batch_size: noisy samples per forward pass.
        n_samples: test samples certified (default: the evaluation's ``n_samples``).
        radii: L2 radii at which certified accuracy is reported.
    """

    sigma: float = Field(gt=0)
    n0: int = Field(default=100, ge=1)
    n: int = Field(default=10_000, ge=1)
    alpha: float = Field(default=0.001, gt=0, lt=1)
    batch_size: int = Field(default=1000, ge=1)
    n_samples: int | None = Field(default=None, ge=1)
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])

    @field_validator("radii")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if not v or any(r < 0 for r in v):
            raise ValueError("radii must be a non-empty list of numbers >= 0")
        return sorted(v)


class TierSpec(StrictModel):
    """A budget tier of the suite, e.g. ``quick`` for pull requests and ``full`` for nightly:
    what it keeps of the evaluation section (everything when a field is null).

    Attributes:
        n_samples: evaluated test samples.
        threats: names of the threats kept.
        attacks: names of the attacks kept in every threat (order unchanged); a threat left
            without attacks is an error.
        audit, certification: keep those sections.
    """

    n_samples: int | None = Field(default=None, ge=1)
    threats: list[str] | None = None
    attacks: list[str] | None = None
    audit: bool = True
    certification: bool = True


class EvaluationSpec(StrictModel):
    """The suite: threats with their attacks, on ``n_samples`` test samples (all when null), and
    the optional calibration, gradient-masking audit and certification. ``eot_samples``: see
    :func:`robustops.evaluation.run_suite` (a stochastic model is evaluated on its mean logits
    and attacked with EOT)."""

    n_samples: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=500, ge=1)
    eot_samples: int = Field(
        default=10,
        ge=1,
        description="for a model found stochastic (two passes differ): forward passes averaged "
        "per prediction, and EOT samples for the gradient attacks left at one pass (1: off)",
    )
    threats: list[ThreatSpec] = Field(default_factory=list)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    audit: AuditSpec | None = None
    certification: CertificationSpec | None = None
    tiers: dict[str, TierSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationSpec:
        names = [t.name for t in self.threats]
        if not names and self.certification is None:
            raise ValueError("give at least one threat (or a certification section)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"threat names must be unique; repeated: {dup}")
        return self

    def reference_errors(self) -> list[tuple[str, str]]:
        """Names that must match a threat but do not, as ``(field path, message)``."""
        names = [t.name for t in self.threats]
        errors = []
        if self.calibration.threat is not None and self.calibration.threat not in names:
            errors.append(
                (
                    "evaluation.calibration.threat",
                    f"{self.calibration.threat!r} is not one of the threats {names}",
                )
            )
        for tier, ts in self.tiers.items():
            for i, name in enumerate(ts.threats or []):
                if name not in names:
                    errors.append(
                        (
                            f"evaluation.tiers.{tier}.threats.{i}",
                            f"{name!r} is not one of the threats {names}",
                        )
                    )
        for i, name in enumerate(self.audit.threats or [] if self.audit else []):
            if name not in names:
                errors.append(
                    (f"evaluation.audit.threats.{i}", f"{name!r} is not one of the threats {names}")
                )
        return errors

    def calibration_threat(self) -> int | None:
        """Index of the threat whose budget the adversarial calibration inputs use."""
        if not self.threats:
            return None
        names = [t.name for t in self.threats]
        return names.index(self.calibration.threat) if self.calibration.threat else 0


class RegistrySpec(StrictModel):
    """Where ``train`` and ``evaluate`` record what they produce: with this section, ``train``
    registers the weights it writes and ``evaluate`` attaches its result to them, as
    ``--register`` does (see ``robustops registry``)."""

    home: str | None = Field(
        default=None,
        description="registry folder; default $ROBUSTOPS_REGISTRY, else ./registry",
    )
    model: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="the model's name in the registry; default the spec's name",
    )


class PipelineSpec(StrictModel):
    """The whole pipeline spec."""

    name: str = Field(min_length=1)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec
    catalog: ThreatCatalog | None = None
    train: TrainSpec | None = None
    evaluation: EvaluationSpec | None = None
    gate: GatePolicyFile | None = None
    registry: RegistrySpec | None = None
    serve: ServeConfig | None = None
    monitor: MonitorConfig | None = None

    def with_tier(self, tier: str) -> PipelineSpec:
        """This spec with the evaluation cut down to budget tier ``tier`` (see :class:`TierSpec`)."""
        ev = self._evaluation()
        if tier not in ev.tiers:
            raise SpecError.single(
                "evaluation.tiers", f"no tier {tier!r}; the spec defines {sorted(ev.tiers)}"
            )
        t = ev.tiers[tier]
        threats = []
        for ts in ev.threats:
            if t.threats is not None and ts.name not in t.threats:
                continue
            attacks = [a for a in ts.attacks if t.attacks is None or a.name in t.attacks]
            if not attacks:
                raise SpecError.single(
                    f"evaluation.tiers.{tier}.attacks",
                    f"keeps no attack of threat {ts.name!r} (it has {[a.name for a in ts.attacks]})",
                )
            threats.append(ts.model_copy(update={"attacks": attacks}))
        kept = {x.name for x in threats}
        audit = ev.audit if t.audit else None
        if audit is not None and audit.threats is not None:
            audit = audit.model_copy(update={"threats": [n for n in audit.threats if n in kept]})
        calibration = ev.calibration
        if calibration.threat is not None and calibration.threat not in kept:
            calibration = calibration.model_copy(update={"threat": None})
        new_ev = ev.model_copy(
            update={
                "n_samples": t.n_samples if t.n_samples is not None else ev.n_samples,
                "threats": threats,
                "audit": audit,
                "certification": ev.certification if t.certification else None,
                "calibration": calibration,
            }
        )
        return self.model_copy(update={"evaluation": new_ev})

    def catalog_errors(self) -> list[tuple[str, str]]:
        """Catalog entries that name an evaluation threat the spec does not have."""
        if self.catalog is None:
            return []
        names = [t.name for t in self.evaluation.threats] if self.evaluation else []
        return [
            (
                f"catalog.entries.{i}.exercised_by.{j}",
                f"{name!r} is not one of the evaluation threats {names}",
            )
            for i, e in enumerate(self.catalog.entries)
            for j, name in enumerate(e.exercised_by)
            if name not in names
        ]

    def modality_errors(self) -> list[tuple[str, str]]:
        """Sections that do not fit the data's modality or the model (text data: ``word-edits``
        threats, no gradient-masking audit or certification, a text training recipe; images and
        tables: no ``word-edits`` threats or text augmentation, no Hugging Face model; weights
        and ``train.out`` a file or a folder as the model's kind needs)."""
        text = self.data.modality == "text"
        errors = self.model.errors(self.train.out if self.train else None)
        if text and self.model.normalize is not None:
            errors.append(
                ("model.normalize", "mean/std normalisation is for image and table inputs")
            )
        if self.model.huggingface is not None and not text:
            errors.append(
                (
                    "model.huggingface",
                    f"a Hugging Face sequence-classification model takes texts, not data set "
                    f"{self.data.name!r}",
                )
            )
        ev = self.evaluation
        for i, ts in enumerate(ev.threats if ev else []):
            if (ts.norm == "word-edits") != text:
                want = "word-edits" if text else "linf, l2, patch, spatial or corruption"
                errors.append(
                    (
                        f"evaluation.threats.{i}.norm",
                        f"{ts.norm!r} does not fit data set {self.data.name!r}: use {want}",
                    )
                )
        if text and ev is not None:
            if ev.audit is not None:
                errors.append(
                    (
                        "evaluation.audit",
                        "the gradient-masking audit compares gradient attacks with black-box "
                        "ones; text models are attacked black-box only, so there is nothing "
                        "to audit",
                    )
                )
            if ev.certification is not None:
                errors.append(
                    (
                        "evaluation.certification",
                        "randomized smoothing certifies L2 balls of tensor inputs, not texts",
                    )
                )
        if self.train is not None:
            if text:
                from robustops.training.text import text_recipe_errors

                errors += text_recipe_errors(self.train)
                if self.train.augment is not None:
                    try:
                        self.train.augment.build_attacks(self.seed)
                    except SpecError as exc:
                        errors += [(f"train.{p}", m) for p, m in exc.errors]
            elif self.train.augment is not None:
                errors.append(
                    (
                        "train.augment",
                        "adversarial data augmentation is for text data; images and tables "
                        "harden with an adversarial objective (pgd-at, trades, fast)",
                    )
                )
        return errors

    def gate_errors(self) -> list[tuple[str, str]]:
        """Gate rules (top level and every tier) keyed by a threat the evaluation does not
        define."""
        if self.gate is None:
            return []
        names = [t.name for t in self.evaluation.threats] if self.evaluation else []
        errors = []
        policies: list[tuple[str, GatePolicy]] = [("gate", self.gate)]
        policies += [(f"gate.tiers.{k}", v) for k, v in self.gate.tiers.items()]
        for prefix, policy in policies:
            for rule in ("min_robust_accuracy", "max_attack_success_rate", "max_attacked_ece"):
                for threat in getattr(policy, rule):
                    if threat != DEFAULT_KEY and threat not in names:
                        errors.append(
                            (
                                f"{prefix}.{rule}.{threat}",
                                f"{threat!r} is not one of the evaluation threats {names}",
                            )
                        )
        return errors

    def code_refs(self) -> list[tuple[str, str]]:
        """Every ``module:callable`` this spec would make RobustOps import, as ``(field path,
        reference)``: ``model.factory`` and any ``factory`` or ``preprocess`` string inside
        ``model.kwargs`` (ensemble members, text preprocessing), however deep. Imports nothing."""
        refs = [("model.factory", self.model.factory)] if self.model.factory else []

        def walk(value: Any, path: str) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    sub = f"{path}.{k}"
                    if k in _CODE_KEYS and isinstance(v, str) and REF_PATTERN.match(v):
                        refs.append((sub, v))
                    else:
                        walk(v, sub)
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    walk(v, f"{path}.{i}")

        walk(self.model.kwargs, "model.kwargs")
        return refs

    def untrusted_code(self) -> list[tuple[str, str]]:
        """``(field path, message)`` for every :meth:`code_refs` entry the current trust policy
        refuses (see :mod:`robustops.trust`); imports nothing."""
        errors = []
        for field, ref in self.code_refs():
            try:
                check_ref(ref, field)
            except SpecError as exc:
                errors += exc.errors
        return errors

    def resolved_device(self) -> str:
        """``"cuda"`` when asked for or when ``auto`` and CUDA is available, else ``"cpu"``."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SpecError.single(
                "device", "cuda was asked for but no CUDA GPU is available; use cpu or auto"
            )
        return self.device

    def build_threats(self, seed: int | None = None) -> list[SuiteThreat]:
        """Instantiate the suite's attacks; errors name ``evaluation.threats.I.attacks.J.<param>``."""
        ev = self._evaluation()
        base_seed = self.seed if seed is None else seed
        out = []
        for i, ts in enumerate(ev.threats):
            threat = ts.threat()
            attacks = [
                _build_attack(a, threat, f"evaluation.threats.{i}.attacks.{j}", base_seed)
                for j, a in enumerate(ts.attacks)
            ]
            out.append(SuiteThreat(threat, attacks))
        return out

    def build_calibration_attack(self, seed: int | None = None) -> Attack | None:
        """The attack that makes the adversarial held-out inputs of the temperature fit, or
        ``None`` when the fit uses clean inputs only (or there is no threat)."""
        ev = self._evaluation()
        idx = ev.calibration_threat()
        if idx is None or not ev.calibration.enabled or ev.calibration.fit_on in ("none", "clean"):
            return None
        threat = ev.threats[idx].threat()
        return _build_attack(
            ev.calibration.attack or _default_calibration_attack(threat),
            threat,
            "evaluation.calibration.attack",
            self.seed if seed is None else seed,
        )

    def _evaluation(self) -> EvaluationSpec:
        if self.evaluation is None:
            raise SpecError.single("evaluation", "the spec has no evaluation section")
        return self.evaluation


_CODE_KEYS = frozenset({"factory", "preprocess"})


def _build_attack(spec: AttackSpec, threat: ThreatModel, prefix: str, seed: int) -> Attack:
    """``build_attack`` with errors renamed to ``<prefix>.<param>``; ``seed`` unless given."""
    params = spec.params()
    params.setdefault("seed", seed)
    try:
        return build_attack(spec.name, threat, **params)
    except SpecError as exc:
        raise SpecError(
            [(f"{prefix}.{p}" if p != "<root>" else prefix, m) for p, m in exc.errors]
        ) from None
    except (TypeError, ValueError) as exc:
        raise SpecError.single(prefix, shorten(str(exc))) from None


def _resolve_paths(spec: PipelineSpec, base: Path) -> PipelineSpec:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    model = spec.model.with_paths(fix)
    train = (
        spec.train.model_copy(
            update={
                "out": fix(spec.train.out),
                "checkpoint_dir": fix(spec.train.checkpoint_dir),
                "metrics": fix(spec.train.metrics),
            }
        )
        if spec.train
        else None
    )
    data = spec.data
    if data.source is not None:
        data = data.model_copy(update={"source": data.source.resolved(base)})
    if data.extra_train:
        data = data.model_copy(update={"extra_train": [e.resolved(base) for e in data.extra_train]})
    return spec.model_copy(update={"model": model, "train": train, "data": data})


def load_spec(path: str | Path) -> PipelineSpec:
    """Read, validate and resolve a YAML pipeline spec.

    Raises :class:`SpecError` listing every invalid field with its dotted path; attack names and
    hyper-parameters are checked too.
    """
    path = Path(path)
    raw = load_yaml(path, "spec")
    if not isinstance(raw, dict):
        raise SpecError([("<root>", "the spec must be a mapping")], source=str(path))
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error_to_spec_error(exc, source=str(path)) from None
    spec = _resolve_paths(spec, path.parent)
    refs = spec.catalog_errors() + spec.modality_errors() + spec.gate_errors()
    if spec.evaluation is not None:
        refs += spec.evaluation.reference_errors()
    if refs:
        raise SpecError(refs, source=str(path))
    if spec.evaluation is not None:
        try:
            spec.build_threats()
            spec.build_calibration_attack()
        except SpecError as exc:
            raise SpecError(exc.errors, source=str(path)) from None
    return spec
