"""The result schema: one suite run, self-describing (seeds, versions, hashes) and versioned.

``SCHEMA_VERSION`` follows semantic versioning: a new optional field is a minor bump, a renamed
or removed field a major one. ``SuiteResult.model_json_schema()`` gives the JSON Schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from robustops.defenses.smoothing import CertificationResult
from robustops.errors import SpecError
from robustops.evaluation.masking import AuditResult
from robustops.evaluation.metrics import CalibrationMetrics, TemperatureFit
from robustops.io import atomic_write_text
from robustops.threats import ThreatModel, validation_error_to_spec_error

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialExample",
    "AttackFigures",
    "ExampleEdit",
    "LatencyFigures",
    "SamplesRecord",
    "StochasticRecord",
    "SuiteCalibration",
    "SuiteResult",
    "ThreatCalibration",
    "ThreatResult",
]

SCHEMA_VERSION = "1.2.0"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttackFigures(_Strict):
    """One attack's share of a threat's evaluation.

    Attacks run in order on the samples still robust, so ``n_attacked`` shrinks down the list.
    """

    name: str
    params: dict[str, Any]
    n_attacked: int = Field(description="samples this attack ran on (still robust before it)")
    n_broken: int = Field(description="samples this attack made adversarial")
    success_rate: float = Field(description="n_broken / n_attacked (0 when nothing was attacked)")
    mean_queries: float = Field(description="mean model queries per attacked sample")
    total_queries: int
    median_perturbation: float | None = Field(
        description="median norm of successful perturbations (word-edits threats: edited share "
        "of the words)"
    )
    wall_time_s: float
    mean_queries_per_success: float | None = Field(
        default=None,
        description="mean queries this attack spent on the samples it broke (schema >= 1.2)",
    )
    mean_edits: float | None = Field(
        default=None,
        description="word-edits threats: mean words edited per broken sample (schema >= 1.2)",
    )


class ExampleEdit(_Strict):
    """One edited word of a text example (schema >= 1.2)."""

    position: int = Field(description="index of the word in the whitespace split of the text")
    kind: str = Field(description="the transformation, e.g. swap, homoglyph, synonym")
    before: str
    after: str
    score_change: float = Field(
        description="change of the attacker's objective (probability margin toward its goal) "
        "when the attack applied this edit"
    )
    contribution: float = Field(
        description="how much the objective drops when only this edit is reverted in the "
        "final adversarial text (measured by the suite)"
    )


class AdversarialExample(_Strict):
    """One broken sample kept for reports: what changed and why it mattered.

    Tensor inputs fill ``shape``, ``clean``, ``adversarial`` and ``attribution``; texts fill
    ``clean_text``, ``adversarial_text`` and ``edits`` (and leave the tensor fields empty).
    """

    index: int = Field(description="position among the evaluated samples")
    label: int
    target: int | None = Field(default=None, description="target class (targeted threats)")
    attack: str = Field(description="the attack that broke it")
    shape: list[int] = Field(
        default_factory=list, description="one input's shape, e.g. [1, 28, 28] (tensors)"
    )
    clean: list[float] = Field(default_factory=list, description="the input, flattened (row-major)")
    adversarial: list[float] = Field(
        default_factory=list, description="the adversarial input, flattened"
    )
    attribution: list[float] = Field(
        default_factory=list,
        description="per feature: perturbation × gradient of the logit margin (adversarial "
        "class − label) at the adversarial input, i.e. its first-order share of the flip",
    )
    clean_text: str | None = Field(default=None, description="texts: the original text (>= 1.2)")
    adversarial_text: str | None = Field(
        default=None, description="texts: the adversarial text (>= 1.2)"
    )
    edits: list[ExampleEdit] = Field(
        default_factory=list, description="texts: the edits, in the order applied (>= 1.2)"
    )
    clean_prediction: int
    clean_confidence: float
    adversarial_prediction: int
    adversarial_confidence: float
    perturbation_norm: float = Field(
        description="in the threat's norm (word-edits: edited share of the words)"
    )


class ThreatCalibration(_Strict):
    """Calibration on the attacked inputs of one threat: per sample its worst case (the input
    that broke it; else the attempt with the highest loss; else, for samples misclassified
    clean and so never attacked, the clean input)."""

    attacked: CalibrationMetrics
    attacked_scaled: CalibrationMetrics | None = Field(
        default=None,
        description="the same after temperature scaling, when a temperature was fitted",
    )


class SuiteCalibration(_Strict):
    """Calibration on the clean inputs, and the temperature fitted on held-out data if any."""

    n_bins: int = Field(description="bins of every ECE and reliability diagram of the run")
    clean: CalibrationMetrics
    clean_scaled: CalibrationMetrics | None = None
    temperature: TemperatureFit | None = Field(
        default=None,
        description="how the temperature was fitted (held-out, never the evaluated samples)",
    )


class ThreatResult(_Strict):
    """Figures for one threat: a sample is robust only if it was classified correctly and every
    attack of the threat failed on it (per-sample worst case)."""

    name: str
    threat: ThreatModel
    robust_accuracy: float = Field(description="robust samples / evaluated samples, in [0, 1]")
    attack_success_rate: float = Field(
        description="share of the correctly classified samples attacked that some attack broke, "
        "in [0, 1]"
    )
    n_robust: int
    n_attacked: int | None = Field(
        default=None,
        description="correctly classified samples the threat attacked (the denominator of "
        "attack_success_rate; fewer than the correct ones when a fixed target_class exempts "
        "its own samples) (schema >= 1.2)",
    )
    attacks: list[AttackFigures]
    total_queries: int
    wall_time_s: float
    robust: list[bool] = Field(description="per sample: still correct after every attack")
    broken_by: list[str | None] = Field(description="per sample: first attack that broke it")
    queries: list[int] = Field(description="per sample: queries spent by all attacks")
    targets: list[int] | None = Field(
        default=None, description="per sample target (targeted threats)"
    )
    calibration: ThreatCalibration | None = Field(
        default=None, description="ECE, Brier, NLL on the attacked inputs (schema >= 1.1)"
    )
    examples: list[AdversarialExample] = Field(
        default_factory=list, description="a few broken samples for reports (schema >= 1.1)"
    )


class SamplesRecord(_Strict):
    """Which samples were evaluated and how the clean model did on them."""

    split: str = "test"
    indices: list[int]
    labels: list[int]
    clean_correct: list[bool]


class LatencyFigures(_Strict):
    """How fast the model answers: single-input calls (what a serving endpoint sees per request)
    and batched throughput at the suite's batch size. Wall-clock, on the run's device."""

    n_calls: int = Field(description="single-input forward calls timed (after warm-up)")
    p50_ms: float = Field(description="median single-input latency, milliseconds")
    p95_ms: float = Field(description="95th percentile single-input latency, milliseconds")
    p99_ms: float = Field(description="99th percentile single-input latency, milliseconds")
    mean_ms: float = Field(description="mean single-input latency, milliseconds")
    batch_size: int = Field(description="batch size of the throughput measurement")
    throughput_per_s: float = Field(description="samples per second in batches of batch_size")


class StochasticRecord(_Strict):
    """Whether the (tensor) model answered differently on two passes over the same inputs, and
    how the suite adapted (schema >= 1.2)."""

    detected: bool = Field(description="two forward passes on the first batch differed")
    max_logit_gap: float = Field(description="largest logit difference between those passes")
    eot_samples: int = Field(
        description="forward passes averaged per prediction of the suite (1: a single pass)"
    )
    adapted_attacks: list[str] = Field(
        default_factory=list,
        description="attacks run with that many EOT samples per gradient and no early stop",
    )


class SuiteResult(_Strict):
    """One run of the evaluation suite on one model and data set."""

    schema_version: str = SCHEMA_VERSION
    name: str
    created_at: str = Field(description="UTC time the run finished, ISO 8601")
    seed: int
    device: str
    n_samples: int
    clean_accuracy: float
    threats: list[ThreatResult]
    data: dict[str, Any] = Field(description="data set name, fingerprint and split")
    model: dict[str, Any] = Field(description="factory, weights path, file and content sha256")
    environment: dict[str, str] = Field(description="package versions and platform")
    samples: SamplesRecord
    wall_time_s: float
    calibration: SuiteCalibration | None = Field(
        default=None, description="clean calibration and the fitted temperature (schema >= 1.1)"
    )
    tier: str | None = Field(
        default=None, description="the spec's budget tier this run used (null: the whole suite)"
    )
    catalog_sha256: str | None = Field(
        default=None, description="version (content hash) of the spec's threat catalog, if any"
    )
    latency: LatencyFigures | None = Field(
        default=None, description="single-input latency and batched throughput (schema >= 1.1)"
    )
    audit: list[AuditResult] = Field(
        default_factory=list, description="gradient-masking audit per audited threat (>= 1.1)"
    )
    certification: CertificationResult | None = Field(
        default=None, description="randomized-smoothing certification (schema >= 1.1)"
    )
    stochastic: StochasticRecord | None = Field(
        default=None,
        description="tensor models: stochasticity check and EOT adaptation (schema >= 1.2)",
    )

    def audit_verdict(self) -> str | None:
        """Worst verdict over the audited threats (``fail`` > ``warn`` > ``pass``), or ``None``."""
        order = {"pass": 0, "warn": 1, "fail": 2}
        verdicts = [a.verdict for a in self.audit]
        return max(verdicts, key=order.__getitem__) if verdicts else None

    def threat(self, name: str) -> ThreatResult:
        """The threat result called ``name``."""
        for t in self.threats:
            if t.name == name:
                return t
        raise KeyError(name)

    def summary(self) -> dict[str, float]:
        """``{"clean": acc, threat name: robust accuracy, ...}``."""
        return {"clean": self.clean_accuracy, **{t.name: t.robust_accuracy for t in self.threats}}

    def save(self, path: str | Path) -> Path:
        """Write as indented JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SuiteResult:
        """Read and validate a result file; :class:`SpecError` with field paths if invalid."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError.single("result", f"cannot read {path}: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error_to_spec_error(exc, source=str(path)) from None
