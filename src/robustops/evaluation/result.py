"""The result schema: one suite run, self-describing (seeds, versions, hashes) and versioned.

``SCHEMA_VERSION`` follows semantic versioning: a new optional field is a minor bump, a renamed
or removed field a major one. ``SuiteResult.model_json_schema()`` gives the JSON Schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from robustops.errors import SpecError
from robustops.evaluation.certification import CertificationResult
from robustops.evaluation.masking import AuditResult
from robustops.evaluation.metrics import CalibrationMetrics, TemperatureFit
from robustops.io import atomic_write_text, read_text_file
from robustops.schema import StrictModel
from robustops.threats import ThreatModel, validation_error_to_spec_error

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialExample",
    "AttackFigures",
    "ExampleEdit",
    "LatencyFigures",
    "SamplesRecord",
    "ShardRecord",
    "StochasticRecord",
    "SuiteCalibration",
    "SuiteResult",
    "ThreatCalibration",
    "ThreatResult",
    "TopologyRecord",
]

SCHEMA_VERSION = "1.6.0"

MAX_RESULT_BYTES = 512 * 2**20
"""Largest result file read (bytes): far above any suite's output, well below what a crafted
file could cost in memory once parsed."""

_TOLERANCE = 1e-9
"""How far a stored share may be from the one recomputed from the per-sample record (JSON
floats round-trip exactly; this only absorbs a different order of the division)."""


class AttackFigures(StrictModel):
    """One attack's share of a threat's evaluation.

    Attacks run in order on the samples still robust, so ``n_attacked`` shrinks down the list;
    in an independent threat (corruptions) every attack runs on every attacked sample and
    ``broken`` lists the samples it broke.
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
    broken: list[int] | None = Field(
        default=None,
        description="independent threats: the positions of the samples this attack broke "
        "(schema >= 1.4)",
    )


class ExampleEdit(StrictModel):
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


class AdversarialExample(StrictModel):
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


class ThreatCalibration(StrictModel):
    """Calibration on the attacked inputs of one threat: per sample its worst case (the input
    that broke it; else the attempt with the highest loss; else, for samples misclassified
    clean and so never attacked, the clean input)."""

    attacked: CalibrationMetrics
    attacked_scaled: CalibrationMetrics | None = Field(
        default=None,
        description="the same after temperature scaling, when a temperature was fitted",
    )


class SuiteCalibration(StrictModel):
    """Calibration on the clean inputs, and the temperature fitted on held-out data if any."""

    n_bins: int = Field(description="bins of every ECE and reliability diagram of the run")
    clean: CalibrationMetrics
    clean_scaled: CalibrationMetrics | None = None
    temperature: TemperatureFit | None = Field(
        default=None,
        description="how the temperature was fitted (held-out, never the evaluated samples)",
    )


