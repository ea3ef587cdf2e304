"""The CI robustness gate: does a new suite result meet a policy, and did it regress from the
accepted baseline by more than sampling noise?

A policy (:class:`GatePolicy`, a YAML file read by :func:`load_policy`) holds two kinds of rules:

* **absolute rules** on the new result alone: minimum robust accuracy and maximum attack success
  rate (share of the attacked samples broken) per threat, minimum clean
  accuracy, maximum ECE on attacked inputs, maximum p99 single-input latency, a passing
  gradient-masking audit, minimum certified accuracy per radius. Threat-keyed rules take the key
  ``"*"`` as the default for every threat. A rule whose figure is missing from the result (no
  such threat, no calibration, no latency, no audit, no certification) **fails**: a gate that
  could be passed by leaving a measurement out would not be a gate.
* **regression rules** against a baseline (when one is given): for the clean accuracy and for
  every threat of the baseline, a one-sided test that the new accuracy is lower.

  - When both results were evaluated on the same samples (same data fingerprint, split and
    ``samples.indices``) the test is the exact McNemar test on the per-sample outcomes: with
    ``b`` samples robust in the baseline only and ``c`` in the new result only,
    ``p = P(Binomial(b + c, 1/2) >= b)``.
  - Otherwise it falls back to Fisher's exact test (one-sided) on the two proportions, and the
    95% Newcombe (hybrid Wilson score) interval of the difference is reported.

  A regression fails only if it is significant (``p <= alpha``) **and** the drop in accuracy is
  larger than ``min_effect``. A baseline threat missing from the new result fails; a threat new
  in the new result is reported (``skip``: nothing to compare). Every accuracy is reported with
  its 95% Wilson score interval.

A policy file is either the rules themselves, or has a ``tiers:`` mapping of named rule sets
(e.g. ``quick`` for pull requests and ``full`` for nightly runs). Top-level rules are shared:
a tier inherits every top-level key it does not set itself. Without a tier name the top-level
rules are used, or the tier ``full`` when the file has tiers but no top-level rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from scipy import stats

from robustops.attacks.registry import attack_defaults
from robustops.errors import SpecError
from robustops.evaluation.metrics import wilson_interval as _wilson
from robustops.evaluation.result import SuiteResult, ThreatResult
from robustops.format import percent, points
from robustops.io import load_yaml
from robustops.schema import StrictModel
from robustops.threats import validation_error_to_spec_error

__all__ = [
    "GatePolicy",
    "GatePolicyFile",
    "GateReport",
    "ResultIdentity",
    "RuleOutcome",
    "RuleStatus",
    "evaluate_gate",
    "load_policy",
    "mcnemar_exact",
    "parse_policy",
    "wilson_interval",
]

RuleStatus = Literal["pass", "fail", "skip"]

DEFAULT_KEY = "*"
"""Key of a threat-keyed rule that applies to every threat not named explicitly."""
CONFIDENCE = 0.95
"""Level of every reported interval."""

Share = Annotated[float, Field(ge=0.0, le=1.0)]


class GatePolicy(StrictModel):
    """The rules a new result must meet. Every rule is optional; see the module docstring.

    Attributes:
        tier: name of the rule set (recorded in the report; set from ``tiers:`` when selected).
        min_robust_accuracy: threat name (or ``"*"``) → minimum robust accuracy in [0, 1].
        max_attack_success_rate: threat name (or ``"*"``) → maximum share of the attacked
            samples (correctly classified; not of a fixed target class) that some attack broke,
            in [0, 1]: e.g. the evasion rate of a spam filter, which robust accuracy over all
            messages dilutes with the ham nobody attacks.
        min_clean_accuracy: minimum clean accuracy in [0, 1].
        max_clean_accuracy_drop: maximum drop of clean accuracy from the baseline, in absolute
            points in [0, 1] (point estimates; needs a baseline).
        max_attacked_ece: threat name (or ``"*"``) → maximum ECE on that threat's attacked inputs.
        max_p99_latency_ms: maximum 99th-percentile single-input latency, milliseconds.
        require_audit_pass: fail when any gradient-masking audit verdict is ``fail`` (``warn`` is
            reported but passes), and when the result has no audit.
        min_certified_accuracy: L2 radius (e.g. ``"0.5"``) → minimum certified accuracy.
        judge: how absolute rules on shares (robust, clean and certified accuracy, attack
            success rate) read a figure: ``"estimate"``, the point estimate; ``"interval"``,
            the unfavourable end of its 95% Wilson interval (the lower end for a minimum, the
            upper end for a maximum), so a small sample cannot pass by luck.
        threats: the threats the result must contain (the gate section of a pipeline spec fills
            it with the threats its evaluation declares, for the policy's tier); one missing
            fails, as does a ``"*"`` rule that matches no threat of the result.
        allow_unadapted_attacks: pass a result whose stochastic model was attacked by attacks
            that could not be given EOT (they can overstate robustness); refused by default.
        regression: compare with the baseline, when one is given. The baseline must be
            comparable: the same data set (fingerprint), the same tier, and per threat the same
            threat model, attack list and attack parameters (seeds aside); otherwise every
            regression rule it concerns fails, naming the difference.
        alpha: significance level of the regression tests (one-sided).
        min_effect: drops of accuracy not larger than this are never regressions, in [0, 1].
    """

    tier: str | None = None
    min_robust_accuracy: dict[str, Share] = Field(default_factory=dict)
    max_attack_success_rate: dict[str, Share] = Field(default_factory=dict)
    min_clean_accuracy: Share | None = None
    max_clean_accuracy_drop: Share | None = None
    max_attacked_ece: dict[str, Share] = Field(default_factory=dict)
    max_p99_latency_ms: float | None = Field(default=None, gt=0)
    require_audit_pass: bool = False
    min_certified_accuracy: dict[str, Share] = Field(default_factory=dict)
    judge: Literal["estimate", "interval"] = "estimate"
    threats: list[str] | None = None
    allow_unadapted_attacks: bool = False
    regression: bool = True
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_effect: Share = 0.0

    @field_validator("min_certified_accuracy", mode="before")
    @classmethod
    def _radius_keys(cls, v: Any) -> Any:
        """Radii as ``str(float(r))`` (the keys of a certification result); YAML may give numbers."""
        if not isinstance(v, Mapping):
            return v
        out: dict[str, Any] = {}
        for key, value in v.items():
            try:
                radius = float(key)
            except (TypeError, ValueError):
                raise ValueError(f"radius {key!r} is not a number") from None
            if not math.isfinite(radius) or radius < 0:
                raise ValueError(f"radius {key!r} must be a finite number >= 0")
            out[str(radius)] = value
        return out


class GatePolicyFile(GatePolicy):
    """A policy file: shared top-level rules and optional named tiers."""

    tiers: dict[str, GatePolicy] = Field(default_factory=dict)


def parse_policy(
    raw: Mapping[str, Any], tier: str | None = None, *, source: str | None = None
) -> GatePolicy:
    """Validate a policy mapping (the content of a policy file) and select ``tier``.

    Raises :class:`SpecError` with field paths (``tiers.quick.min_robust_accuracy.linf``), or at
    ``tiers`` when the tier does not exist.
    """
    try:
        pf = GatePolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise validation_error_to_spec_error(exc, source=source) from None
    shared = pf.model_dump(exclude={"tiers"}, exclude_unset=True)
    available = sorted(pf.tiers)
    if tier is None:
        if shared or not pf.tiers:
            return GatePolicy.model_validate(shared)
        if "full" not in pf.tiers:
            raise SpecError(
                [("tiers", f"no top-level rules and no tier 'full': choose a tier of {available}")],
                source=source,
            )
        tier = "full"
    if tier not in pf.tiers:
        raise SpecError(
            [("tiers", f"unknown tier {tier!r}; available: {available}")], source=source
        )
    merged = {**shared, **pf.tiers[tier].model_dump(exclude_unset=True), "tier": tier}
    return GatePolicy.model_validate(merged)


def load_policy(path: str | Path, tier: str | None = None) -> GatePolicy:
    """Read a YAML policy file, or the ``gate`` section of a pipeline spec, and select ``tier``
    (see :func:`parse_policy`).

    Raises :class:`SpecError` listing every invalid field with its dotted path.
    """
    path = Path(path)
    raw = load_yaml(path, "policy")
    if not isinstance(raw, dict):
        raise SpecError([("<root>", "the policy must be a mapping")], source=str(path))
    if "model" in raw and "name" in raw:  # a pipeline spec: its gate section
        if not isinstance(raw.get("gate"), dict):
            raise SpecError([("gate", "the pipeline spec has no gate section")], source=str(path))
        try:
            policy = parse_policy(raw["gate"], tier)
        except SpecError as exc:
            raise SpecError([(f"gate.{p}", m) for p, m in exc.errors], source=str(path)) from None
        if policy.threats is None:
            declared = _declared_threats(raw.get("evaluation"), policy.tier)
            policy = policy.model_copy(update={"threats": declared})
        return policy
    return parse_policy(raw, tier, source=str(path))


def _declared_threats(evaluation: object, tier: str | None) -> list[str] | None:
    """Names of the threats a spec's ``evaluation`` section runs in ``tier`` (its ``threats``
    filter, when the evaluation has that tier), or ``None`` when it declares none."""
    if not isinstance(evaluation, Mapping) or not isinstance(evaluation.get("threats"), list):
        return None
    names = [t["name"] for t in evaluation["threats"] if isinstance(t, Mapping) and "name" in t]
    tiers = evaluation.get("tiers")
    kept = tiers.get(tier) if isinstance(tiers, Mapping) and tier is not None else None
    if isinstance(kept, Mapping) and isinstance(kept.get("threats"), list):
        names = [n for n in names if n in kept["threats"]]
    return [str(n) for n in names]


# -- the report ----------------------------------------------------------------------------------


class RuleOutcome(StrictModel):
    """One rule checked against the results."""

    rule: str = Field(description="e.g. 'min_robust_accuracy[linf-0.3]', 'regression[clean]'")
    threat: str | None = Field(description="the threat the rule is about, if any")
    status: RuleStatus
    reason: str = Field(description="one sentence with the numbers behind the status")
    figures: dict[str, float] = Field(default_factory=dict)


class ResultIdentity(StrictModel):
    """Which result file a report is about."""

    name: str
    created_at: str
    schema_version: str
    seed: int
    n_samples: int
    tier: str | None = Field(default=None, description="the spec's budget tier the run used")
    model_sha256: str | None = Field(description="sha256 of the weights file")
    model_state_sha256: str | None = Field(description="sha256 of the tensor content")
    data_fingerprint: str | None

    @classmethod
    def of(cls, result: SuiteResult) -> ResultIdentity:
        """The identity of ``result``."""
        return cls(
            name=result.name,
            created_at=result.created_at,
            schema_version=result.schema_version,
            seed=result.seed,
            n_samples=result.n_samples,
            tier=_str_or_none(getattr(result, "tier", None)),
            model_sha256=_str_or_none(result.model.get("weights_sha256")),
            model_state_sha256=_str_or_none(result.model.get("state_sha256")),
            data_fingerprint=_str_or_none(result.data.get("fingerprint")),
        )


class GateReport(StrictModel):
    """The gate's verdict: ``passed`` unless some rule failed."""

    passed: bool
    tier: str | None
    policy: GatePolicy
    new: ResultIdentity
    baseline: ResultIdentity | None
    rules: list[RuleOutcome]
    warnings: list[str] = Field(default_factory=list)

    def failures(self) -> list[RuleOutcome]:
        """The rules that failed."""
        return [r for r in self.rules if r.status == "fail"]

    def for_threat(self, threat: str) -> list[RuleOutcome]:
        """The rules about ``threat``."""
        return [r for r in self.rules if r.threat == threat]