class ThreatResult(StrictModel):
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
    independent: bool = Field(
        default=False,
        description="every attack ran on every attacked sample (corruption threats), not on the "
        "samples the previous ones left robust (schema >= 1.4)",
    )

    def check_against(self, samples: SamplesRecord, index: int) -> list[str]:
        """Where this threat's figures disagree with its own per-sample record and the clean
        record ``samples`` (each a message naming the field under ``threats.<index>``)."""
        at = f"threats.{index} ({self.name!r})"
        n = len(samples.labels)
        out = [
            f"{at}.{name}: {len(values)} entries for {n} samples"
            for name, values in (
                ("robust", self.robust),
                ("broken_by", self.broken_by),
                ("queries", self.queries),
                ("targets", self.targets or [0] * n),
            )
            if len(values) != n
        ]
        if out:
            return out
        correct = samples.clean_correct
        fixed = self.threat.target_class
        attacked = [
            c and not (fixed is not None and lab == fixed)
            for c, lab in zip(correct, samples.labels, strict=True)
        ]
        broken = [c and not r for c, r in zip(correct, self.robust, strict=True)]
        n_robust, n_attacked, n_broken = sum(self.robust), sum(attacked), sum(broken)
        if any(r and not c for r, c in zip(self.robust, correct, strict=True)):
            out.append(f"{at}.robust: a sample misclassified when clean is counted robust")
        if any((b is not None) != k for b, k in zip(self.broken_by, broken, strict=True)):
            out.append(f"{at}.broken_by: does not name an attack exactly for the broken samples")
        out += _disagreements(
            at,
            [
                ("n_robust", self.n_robust, n_robust, f"{n_robust} robust in the record"),
                ("robust_accuracy", self.robust_accuracy, _share(n_robust, n), f"{n_robust}/{n}"),
                ("n_attacked", self.n_attacked, n_attacked, f"{n_attacked} attacked samples"),
                (
                    "attack_success_rate",
                    self.attack_success_rate,
                    _share(n_broken, n_attacked),
                    f"{n_broken}/{n_attacked}",
                ),
                ("total_queries", self.total_queries, sum(self.queries), "the per-sample sum"),
            ],
        )
        if self.independent:
            return out + self._independent_disagreements(at, attacked, broken)
        return out + self._attack_disagreements(at, n_attacked)

    def _independent_disagreements(
        self, at: str, attacked: list[bool], broken: list[bool]
    ) -> list[str]:
        """An independent threat's attacks against the record: each ran on every attacked
        sample and broke exactly the attacked samples it lists; together they broke the broken
        ones, each first named in ``broken_by`` by the first attack that lists it."""
        out: list[str] = []
        n_attacked = sum(attacked)
        first: dict[int, str] = {}
        for k, a in enumerate(self.attacks):
            where = f"{at}.attacks.{k} ({a.name!r})"
            hits = a.broken if a.broken is not None else []
            if a.broken is None or any(not 0 <= i < len(attacked) or not attacked[i] for i in hits):
                out.append(f"{where}.broken: not a list of attacked samples")
                continue
            for i in hits:
                first.setdefault(i, a.name)
            out += _disagreements(
                where,
                [
                    ("n_attacked", a.n_attacked, n_attacked, f"{n_attacked} attacked samples"),
                    ("n_broken", a.n_broken, len(set(hits)), f"{len(set(hits))} listed"),
                    (
                        "success_rate",
                        a.success_rate,
                        _share(a.n_broken, a.n_attacked),
                        f"{a.n_broken}/{a.n_attacked}",
                    ),
                ],
            )
        named = [first.get(i) for i in range(len(broken))]
        if named != list(self.broken_by) or any(
            (b is not None) != k for b, k in zip(named, broken, strict=True)
        ):
            out.append(f"{at}.broken_by: does not name the first attack listing each broken sample")
        return out

    def _attack_disagreements(self, at: str, n_attacked: int) -> list[str]:
        """Where each attack's figures disagree with the per-sample record: attacks run in
        order on the samples still robust, starting from the ``n_attacked`` attacked ones."""
        out: list[str] = []
        still = n_attacked
        for k, a in enumerate(self.attacks):
            by_name = sum(1 for b in self.broken_by if b == a.name)
            same_name = sum(f.n_broken for f in self.attacks if f.name == a.name)
            out += _disagreements(
                f"{at}.attacks.{k} ({a.name!r})",
                [
                    ("n_attacked", a.n_attacked, still, f"{still} still robust before it"),
                    (
                        "success_rate",
                        a.success_rate,
                        _share(a.n_broken, a.n_attacked),
                        f"{a.n_broken}/{a.n_attacked}",
                    ),
                    ("n_broken", same_name, by_name, f"{by_name} samples broken_by it"),
                ],
            )
            still -= a.n_broken
        return out


class SamplesRecord(StrictModel):
    """Which samples were evaluated and how the clean model did on them."""

    split: str = "test"
    indices: list[int]
    labels: list[int]
    clean_correct: list[bool]


class LatencyFigures(StrictModel):
    """How fast the model answers: single-input calls (what a serving endpoint sees per request)
    and batched throughput at the suite's batch size. Wall-clock, on the run's device."""

    n_calls: int = Field(description="single-input forward calls timed (after warm-up)")
    p50_ms: float = Field(description="median single-input latency, milliseconds")
    p95_ms: float = Field(description="95th percentile single-input latency, milliseconds")
    p99_ms: float = Field(description="99th percentile single-input latency, milliseconds")
    mean_ms: float = Field(description="mean single-input latency, milliseconds")
    batch_size: int = Field(description="batch size of the throughput measurement")
    throughput_per_s: float = Field(description="samples per second in batches of batch_size")


class StochasticRecord(StrictModel):
    """Whether the (tensor) model answered differently on two passes over the same inputs, and
    how the suite adapted (schema >= 1.2)."""

    detected: bool = Field(description="two forward passes on the first batch differed")
    max_logit_gap: float = Field(description="largest logit difference between those passes")
    eot_samples: int = Field(
        description="forward passes averaged per prediction of the suite (1: a single pass)"
    )
    adapted_attacks: list[str] = Field(
        default_factory=list,
        description="attacks run with that many EOT samples per query or gradient and no early "
        "stop",
    )
    unadapted_attacks: list[str] = Field(
        default_factory=list,
        description="attacks that ran on the stochastic model without EOT (they have no "
        "eot_samples parameter, or single passes were asked for): their failures may overstate "
        "robustness; the gate refuses them unless its policy allows (schema >= 1.3)",
    )


class ShardRecord(StrictModel):
    """One shard of a sharded run: the positions ``[start, stop)`` it evaluated, where, how long
    it took, and whether its checkpoint was reused (schema >= 1.5)."""

    index: int
    start: int = Field(description="first position of the shard among the evaluated samples")
    stop: int = Field(description="one past its last position")
    host: str = Field(description="host name of the worker that ran it")
    pid: int = Field(description="process id of that worker")
    node: str | None = Field(
        default=None,
        description="the cluster node that ran it: the Ray node id (executor 'ray') or "
        "torchrun's node rank, GROUP_RANK ('torchrun'); null for local processes and in "
        "files before schema 1.6 (several nodes may share one host name)",
    )
    wall_time_s: float = Field(description="the shard's suite wall time, seconds")
    resumed: bool = Field(
        default=False, description="read back from its checkpoint instead of being run again"
    )