# -- statistics ----------------------------------------------------------------------------------


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of ``k / n`` at the gate's confidence (95%)."""
    return _wilson(k, n, CONFIDENCE)


def mcnemar_exact(baseline: list[bool], new: list[bool]) -> tuple[int, int, float]:
    """Exact one-sided McNemar test that ``new`` is correct less often than ``baseline``.

    Returns ``(b, c, p)``: ``b`` pairs correct in the baseline only, ``c`` in the new only, and
    ``p = P(Binomial(b + c, 1/2) >= b)`` (1 when there is no discordant pair).
    """
    if len(baseline) != len(new):
        raise ValueError(f"paired outcomes differ in length: {len(baseline)} vs {len(new)}")
    b = sum(1 for x, y in zip(baseline, new, strict=True) if x and not y)
    c = sum(1 for x, y in zip(baseline, new, strict=True) if y and not x)
    if b + c == 0:
        return b, c, 1.0
    p = float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    return b, c, p


def _newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """95% Newcombe hybrid score interval of ``k1/n1 - k2/n2`` (independent samples)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def _fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that proportion 1 exceeds proportion 2."""
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    return float(stats.fisher_exact(table, alternative="greater").pvalue)


# -- evaluation ----------------------------------------------------------------------------------


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def _ci(k: int, n: int) -> tuple[float, float, str]:
    lo, hi = wilson_interval(k, n)
    return lo, hi, f"95% CI [{percent(lo)}, {percent(hi)}]"