class TopologyRecord(StrictModel):
    """How a sharded run was spread out (schema >= 1.5): every per-sample outcome is the
    single-process one; only wall times and the latency figures (measured by shard 0's worker)
    depend on the topology."""

    executor: str = Field(description="'inline', 'local' (processes), 'ray' or 'torchrun'")
    workers: int = Field(description="worker processes (Ray: tasks in flight; torchrun: ranks)")
    address: str | None = Field(
        default=None, description="Ray cluster address or torchrun master (null: this machine)"
    )
    shards: list[ShardRecord]
    merge_time_s: float = Field(description="time to merge the shards' outcomes, seconds")


def _share(k: int, n: int) -> float:
    return k / n if n else 0.0


def _disagreements(
    at: str, checks: list[tuple[str, float | int | None, float | int, str]]
) -> list[str]:
    """Messages for the ``(field, stored, recomputed, from what)`` whose stored value (unless
    absent: ``None``) differs from the recomputed one."""
    return [
        f"{at}.{name}: {stored!r} disagrees with the per-sample record ({why} = {value!r})"
        for name, stored, value, why in checks
        if stored is not None and abs(stored - value) > _TOLERANCE
    ]


def content_hash(data: dict[str, Any]) -> str:
    """sha256 of a result's JSON content without its ``content_sha256`` field (keys sorted,
    compact separators, UTF-8): what :meth:`SuiteResult.save` records and ``load`` checks."""
    body = {k: v for k, v in data.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not a MAJOR.MINOR.PATCH version")
    return parts


class SuiteResult(StrictModel):
    """One run of the evaluation suite on one model and data set.

    A result is checked for internal consistency whenever it is built or read: the per-sample
    records have one entry per sample, and every summary figure (clean and robust accuracy,
    attack success rates, counts, query totals, per-attack figures, certified accuracies) equals
    what those records give; a file whose figures were edited is refused. ``save`` records a
    content hash (``content_sha256``) that ``load`` verifies, so any edit of a saved file,
    consistent or not, is detected (a registry can pin that hash). Schema versions newer than
    this library's are refused.
    """

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
    topology: TopologyRecord | None = Field(
        default=None,
        description="sharded runs: executor, workers and shards (null: one process) "
        "(schema >= 1.5)",
    )
    content_sha256: str | None = Field(
        default=None,
        description="sha256 of the file's JSON content without this field (keys sorted, compact "
        "separators), written by save and checked by load (schema >= 1.3)",
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: str) -> str:
        version, ours = _version(v), _version(SCHEMA_VERSION)
        if version[0] != ours[0] or version > ours:
            raise ValueError(
                f"schema {v} is not readable by this RobustOps (it reads {ours[0]}.x up to "
                f"{SCHEMA_VERSION})"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SuiteResult:
        problems = self.inconsistencies()
        if problems:
            raise ValueError(
                "the summary figures disagree with the per-sample record: " + "; ".join(problems)
            )
        return self

    def inconsistencies(self) -> list[str]:
        """Every summary figure that disagrees with the per-sample records (empty when none)."""
        s, n = self.samples, self.n_samples
        lengths = {len(s.indices), len(s.labels), len(s.clean_correct)}
        if lengths != {n}:
            return [f"samples: indices, labels and clean_correct must have n_samples = {n} entries"]
        k = sum(s.clean_correct)
        out = _disagreements(
            "result", [("clean_accuracy", self.clean_accuracy, _share(k, n), f"{k}/{n}")]
        )
        for i, t in enumerate(self.threats):
            out += t.check_against(s, i)
        if self.certification is not None:
            out += [f"certification.{m}" for m in self.certification.inconsistencies()]
        return out

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

    def sealed(self) -> SuiteResult:
        """A copy carrying the content hash of its JSON form (what :meth:`save` writes)."""
        data = self.model_dump(mode="json")
        return self.model_copy(update={"content_sha256": content_hash(data)})

    def save(self, path: str | Path) -> Path:
        """Write as indented JSON with its content hash (atomically: a crash never leaves half
        a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.sealed().model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SuiteResult:
        """Read and validate a result file; :class:`SpecError` with field paths if invalid,
        inconsistent (see the class docstring), or edited after it was saved."""
        text = read_text_file(path, "result", max_bytes=MAX_RESULT_BYTES)
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SpecError.single("result", f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError([("<root>", "a result must be a JSON object")], source=str(path))
        try:
            result = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error_to_spec_error(exc, source=str(path)) from None
        stored = data.get("content_sha256")
        if stored is None and _version(result.schema_version) >= (1, 3, 0):
            raise SpecError(
                [("content_sha256", "missing: results of schema >= 1.3 carry their hash")],
                source=str(path),
            )
        if stored is not None and stored != content_hash(data):
            raise SpecError(
                [
                    (
                        "content_sha256",
                        "the file's content does not match its hash: it was "
                        "edited after RobustOps wrote it",
                    )
                ],
                source=str(path),
            )
        return result