def _p(p: float) -> str:
    return f"{p:.3g}"


def _judged(policy: GatePolicy, k: int, n: int, estimate: float, *, minimum: bool) -> float:
    """The figure an absolute rule compares with its threshold: the estimate, or with
    ``judge: interval`` the unfavourable end of its Wilson interval."""
    if policy.judge == "estimate":
        return estimate
    lo, hi = wilson_interval(k, n)
    return lo if minimum else hi


def _judged_note(policy: GatePolicy, value: float, *, minimum: bool) -> str:
    if policy.judge == "estimate":
        return ""
    return (
        f", judged on the {'lower' if minimum else 'upper'} end of its interval {percent(value)},"
    )


def _same_samples(new: SuiteResult, base: SuiteResult) -> str | None:
    """``None`` when both results were evaluated on the same samples, else why not."""
    fa, fb = new.data.get("fingerprint"), base.data.get("fingerprint")
    if fa is None or fb is None:
        return "a result has no data fingerprint"
    if fa != fb:
        return "the data fingerprints differ"
    for key in ("split_seed", "test_fraction"):
        if new.data.get(key) != base.data.get(key):
            return f"the data splits differ ({key})"
    if new.samples.split != base.samples.split:
        return "the splits differ"
    if new.samples.indices != base.samples.indices:
        return "the evaluated samples (indices) differ"
    if new.samples.labels != base.samples.labels:
        return "the labels of the evaluated samples differ"
    return None


def _threshold(rule: Mapping[str, float], name: str) -> float | None:
    return rule.get(name, rule.get(DEFAULT_KEY))


@dataclass(frozen=True)
class _Comparison:
    """One regression question: is ``new`` (per-sample outcomes, e.g. robust) worse than
    ``base``? ``what`` names the figure (``robust accuracy``), ``outcome`` one success
    (``robust``); ``paired_why_not`` is ``None`` when both were measured on the same samples."""

    rule: str
    threat: str | None
    what: str
    outcome: str
    base: list[bool]
    new: list[bool]
    paired_why_not: str | None


@dataclass(frozen=True)
class _Test:
    """A one-sided test of a drop: its p-value, its figures and one sentence about it."""

    p_value: float
    figures: dict[str, float]
    text: str


def _regression(c: _Comparison, policy: GatePolicy) -> RuleOutcome:
    """Is ``c.new`` worse than ``c.base`` beyond noise (and beyond ``policy.min_effect``)?"""
    nb, nn = len(c.base), len(c.new)
    if nb == 0 or nn == 0:
        return RuleOutcome(
            rule=c.rule,
            threat=c.threat,
            status="skip",
            reason=f"{c.what}: nothing to compare (baseline {nb} samples, new {nn} samples).",
        )
    kb, kn = sum(c.base), sum(c.new)
    acc_b, acc_n = kb / nb, kn / nn
    lb, hb, ci_b = _ci(kb, nb)
    ln, hn, ci_n = _ci(kn, nn)
    drop = acc_b - acc_n
    figures = {
        "baseline": acc_b,
        "baseline_low": lb,
        "baseline_high": hb,
        "new": acc_n,
        "new_low": ln,
        "new_high": hn,
        "drop": drop,
        "n_baseline": float(nb),
        "n_new": float(nn),
        "alpha": policy.alpha,
        "min_effect": policy.min_effect,
    }
    head = (
        f"{c.what} {percent(acc_b)} ({ci_b}) in the baseline → {percent(acc_n)} ({ci_n}) now "
        f"({points(-drop, sign=True)})"
    )
    why_not = c.paired_why_not
    if why_not is None and nb != nn:
        why_not = "the per-sample records differ in length"
    test = _paired_test(c) if why_not is None else _unpaired_test(kb, nb, kn, nn, why_not)
    figures.update(test.figures)
    figures["p_value"] = test.p_value
    status, verdict = _regression_verdict(test.p_value, drop, policy)
    return RuleOutcome(
        rule=c.rule,
        threat=c.threat,
        status=status,
        reason=f"{head}; {test.text}: {verdict}.",
        figures=figures,
    )


def _paired_test(c: _Comparison) -> _Test:
    """The exact McNemar test on the same samples."""
    b, cc, p = mcnemar_exact(c.base, c.new)
    return _Test(
        p,
        {"paired": 1.0, "b": float(b), "c": float(cc), "p_value": p},
        f"exact McNemar test on the same {len(c.base)} samples: {b} {c.outcome} in the "
        f"baseline only, {cc} in the new result only, one-sided p = {_p(p)}",
    )


def _unpaired_test(kb: int, nb: int, kn: int, nn: int, why_not: str) -> _Test:
    """Fisher's exact test on two proportions, with the Newcombe interval of the drop."""
    p = _fisher_greater(kb, nb, kn, nn)
    lo, hi = _newcombe(kb, nb, kn, nn)
    interval = f"[{points(lo, sign=True, unit=False)}, {points(hi, sign=True, unit=False)}]"
    return _Test(
        p,
        {"paired": 0.0, "drop_low": lo, "drop_high": hi},
        f"unpaired: {why_not}, so Fisher's exact test one-sided p = {_p(p)}, "
        f"95% Newcombe CI of the drop {interval} points",
    )


def _regression_verdict(p: float, drop: float, policy: GatePolicy) -> tuple[RuleStatus, str]:
    """``(status, why)``: a regression fails only when significant and larger than
    ``min_effect``."""
    significant = p <= policy.alpha
    if significant and drop > policy.min_effect:
        return "fail", f"a significant regression at alpha {policy.alpha:g}"
    if significant:
        return "pass", (
            f"significant at alpha {policy.alpha:g} but not above min_effect {policy.min_effect:g}"
        )
    return "pass", f"not significant at alpha {policy.alpha:g}"


def _threat_differences(new: ThreatResult, base: ThreatResult) -> list[str]:
    """Why ``new`` is not the same experiment as ``base``: another threat model, attack list
    or attack parameters (seeds aside; a parameter recorded on one side only counts as its
    default)."""
    out = []
    if new.threat != base.threat:
        old, now = base.threat.model_dump(), new.threat.model_dump()
        diff = ", ".join(f"{k} {old[k]} → {now[k]}" for k in old if old[k] != now[k])
        out.append(f"the threat model differs from the baseline's ({diff})")
    na, ba = [a.name for a in new.attacks], [a.name for a in base.attacks]
    if na != ba:
        out.append(f"the attacks differ from the baseline's ({ba} → {na})")
        return out
    for a, b in zip(new.attacks, base.attacks, strict=True):
        # The seed only picks random starts: a different one is what noise looks like.
        keys = sorted((set(a.params) | set(b.params)) - {"seed"})
        defaults = attack_defaults(a.name, new.threat)  # a.name == b.name: the lists are equal
        now, then = {**defaults, **a.params}, {**defaults, **b.params}
        changed = [k for k in keys if k not in now or k not in then or now[k] != then[k]]
        if changed:
            diff = ", ".join(f"{k} {b.params.get(k)} → {a.params.get(k)}" for k in changed)
            out.append(f"attack {a.name!r} has other parameters than in the baseline ({diff})")
    return out


def _not_comparable(new: SuiteResult, base: SuiteResult) -> str | None:
    """Why no regression of ``new`` against ``base`` can be judged at all, or ``None``."""
    fa, fb = new.data.get("fingerprint"), base.data.get("fingerprint")
    if fa != fb:
        return f"the data sets differ (fingerprint {fb} in the baseline, {fa} now)"
    ta, tb = getattr(new, "tier", None), getattr(base, "tier", None)
    if ta != tb:
        return (
            f"the evaluation tiers differ (baseline {tb or 'whole suite'}, new "
            f"{ta or 'whole suite'}): compare a tier's result with a baseline of the same tier"
        )
    return None


def _identity_warnings(new: SuiteResult, base: SuiteResult) -> list[str]:
    out = []
    if new.schema_version != base.schema_version:
        out.append(
            f"schema versions differ: baseline {base.schema_version}, new {new.schema_version}"
        )
    why_not = _same_samples(new, base)
    if why_not is not None and _not_comparable(new, base) is None:
        out.append(
            f"not the same samples ({why_not}; baseline {base.n_samples}, new {new.n_samples} "
            "samples): regressions are tested unpaired"
        )
    return out


@dataclass(frozen=True)
class _ShareCheck:
    """An absolute rule on a share ``k / n`` (``value``): at least (``minimum``) or at most
    ``threshold``. ``lead`` opens the reason (``robust accuracy 91.0%``), ``verb`` joins it to
    the bound (`` is`` or nothing); ``extra`` figures come first."""

    rule: str
    threat: str | None
    lead: str
    k: int
    n: int
    value: float
    threshold: float
    minimum: bool = True
    verb: str = " is"
    extra: Mapping[str, float] | None = None


def _share_outcome(c: _ShareCheck, policy: GatePolicy) -> RuleOutcome:
    """Judge ``c`` (the estimate, or its interval's unfavourable end) against its threshold."""
    lo, hi, ci = _ci(c.k, c.n)
    judged = _judged(policy, c.k, c.n, c.value, minimum=c.minimum)
    ok = judged >= c.threshold if c.minimum else judged <= c.threshold
    if c.minimum:
        bound = f"{'at least' if ok else 'below'} the minimum"
    else:
        bound = f"{'at most' if ok else 'above'} the maximum"
    return RuleOutcome(
        rule=c.rule,
        threat=c.threat,
        status="pass" if ok else "fail",
        reason=f"{c.lead} ({c.k}/{c.n}, {ci}){_judged_note(policy, judged, minimum=c.minimum)}"
        f"{c.verb} {bound} {percent(c.threshold)}.",
        figures={
            **(c.extra or {}),
            "value": c.value,
            "low": lo,
            "high": hi,
            "judged": judged,
            "threshold": c.threshold,
        },
    )


def _absolute_threat_rules(
    t: ThreatResult, new: SuiteResult, policy: GatePolicy
) -> list[RuleOutcome]:
    """The absolute rules of ``policy`` that apply to threat ``t`` of ``new``."""
    rules = (
        _min_robust_rule(t, new, policy),
        _max_success_rule(t, new, policy),
        _max_ece_rule(t, policy),
    )
    return [r for r in rules if r is not None]


def _min_robust_rule(t: ThreatResult, new: SuiteResult, policy: GatePolicy) -> RuleOutcome | None:
    minimum = _threshold(policy.min_robust_accuracy, t.name)
    if minimum is None:
        return None
    check = _ShareCheck(
        rule=f"min_robust_accuracy[{t.name}]",
        threat=t.name,
        lead=f"robust accuracy {percent(t.robust_accuracy)}",
        k=t.n_robust,
        n=new.n_samples,
        value=t.robust_accuracy,
        threshold=minimum,
    )
    return _share_outcome(check, policy)


def _max_success_rule(t: ThreatResult, new: SuiteResult, policy: GatePolicy) -> RuleOutcome | None:
    most = _threshold(policy.max_attack_success_rate, t.name)
    if most is None:
        return None
    broken = sum(c and not r for c, r in zip(new.samples.clean_correct, t.robust, strict=False))
    attacked = t.n_attacked if t.n_attacked is not None else sum(new.samples.clean_correct)
    rate = broken / attacked if attacked else 0.0
    check = _ShareCheck(
        rule=f"max_attack_success_rate[{t.name}]",
        threat=t.name,
        lead=f"attacks broke {percent(rate)} of the attacked samples",
        k=broken,
        n=attacked,
        value=rate,
        threshold=most,
        minimum=False,
        verb="",
    )
    return _share_outcome(check, policy)


def _max_ece_rule(t: ThreatResult, policy: GatePolicy) -> RuleOutcome | None:
    maximum = _threshold(policy.max_attacked_ece, t.name)
    if maximum is None:
        return None
    rule = f"max_attacked_ece[{t.name}]"
    if t.calibration is None:
        return RuleOutcome(
            rule=rule,
            threat=t.name,
            status="fail",
            reason="the result has no calibration figures for this threat "
            f"(needed for the maximum attacked ECE {maximum:.3f}).",
            figures={"threshold": maximum},
        )
    ece = t.calibration.attacked.ece
    ok = ece <= maximum
    return RuleOutcome(
        rule=rule,
        threat=t.name,
        status="pass" if ok else "fail",
        reason=f"ECE on the attacked inputs {ece:.3f} is "
        f"{'at most' if ok else 'above'} the maximum {maximum:.3f}.",
        figures={"value": ece, "threshold": maximum},
    )


def _missing_threat_rules(new: SuiteResult, policy: GatePolicy) -> list[RuleOutcome]:
    """Fail what a policy expects of the result's threats but cannot find: a threat its rules
    (or its spec) name, or any threat at all for a ``"*"`` rule."""
    names = {t.name for t in new.threats}
    out = []
    for field, rule_map in (
        ("min_robust_accuracy", policy.min_robust_accuracy),
        ("max_attack_success_rate", policy.max_attack_success_rate),
        ("max_attacked_ece", policy.max_attacked_ece),
    ):
        for name, threshold in rule_map.items():
            if name == DEFAULT_KEY and names:
                continue
            if name not in names:
                what = (
                    "a rule for every threat ('*'), but the new result has no threat"
                    if name == DEFAULT_KEY
                    else f"threat {name!r} but the new result has no such threat (it has "
                    f"{sorted(names)})"
                )
                out.append(
                    RuleOutcome(
                        rule=f"{field}[{name}]",
                        threat=None if name == DEFAULT_KEY else name,
                        status="fail",
                        reason=f"the policy has {what}.",
                        figures={"threshold": threshold},
                    )
                )
    for name in policy.threats or []:
        if name not in names:
            out.append(
                RuleOutcome(
                    rule=f"threats[{name}]",
                    threat=name,
                    status="fail",
                    reason=f"the spec declares threat {name!r} but the new result does not "
                    f"contain it (it has {sorted(names)}).",
                )
            )
    return out


def _adaptation_rules(new: SuiteResult, policy: GatePolicy) -> list[RuleOutcome]:
    """A stochastic model attacked without EOT: those attacks' failures prove little."""
    st = new.stochastic
    if st is None or not st.detected or not st.unadapted_attacks:
        return []
    ok = policy.allow_unadapted_attacks
    return [
        RuleOutcome(
            rule="adapted_attacks",
            threat=None,
            status="pass" if ok else "fail",
            reason=f"the model is stochastic and attacks {st.unadapted_attacks} ran without EOT "
            f"(single noisy passes), which can overstate its robustness; "
            + (
                "allowed by the policy (allow_unadapted_attacks)."
                if ok
                else "give them eot_samples, or set allow_unadapted_attacks to accept this."
            ),
            figures={"n_unadapted": float(len(st.unadapted_attacks))},
        )
    ]


def _clean_rules(
    new: SuiteResult, baseline: SuiteResult | None, policy: GatePolicy
) -> list[RuleOutcome]:
    out = []
    n = new.n_samples
    k = sum(new.samples.clean_correct)
    if policy.min_clean_accuracy is not None:
        check = _ShareCheck(
            rule="min_clean_accuracy",
            threat=None,
            lead=f"clean accuracy {percent(new.clean_accuracy)}",
            k=k,
            n=n,
            value=new.clean_accuracy,
            threshold=policy.min_clean_accuracy,
        )
        out.append(_share_outcome(check, policy))
    if policy.max_clean_accuracy_drop is not None:
        maximum = policy.max_clean_accuracy_drop
        if baseline is None:
            out.append(
                RuleOutcome(
                    rule="max_clean_accuracy_drop",
                    threat=None,
                    status="skip",
                    reason="no baseline given, so no clean-accuracy drop to check.",
                    figures={"threshold": maximum},
                )
            )
        else:
            drop = baseline.clean_accuracy - new.clean_accuracy
            ok = drop <= maximum + 1e-12
            out.append(
                RuleOutcome(
                    rule="max_clean_accuracy_drop",
                    threat=None,
                    status="pass" if ok else "fail",
                    reason=f"clean accuracy {percent(baseline.clean_accuracy)} in the baseline → "
                    f"{percent(new.clean_accuracy)} now, a drop of {points(drop)}, "
                    f"{'within' if ok else 'above'} the maximum {points(maximum)}.",
                    figures={
                        "baseline": baseline.clean_accuracy,
                        "new": new.clean_accuracy,
                        "drop": drop,
                        "threshold": maximum,
                    },
                )
            )
    return out


def _audit_rules(new: SuiteResult, policy: GatePolicy) -> list[RuleOutcome]:
    if not policy.require_audit_pass:
        return []
    if not new.audit:
        return [
            RuleOutcome(
                rule="require_audit_pass",
                threat=None,
                status="fail",
                reason="the policy requires a passing gradient-masking audit but the result has "
                "none (add an evaluation.audit section to the spec).",
            )
        ]
    out = []
    for a in new.audit:
        failed = a.failed()
        warned = [c.name for c in a.checks if c.status == "warn"]
        if a.verdict == "fail":
            why = f"failed checks {failed}" if failed else a.summary
            reason = f"gradient-masking audit verdict fail ({why})."
        elif a.verdict == "warn":
            reason = f"gradient-masking audit verdict warn (checks {warned}), which passes."
        else:
            reason = "gradient-masking audit verdict pass."
        out.append(
            RuleOutcome(
                rule=f"require_audit_pass[{a.threat}]",
                threat=a.threat,
                status="fail" if a.verdict == "fail" else "pass",
                reason=reason,
                figures={
                    "n_failed_checks": float(len(failed)),
                    "n_warned_checks": float(len(warned)),
                },
            )
        )
    return out


def _certification_rules(new: SuiteResult, policy: GatePolicy) -> list[RuleOutcome]:
    out = []
    cert = new.certification
    for radius, minimum in policy.min_certified_accuracy.items():
        rule = f"min_certified_accuracy[{radius}]"
        if cert is None:
            out.append(
                RuleOutcome(
                    rule=rule,
                    threat=None,
                    status="fail",
                    reason="the result has no certification (needed for a minimum certified "
                    f"accuracy {percent(minimum)} at radius {radius}).",
                    figures={"threshold": minimum},
                )
            )
            continue
        acc = cert.certified_accuracy_at(float(radius))
        check = _ShareCheck(
            rule=rule,
            threat=None,
            lead=f"certified accuracy at L2 radius {radius} is {percent(acc)}",
            k=round(acc * cert.n_samples),
            n=cert.n_samples,
            value=acc,
            threshold=minimum,
            verb="",
            extra={"radius": float(radius)},
        )
        out.append(_share_outcome(check, policy))
    return out


def _latency_rules(new: SuiteResult, policy: GatePolicy) -> list[RuleOutcome]:
    maximum = policy.max_p99_latency_ms
    if maximum is None:
        return []
    latency = getattr(new, "latency", None)
    p99 = getattr(latency, "p99_ms", None)
    if p99 is None:
        return [
            RuleOutcome(
                rule="max_p99_latency_ms",
                threat=None,
                status="fail",
                reason="the result has no latency figures (needed for the maximum p99 latency "
                f"{maximum:g} ms).",
                figures={"threshold": maximum},
            )
        ]
    p99 = float(p99)
    ok = p99 <= maximum
    figures = {"value": p99, "threshold": maximum}
    n_calls = getattr(latency, "n_calls", None)
    calls = f" over {n_calls} single-input calls" if n_calls is not None else ""
    if n_calls is not None:
        figures["n_calls"] = float(n_calls)
    return [
        RuleOutcome(
            rule="max_p99_latency_ms",
            threat=None,
            status="pass" if ok else "fail",
            reason=f"p99 latency {p99:.2f} ms{calls} is {'at most' if ok else 'above'} the "
            f"maximum {maximum:g} ms.",
            figures=figures,
        )
    ]


def _incomparable(rule: str, threat: str | None, why: str) -> RuleOutcome:
    return RuleOutcome(
        rule=rule,
        threat=threat,
        status="fail",
        reason=f"not comparable with the baseline: {why}; accept a new baseline evaluated the "
        "same way instead of comparing unlike things.",
    )


def _regression_rules(
    new: SuiteResult, baseline: SuiteResult, policy: GatePolicy
) -> list[RuleOutcome]:
    why_not = _same_samples(new, baseline)
    unlike = _not_comparable(new, baseline)
    clean = _Comparison(
        "regression[clean]",
        None,
        "clean accuracy",
        "correct",
        baseline.samples.clean_correct,
        new.samples.clean_correct,
        why_not,
    )
    out = [
        _incomparable(clean.rule, None, unlike)
        if unlike is not None
        else _regression(clean, policy)
    ]
    out += [_threat_regression(bt, new, unlike, why_not, policy) for bt in baseline.threats]
    base_names = {t.name for t in baseline.threats}
    out += [
        RuleOutcome(
            rule=f"regression[{nt.name}]",
            threat=nt.name,
            status="skip",
            reason=f"threat {nt.name!r} is new (not in the baseline): robust accuracy "
            f"{percent(nt.robust_accuracy)}, nothing to compare.",
            figures={"new": nt.robust_accuracy},
        )
        for nt in new.threats
        if nt.name not in base_names
    ]
    return out


def _threat_regression(
    bt: ThreatResult,
    new: SuiteResult,
    unlike: str | None,
    why_not: str | None,
    policy: GatePolicy,
) -> RuleOutcome:
    """The regression rule of baseline threat ``bt``: missing from ``new``, not comparable
    (``unlike``, or another experiment), or tested."""
    rule = f"regression[{bt.name}]"
    if bt.name not in {t.name for t in new.threats}:
        return RuleOutcome(
            rule=rule,
            threat=bt.name,
            status="fail",
            reason=f"threat {bt.name!r} was evaluated in the baseline (robust accuracy "
            f"{percent(bt.robust_accuracy)}) but is missing from the new result.",
            figures={"baseline": bt.robust_accuracy},
        )
    nt = new.threat(bt.name)
    differences = _threat_differences(nt, bt)
    if unlike is not None or differences:
        return _incomparable(rule, bt.name, unlike or "; ".join(differences))
    comparison = _Comparison(
        rule, bt.name, "robust accuracy", "robust", bt.robust, nt.robust, why_not
    )
    return _regression(comparison, policy)


def evaluate_gate(new: SuiteResult, baseline: SuiteResult | None, policy: GatePolicy) -> GateReport:
    """Check ``new`` against ``policy`` and, when given, against the accepted ``baseline``."""
    warnings: list[str] = []
    result_tier = getattr(new, "tier", None)
    if policy.tier is not None and result_tier is not None and policy.tier != result_tier:
        warnings.append(
            f"the policy's tier {policy.tier!r} differs from the result's tier {result_tier!r}"
        )
    rules = _clean_rules(new, baseline, policy)
    for t in new.threats:
        rules += _absolute_threat_rules(t, new, policy)
    rules += _missing_threat_rules(new, policy)
    rules += _adaptation_rules(new, policy)
    rules += _audit_rules(new, policy)
    rules += _certification_rules(new, policy)
    rules += _latency_rules(new, policy)
    if baseline is not None:
        warnings += _identity_warnings(new, baseline)
        if policy.regression:
            rules += _regression_rules(new, baseline, policy)
    elif policy.regression:
        rules.append(
            RuleOutcome(
                rule="regression",
                threat=None,
                status="skip",
                reason="no baseline given: only the absolute rules were checked.",
            )
        )
    return GateReport(
        passed=all(r.status != "fail" for r in rules),
        tier=policy.tier,
        policy=policy,
        new=ResultIdentity.of(new),
        baseline=ResultIdentity.of(baseline) if baseline is not None else None,
        rules=rules,
        warnings=warnings,
    )
