"""The CI gate: absolute rules, regressions beyond sampling noise, JUnit XML and the command."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from scipy import stats
from typer.testing import CliRunner

from robustops.attacks import build_attack
from robustops.cli import app
from robustops.data import Dataset
from robustops.errors import SpecError
from robustops.evaluation import (
    AttackFigures,
    AuditCheck,
    AuditResult,
    SamplesRecord,
    SuiteOptions,
    SuiteRecord,
    SuiteResult,
    SuiteThreat,
    ThreatCalibration,
    ThreatResult,
    run_suite,
)
from robustops.evaluation.certification import CertificationResult
from robustops.evaluation.metrics import CalibrationMetrics
from robustops.evaluation.result import LatencyFigures
from robustops.gate import (
    GatePolicy,
    GateReport,
    evaluate_gate,
    load_policy,
    mcnemar_exact,
    parse_policy,
    wilson_interval,
)
from robustops.junit import to_junit_xml
from robustops.models import SmallCNN, small_cnn
from robustops.threats import ThreatModel
from robustops.training import Recipe, fit

FP = "f" * 64


# -- synthetic results ---------------------------------------------------------------------------


def _threat(
    name: str,
    robust: list[bool],
    *,
    ece: float | None = 0.1,
    wall: float = 1.25,
    clean: list[bool] | None = None,
) -> ThreatResult:
    """A threat result consistent with its per-sample record (robust only where clean-correct)."""
    n = len(robust)
    clean = clean if clean is not None else [True] * n
    robust = [r and c for r, c in zip(robust, clean, strict=True)]
    k = sum(robust)
    attacked = sum(clean)
    cal = (
        ThreatCalibration(
            attacked=CalibrationMetrics(
                n=n,
                accuracy=k / n,
                mean_confidence=0.8,
                ece=ece,
                adaptive_ece=ece,
                brier=0.3,
                nll=0.7,
                bins=[],
            )
        )
        if ece is not None
        else None
    )
    return ThreatResult(
        name=name,
        threat=ThreatModel(name=name, norm="linf", epsilon=0.3),
        robust_accuracy=k / n,
        attack_success_rate=(attacked - k) / attacked if attacked else 0.0,
        n_robust=k,
        attacks=[
            AttackFigures(
                name="pgd",
                params={"steps": 10},
                n_attacked=attacked,
                n_broken=attacked - k,
                success_rate=(attacked - k) / attacked if attacked else 0.0,
                mean_queries=10.0,
                total_queries=10 * n,
                median_perturbation=0.3,
                wall_time_s=wall,
            )
        ],
        total_queries=10 * n,
        wall_time_s=wall,
        robust=robust,
        broken_by=[None if r or not c else "pgd" for r, c in zip(robust, clean, strict=True)],
        queries=[10] * n,
        calibration=cal,
    )


def _result(
    threats: dict[str, list[bool]],
    clean: list[bool] | None = None,
    *,
    name: str = "new",
    indices: list[int] | None = None,
    fingerprint: str = FP,
    ece: dict[str, float | None] | None = None,
) -> SuiteResult:
    n = len(next(iter(threats.values()))) if threats else len(clean or [])
    clean = clean if clean is not None else [True] * n
    return SuiteResult(
        name=name,
        created_at="2025-01-02T03:04:05+00:00",
        seed=0,
        device="cpu",
        n_samples=n,
        clean_accuracy=sum(clean) / n,
        threats=[
            _threat(t, r, ece=(ece or {}).get(t, 0.1), clean=clean) for t, r in threats.items()
        ],
        data={"name": "mnist_subset", "fingerprint": fingerprint, "split_seed": 0},
        model={"weights_sha256": name[0] * 64},
        environment={},
        samples=SamplesRecord(
            indices=indices if indices is not None else list(range(n)),
            labels=[i % 10 for i in range(n)],
            clean_correct=clean,
        ),
        wall_time_s=3.0,
    )


def _pattern(n_true: int, n: int) -> list[bool]:
    return [i < n_true for i in range(n)]


def _rule(report: GateReport, rule: str) -> Any:
    (hit,) = [r for r in report.rules if r.rule == rule]
    return hit


# -- statistics by hand --------------------------------------------------------------------------


def _mcnemar_pair() -> tuple[list[bool], list[bool]]:
    """30 samples: the baseline is robust on the first 20; the new model loses 7 of them
    (samples 0-6) and gains one (sample 20): b = 7, c = 1."""
    base = _pattern(20, 30)
    new = [False] * 7 + [True] * 13 + [True] + [False] * 9
    return base, new


def test_mcnemar_and_wilson_match_a_hand_computation() -> None:
    base, new = _mcnemar_pair()
    b, c, p = mcnemar_exact(base, new)
    # P(Binomial(8, 1/2) >= 7) = (C(8,7) + C(8,8)) / 2^8 = 9/256.
    assert (b, c) == (7, 1)
    assert p == pytest.approx(9 / 256, abs=1e-12)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    # Wilson, z = 1.959964, z²/n = 0.128049: 20/30 → centre (2/3 + 0.064024) / 1.128049 =
    # 0.647748, half-width 1.737484 · √(0.007407 + 0.001067) = 0.159948.
    lo, hi = wilson_interval(20, 30)
    assert (lo, hi) == pytest.approx((0.487800, 0.807696), abs=2e-6)
    ref = stats.binomtest(20, 30).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_paired_regression_uses_mcnemar() -> None:
    base_r, new_r = _mcnemar_pair()
    baseline = _result({"linf-0.3": base_r}, name="base")
    new = _result({"linf-0.3": new_r})
    report = evaluate_gate(new, baseline, GatePolicy())
    reg = _rule(report, "regression[linf-0.3]")
    assert reg.status == "fail" and not report.passed
    assert reg.figures["paired"] == 1.0
    assert (reg.figures["b"], reg.figures["c"]) == (7.0, 1.0)
    assert reg.figures["p_value"] == pytest.approx(9 / 256)
    assert reg.figures["drop"] == pytest.approx(6 / 30)
    assert (reg.figures["baseline_low"], reg.figures["baseline_high"]) == pytest.approx(
        wilson_interval(20, 30)
    )
    assert "McNemar" in reg.reason and "0.0352" in reg.reason
    assert report.warnings == []
    # Not significant at a stricter level; significant but not larger than min_effect.
    assert evaluate_gate(new, baseline, GatePolicy(alpha=0.03)).passed
    lenient = evaluate_gate(new, baseline, GatePolicy(min_effect=0.25))
    assert lenient.passed
    assert "min_effect" in _rule(lenient, "regression[linf-0.3]").reason
    # The clean accuracy is compared the same way (here unchanged: p = 1).
    clean = _rule(report, "regression[clean]")
    assert clean.status == "pass" and clean.figures["p_value"] == 1.0


def test_unpaired_fallback_when_the_samples_differ() -> None:
    base_r, new_r = _mcnemar_pair()
    baseline = _result({"linf-0.3": base_r}, name="base")
    new = _result({"linf-0.3": new_r}, indices=list(range(100, 130)))
    report = evaluate_gate(new, baseline, GatePolicy())
    reg = _rule(report, "regression[linf-0.3]")
    assert reg.figures["paired"] == 0.0
    assert "unpaired" in reg.reason and "indices" in reg.reason and "Fisher" in reg.reason
    p = stats.fisher_exact([[20, 10], [14, 16]], alternative="greater").pvalue
    assert reg.figures["p_value"] == pytest.approx(p)
    assert reg.status == ("fail" if p <= 0.05 else "pass")
    assert reg.figures["drop_low"] < 0.2 < reg.figures["drop_high"]
    assert any("unpaired" in w for w in report.warnings)
    # A different data set: nothing to compare; every regression rule fails and says why.
    other = _result({"linf-0.3": new_r}, fingerprint="0" * 64)
    report = evaluate_gate(other, baseline, GatePolicy())
    for rule in ("regression[linf-0.3]", "regression[clean]"):
        assert _rule(report, rule).status == "fail"
        assert "data sets differ" in _rule(report, rule).reason
    assert not report.passed


def test_unlike_results_are_not_compared() -> None:
    """Another tier, a smaller epsilon under the same threat name, fewer or weaker attacks: the
    regression rules fail naming the difference (they used to pass with a warning); another
    attack seed is what noise looks like and still compares."""
    base_r, _ = _mcnemar_pair()
    baseline = _result({"linf-0.3": base_r}, name="base").model_copy(update={"tier": "full"})
    same = _result({"linf-0.3": base_r}).model_copy(update={"tier": "full"})
    assert evaluate_gate(same, baseline, GatePolicy(tier="full")).passed

    quick = same.model_copy(update={"tier": "quick"})
    report = evaluate_gate(quick, baseline, GatePolicy(tier="full"))
    assert not report.passed
    assert "tiers differ" in _rule(report, "regression[linf-0.3]").reason
    assert _rule(report, "regression[clean]").status == "fail"
    assert any("policy's tier 'full'" in w for w in report.warnings)
    assert report.new.tier == "quick" and report.baseline is not None
    assert report.baseline.tier == "full" and report.baseline.data_fingerprint == FP
    old = baseline.model_copy(update={"schema_version": "1.0.0"})
    assert any(
        "schema versions differ" in w for w in evaluate_gate(same, old, GatePolicy()).warnings
    )

    t = same.threats[0]

    def with_threat(**update: Any) -> SuiteResult:
        return same.model_copy(update={"threats": [t.model_copy(update=update)]})

    def with_params(params: dict[str, Any]) -> SuiteResult:
        return with_threat(attacks=[t.attacks[0].model_copy(update={"params": params})])

    assert evaluate_gate(with_params({"steps": 10, "seed": 7}), baseline, GatePolicy()).passed
    smaller = t.threat.model_copy(update={"epsilon": 0.1})
    renamed = t.attacks[0].model_copy(update={"name": "fgsm"})
    for changed, why in (
        (with_threat(threat=smaller), "epsilon 0.3 → 0.1"),
        (with_params({"steps": 2}), "steps 10 → 2"),
        (with_threat(attacks=[renamed]), "['pgd'] → ['fgsm']"),
    ):
        rule = _rule(evaluate_gate(changed, baseline, GatePolicy()), "regression[linf-0.3]")
        assert rule.status == "fail" and why in rule.reason and "not comparable" in rule.reason
    # A parameter recorded on one side only counts as its default (a library upgrade that adds
    # a parameter does not make old baselines incomparable); a non-default one does not.
    assert evaluate_gate(
        with_params({"steps": 10, "eot_samples": 1}), baseline, GatePolicy()
    ).passed
    assert not evaluate_gate(
        with_params({"steps": 10, "eot_samples": 5}), baseline, GatePolicy()
    ).passed


# -- absolute rules ------------------------------------------------------------------------------


def test_absolute_rules_and_the_default_key() -> None:
    new = _result(
        {"linf-0.3": _pattern(60, 100), "l2-1.0": _pattern(40, 100)},
        clean=_pattern(80, 100),
        ece={"linf-0.3": 0.1, "l2-1.0": 0.3},
    )
    baseline = _result(
        {"linf-0.3": _pattern(60, 100), "l2-1.0": _pattern(40, 100)},
        clean=_pattern(90, 100),
        name="base",
    )
    # "*" applies to every threat not named; a named one overrides it.
    ok = evaluate_gate(
        new, None, GatePolicy(min_robust_accuracy={"*": 0.5, "l2-1.0": 0.3}, regression=False)
    )
    assert ok.passed, [r.reason for r in ok.failures()]
    assert [r.rule for r in ok.rules] == [
        "min_robust_accuracy[linf-0.3]",
        "min_robust_accuracy[l2-1.0]",
    ]
    low = evaluate_gate(new, None, GatePolicy(min_robust_accuracy={"*": 0.5}))
    assert [r.rule for r in low.failures()] == ["min_robust_accuracy[l2-1.0]"]
    r = low.failures()[0]
    assert r.threat == "l2-1.0" and "40.0%" in r.reason and "50.0%" in r.reason
    assert "95% CI" in r.reason and r.figures["low"] < 0.4 < r.figures["high"]
    # No baseline: the regression rules are skipped, the absolute ones still decide.
    assert _rule(low, "regression").status == "skip"

    # Attack success over the attacked samples: clean-correct 0-79, robust 0-59 (linf) and
    # 0-39 (l2): broken 20/80 = 25% and 40/80 = 50%.
    asr = evaluate_gate(new, None, GatePolicy(max_attack_success_rate={"*": 0.3}, regression=False))
    assert [r.rule for r in asr.failures()] == ["max_attack_success_rate[l2-1.0]"]
    assert _rule(asr, "max_attack_success_rate[linf-0.3]").figures["value"] == pytest.approx(0.25)
    bad = asr.failures()[0]
    assert bad.figures["value"] == pytest.approx(0.5) and "40/80" in bad.reason
    missing = evaluate_gate(new, None, GatePolicy(max_attack_success_rate={"nope": 0.1}))
    assert [r.rule for r in missing.failures()] == ["max_attack_success_rate[nope]"]

    # Attacked ECE, per threat with "*".
    ece = evaluate_gate(new, None, GatePolicy(max_attacked_ece={"*": 0.2}))
    assert [r.rule for r in ece.failures()] == ["max_attacked_ece[l2-1.0]"]
    no_cal = _result({"linf-0.3": _pattern(6, 10)}, ece={"linf-0.3": None})
    assert not evaluate_gate(no_cal, None, GatePolicy(max_attacked_ece={"*": 0.2})).passed

    # Clean accuracy: absolute minimum and drop from the baseline (10 points here).
    assert not evaluate_gate(new, None, GatePolicy(min_clean_accuracy=0.85)).passed
    assert evaluate_gate(new, None, GatePolicy(min_clean_accuracy=0.8)).passed
    drop = evaluate_gate(new, baseline, GatePolicy(max_clean_accuracy_drop=0.05, min_effect=1))
    assert [r.rule for r in drop.failures()] == ["max_clean_accuracy_drop"]
    assert drop.failures()[0].figures["drop"] == pytest.approx(0.1)
    assert evaluate_gate(
        new, baseline, GatePolicy(max_clean_accuracy_drop=0.15, min_effect=1)
    ).passed
    assert (
        _rule(
            evaluate_gate(new, None, GatePolicy(max_clean_accuracy_drop=0.1)),
            "max_clean_accuracy_drop",
        ).status
        == "skip"
    )


def test_latency_rule() -> None:
    new = _result({"linf-0.3": _pattern(6, 10)})
    latency = LatencyFigures(
        n_calls=100,
        p50_ms=2.0,
        p95_ms=8.0,
        p99_ms=12.5,
        mean_ms=3.0,
        batch_size=500,
        throughput_per_s=1000.0,
    )
    slow = new.model_copy(update={"latency": latency})
    report = evaluate_gate(slow, None, GatePolicy(max_p99_latency_ms=10))
    (fail,) = report.failures()
    assert fail.rule == "max_p99_latency_ms" and "12.50 ms" in fail.reason
    assert fail.figures == {"value": 12.5, "threshold": 10.0, "n_calls": 100.0}
    assert evaluate_gate(slow, None, GatePolicy(max_p99_latency_ms=20)).passed
    # A policy with a latency limit needs latency figures.
    bare = new.model_copy(update={"latency": None})
    assert (
        "no latency"
        in evaluate_gate(bare, None, GatePolicy(max_p99_latency_ms=20)).failures()[0].reason
    )


def test_threats_missing_new_or_unknown() -> None:
    baseline = _result({"linf-0.3": _pattern(6, 10), "linf-0.1": _pattern(8, 10)}, name="base")
    new = _result({"linf-0.3": _pattern(6, 10), "l2-0.5": _pattern(5, 10)})
    report = evaluate_gate(new, baseline, GatePolicy())
    assert not report.passed
    missing = _rule(report, "regression[linf-0.1]")
    assert missing.status == "fail" and "missing" in missing.reason
    added = _rule(report, "regression[l2-0.5]")
    assert added.status == "skip" and "new" in added.reason
    assert _rule(report, "regression[linf-0.3]").status == "pass"
    # A threat the policy names must be in the result.
    named = evaluate_gate(new, None, GatePolicy(min_robust_accuracy={"linf-0.1": 0.5}))
    (fail,) = named.failures()
    assert fail.rule == "min_robust_accuracy[linf-0.1]" and "no such threat" in fail.reason


def _audit(threat: str, verdict: str) -> AuditResult:
    status = "pass" if verdict == "pass" else verdict
    return AuditResult(
        threat=threat,
        n_inputs=10,
        n_samples=9,
        verdict=verdict,  # type: ignore[arg-type]
        summary=f"verdict {verdict}",
        checks=[AuditCheck(name="gradient_health", status=status, reason="r", figures={})],  # type: ignore[arg-type]
        stochastic=False,
        eot_samples=1,
        seed=0,
        wall_time_s=0.1,
    )


def test_audit_and_certification_rules() -> None:
    new = _result({"a": _pattern(6, 10), "b": _pattern(6, 10)})
    policy = GatePolicy(require_audit_pass=True)
    assert "has none" in evaluate_gate(new, None, policy).failures()[0].reason
    warned = new.model_copy(update={"audit": [_audit("a", "pass"), _audit("b", "warn")]})
    report = evaluate_gate(warned, None, policy)
    assert report.passed and "warn" in _rule(report, "require_audit_pass[b]").reason
    failed = new.model_copy(update={"audit": [_audit("a", "fail"), _audit("b", "warn")]})
    (fail,) = evaluate_gate(failed, None, policy).failures()
    assert fail.rule == "require_audit_pass[a]" and "gradient_health" in fail.reason

    cert = CertificationResult(
        sigma=0.25,
        n0=10,
        n=100,
        alpha=0.001,
        batch_size=100,
        seed=0,
        num_classes=10,
        device="cpu",
        n_samples=4,
        labels=[0, 1, 2, 3],
        predictions=[0, 1, 2, -1],
        radii=[0.8, 0.4, 0.1, 0.0],
        correct=[True, True, True, False],
        abstain_rate=0.25,
        clean_accuracy=0.75,
        certified_accuracy={"0.0": 0.75, "0.5": 0.25},
        average_certified_radius=0.325,
        max_certifiable_radius=0.7,
        wall_time_s=1.0,
        samples_per_second=100.0,
    )
    certified = new.model_copy(update={"certification": cert})
    # YAML gives numeric keys; they become the result's "0.5"-style keys.
    policy = parse_policy({"min_certified_accuracy": {0.5: 0.2, "0.25": 0.6}})
    assert set(policy.min_certified_accuracy) == {"0.5", "0.25"}
    report = evaluate_gate(certified, None, policy)
    assert _rule(report, "min_certified_accuracy[0.5]").status == "pass"
    bad = _rule(report, "min_certified_accuracy[0.25]")
    assert bad.status == "fail" and bad.figures["value"] == pytest.approx(0.5)
    assert not evaluate_gate(new, None, policy).passed  # no certification at all


# -- policy files --------------------------------------------------------------------------------


def test_policy_tiers(tmp_path: Path) -> None:
    raw = {
        "alpha": 0.01,
        "min_robust_accuracy": {"*": 0.5},
        "tiers": {
            "quick": {"min_robust_accuracy": {"*": 0.4}},
            "full": {"min_effect": 0.02, "max_p99_latency_ms": 5},
        },
    }
    plain = parse_policy(raw)
    assert plain.tier is None and plain.alpha == 0.01 and plain.min_effect == 0.0
    quick = parse_policy(raw, "quick")
    assert quick.tier == "quick" and quick.min_robust_accuracy == {"*": 0.4}
    assert quick.alpha == 0.01  # inherited
    full = parse_policy(raw, "full")
    assert full.min_robust_accuracy == {"*": 0.5} and full.min_effect == 0.02
    # Only tiers: "full" by default.
    only = {"tiers": raw["tiers"]}
    assert parse_policy(only).tier == "full"
    with pytest.raises(SpecError) as info:
        parse_policy(raw, "nightly")
    assert info.value.errors[0][0] == "tiers" and "quick" in info.value.errors[0][1]
    with pytest.raises(SpecError):
        parse_policy({"tiers": {"quick": {}}})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_policy(path, "quick") == quick


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"min_robust_accuracy": {"linf": 1.5}}, "min_robust_accuracy.linf"),
        ({"tiers": {"quick": {"alpha": 0}}}, "tiers.quick.alpha"),
        ({"tiers": {"quick": {"max_attacked_ece": {"*": "x"}}}}, "tiers.quick.max_attacked_ece.*"),
        ({"min_robust_acc": {"*": 0.5}}, "min_robust_acc"),
        ({"max_p99_latency_ms": -1}, "max_p99_latency_ms"),
        ({"min_certified_accuracy": {"wide": 0.5}}, "min_certified_accuracy"),
        ({"min_effect": 2}, "min_effect"),
    ],
)
def test_bad_policy_names_the_field(tmp_path: Path, raw: dict[str, Any], expected: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_policy(path)
    assert expected in [p for p, _ in info.value.errors], info.value.errors
    assert info.value.source == str(path)


def test_unreadable_policy(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="mapping"):
        load_policy(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_policy(tmp_path / "bad.yaml")


# -- JUnit XML -----------------------------------------------------------------------------------


def _check_counts(el: ET.Element, cases: list[ET.Element]) -> None:
    assert int(el.get("tests", "-1")) == len(cases)
    assert int(el.get("failures", "-1")) == sum(c.find("failure") is not None for c in cases)
    assert int(el.get("skipped", "-1")) == sum(c.find("skipped") is not None for c in cases)
    assert int(el.get("errors", "-1")) == 0
    total = sum(float(c.get("time", "nan")) for c in cases)
    assert float(el.get("time", "nan")) == pytest.approx(total, abs=1e-9)


def test_junit_xml_round_trip() -> None:
    odd = 'odd <name> & "quotes"\x01'
    base_r, new_r = _mcnemar_pair()
    baseline = _result(
        {"linf-0.3": base_r, odd: _pattern(20, 30), "gone": _pattern(3, 30)}, name="base"
    )
    new = _result({"linf-0.3": new_r, odd: _pattern(20, 30), "fresh": _pattern(3, 30)})
    policy = GatePolicy(min_robust_accuracy={"*": 0.1, "fresh": 0.2}, max_clean_accuracy_drop=0.1)
    report = evaluate_gate(new, baseline, policy)
    failing = {r.rule for r in report.failures()}
    assert failing == {"regression[linf-0.3]", "regression[gone]", "min_robust_accuracy[fresh]"}
    xml = to_junit_xml(new, report)
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    threats, gate = root.findall("testsuite")
    assert threats.get("name") == "robustops.threats" and gate.get("name") == "robustops.gate"
    assert threats.get("timestamp") == "2025-01-02T03:04:05"  # UTC, no zone (the JUnit schema)

    tcases = threats.findall("testcase")
    assert [c.get("name") for c in tcases] == ["linf-0.3", 'odd <name> & "quotes"', "fresh"]
    assert {c.get("classname") for c in tcases} == {"robustops.threat"}
    assert all(float(c.get("time", "nan")) == 1.25 for c in tcases)  # seconds, to the ms
    failed_threats = [c.get("name") for c in tcases if c.find("failure") is not None]
    assert failed_threats == ["linf-0.3", "fresh"]
    out = tcases[0].findtext("system-out") or ""
    assert "robust accuracy 0.4667 (14/30)" in out and "attack pgd" in out
    assert "McNemar" in (tcases[0].find("failure").text or "")  # type: ignore[union-attr]
    _check_counts(threats, tcases)

    gcases = gate.findall("testcase")
    assert [c.get("name") for c in gcases] == [r.rule.replace("\x01", "") for r in report.rules]
    for case, rule in zip(gcases, report.rules, strict=True):
        assert (case.find("failure") is not None) == (rule.status == "fail")
        assert (case.find("skipped") is not None) == (rule.status == "skip")
    assert {c.get("name") for c in gcases if c.find("failure") is not None} == failing
    assert any(c.find("skipped") is not None for c in gcases)  # the new threat
    _check_counts(gate, gcases)
    _check_counts(root, tcases + gcases)

    # Without a report: the threats alone, nothing failing.
    plain = ET.fromstring(to_junit_xml(new, None))
    (only,) = plain.findall("testsuite")
    assert only.get("failures") == "0" and len(only.findall("testcase")) == 3


def test_junit_xml_reads_back_with_junitparser() -> None:
    junitparser = pytest.importorskip("junitparser")
    base_r, new_r = _mcnemar_pair()
    baseline = _result({"linf-0.3": base_r, "gone": base_r}, name="base")
    new = _result({"linf-0.3": new_r})
    report = evaluate_gate(new, baseline, GatePolicy(max_clean_accuracy_drop=0.1))
    parsed = junitparser.JUnitXml.fromstring(to_junit_xml(new, report).encode())
    suites = list(parsed)
    assert [s.name for s in suites] == ["robustops.threats", "robustops.gate"]
    for suite in suites:
        declared = (suite.tests, suite.failures, suite.errors, suite.skipped, suite.time)
        suite.update_statistics()  # recount from the test cases
        assert declared == (suite.tests, suite.failures, suite.errors, suite.skipped, suite.time)
    gate = suites[1]
    kinds = {c.name: [type(r).__name__ for r in c.result] for c in gate}
    assert kinds["regression[linf-0.3]"] == ["Failure"]
    assert kinds["regression[gone]"] == ["Failure"]
    assert kinds["max_clean_accuracy_drop"] == []
    assert len(kinds) == len(report.rules)


# -- real models ---------------------------------------------------------------------------------


@pytest.fixture
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def robust_cnn(mnist: Dataset) -> SmallCNN:
    """Quick PGD-AT (ε = 0.2, 1000 images, 3 epochs; a few seconds): robust accuracy ~55% under
    PGD-10 at ε = 0.2, where the undefended CNN keeps under 10%."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(mnist.x_train.shape[0], generator=gen)[:1000]
        recipe = Recipe.model_validate(
            {
                "epochs": 3,
                "batch_size": 32,
                "lr": 2e-3,
                "objective": {"name": "pgd-at", "steps": 5},
                "threats": [{"kind": "linf", "epsilon": 0.2}],
                "curriculum": {"kind": "linear", "ramp_epochs": 1},
            }
        )
        model = small_cnn(width=16, hidden=64, seed=0)
        fit(model, mnist.x_train[pick], mnist.y_train[pick], recipe, seed=0)
    finally:
        torch.set_num_threads(before)
    return model.eval()


THREAT = ThreatModel(name="linf-0.2", norm="linf", epsilon=0.2)


def _evaluate(model: torch.nn.Module, mnist: Dataset, name: str, seed: int = 0) -> SuiteResult:
    suite = [SuiteThreat(THREAT, [build_attack("pgd", THREAT, steps=10, seed=seed)])]
    return run_suite(
        model,
        mnist.x_test[:200],
        mnist.y_test[:200],
        suite,
        SuiteOptions(seed=seed),
        record=SuiteRecord(name=name, data_info=mnist.describe()),
    )


@pytest.mark.usefixtures("_one_thread")
def test_planted_regression_fails(
    mnist: Dataset, trained_cnn: SmallCNN, robust_cnn: SmallCNN
) -> None:
    baseline = _evaluate(robust_cnn, mnist, "pgd-at")
    new = _evaluate(trained_cnn, mnist, "standard")
    assert baseline.threats[0].robust_accuracy > new.threats[0].robust_accuracy + 0.25
    report = evaluate_gate(new, baseline, GatePolicy(alpha=0.05, min_effect=0.05))
    assert not report.passed
    (fail,) = report.failures()
    assert fail.rule == "regression[linf-0.2]" and fail.threat == "linf-0.2"
    assert "McNemar" in fail.reason and "p = " in fail.reason and "200 samples" in fail.reason
    assert fail.figures["paired"] == 1.0 and fail.figures["p_value"] < 1e-6
    # The undefended model is more accurate on clean inputs: no clean regression.
    assert _rule(report, "regression[clean]").status == "pass"
    assert report.warnings == []
    assert report.new.data_fingerprint == mnist.fingerprint


@pytest.mark.usefixtures("_one_thread")
def test_noise_only_passes(mnist: Dataset, robust_cnn: SmallCNN) -> None:
    """The same model, other attack seeds: the robust samples differ a little, never
    significantly."""
    a = _evaluate(robust_cnn, mnist, "seed0", seed=0)
    b = _evaluate(robust_cnn, mnist, "seed1", seed=1)
    ra, rb = a.threats[0], b.threats[0]
    assert 0.2 < ra.robust_accuracy < 0.9 and 0.2 < rb.robust_accuracy < 0.9
    assert ra.robust != rb.robust  # real noise: some samples flip
    for new, base in ((a, b), (b, a)):
        report = evaluate_gate(new, base, GatePolicy())
        assert report.passed, [r.reason for r in report.failures()]
        reg = _rule(report, "regression[linf-0.2]")
        assert reg.figures["paired"] == 1.0 and reg.figures["b"] + reg.figures["c"] > 0
        assert reg.figures["p_value"] > 0.05


# -- the command ---------------------------------------------------------------------------------


def test_cli_gate(tmp_path: Path) -> None:
    base_r, new_r = _mcnemar_pair()
    baseline = _result({"linf-0.3": base_r}, name="base").save(tmp_path / "baseline.json")
    same = _result({"linf-0.3": base_r}).save(tmp_path / "same.json")
    worse = _result({"linf-0.3": new_r}).save(tmp_path / "worse.json")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "min_robust_accuracy": {"*": 0.3},
                "tiers": {"quick": {"alpha": 0.01}, "full": {"alpha": 0.05}},
            }
        )
    )
    runner = CliRunner()

    def gate(*args: str) -> Any:
        return runner.invoke(app, ["gate", "--policy", str(policy), *args])

    ok = gate("--result", str(same), "--baseline", str(baseline))
    assert ok.exit_code == 0, ok.output
    assert "gate passed" in ok.output and "regression[linf-0.3]" in ok.output

    junit = tmp_path / "reports" / "gate.xml"
    bad = gate("-r", str(worse), "-b", str(baseline), "--tier", "full", "--junit", str(junit))
    assert bad.exit_code == 1, bad.output
    assert "gate failed" in bad.output and "McNemar" in bad.output and "0.0352" in bad.output
    xml = ET.parse(junit).getroot()
    assert xml.get("failures") == "2"  # the threat's case and the rule's case
    # The quick tier's alpha of 0.01: not significant.
    assert gate("-r", str(worse), "-b", str(baseline), "--tier", "quick").exit_code == 0
    # Absolute rules only, no baseline.
    assert gate("-r", str(worse)).exit_code == 0

    # Invalid input: exit 2 with the field path.
    policy.write_text(yaml.safe_dump({"tiers": {"quick": {"min_effect": -1}}}))
    invalid = gate("-r", str(worse), "--tier", "quick")
    assert invalid.exit_code == 2
    assert "tiers.quick.min_effect" in invalid.output and "Traceback" not in invalid.output
    policy.write_text(yaml.safe_dump({"min_robust_accuracy": {"*": 0.3}}))
    unknown_tier = gate("-r", str(worse), "--tier", "nightly")
    assert unknown_tier.exit_code == 2 and "tiers" in unknown_tier.output
    missing = gate("-r", str(tmp_path / "nope.json"))
    assert missing.exit_code == 2 and "cannot read" in missing.output
    (tmp_path / "broken.json").write_text('{"name": 3}')
    broken = gate("-r", str(worse), "-b", str(tmp_path / "broken.json"))
    assert broken.exit_code == 2 and "created_at" in broken.output
    assert math.isfinite(float(xml.get("time", "nan")))


def test_policy_read_from_the_pipeline_spec(tmp_path: Path) -> None:
    from robustops.config import load_spec as _load_spec

    root = Path(__file__).resolve().parent.parent
    spec_path = root / "configs" / "mnist.yaml"
    full = load_policy(spec_path)
    quick = load_policy(spec_path, tier="quick")
    assert full.require_audit_pass and not quick.require_audit_pass
    assert quick.tier == "quick" and quick.min_robust_accuracy == full.min_robust_accuracy
    assert _load_spec(spec_path).gate is not None  # the spec validates its gate section too
    raw = yaml.safe_load(spec_path.read_text())
    raw["gate"]["min_effect"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_policy(bad)
    assert "gate.min_effect" in [p for p, _ in info.value.errors]
    del raw["gate"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_policy(bad)
    assert info.value.errors[0][0] == "gate"


# -- results that lie about themselves (honest-numbers and hostile-file probes) ------------------


def _edit(path: Path, edit: Any) -> Path:
    """Rewrite the JSON file at ``path`` through ``edit(data)`` (in place), as a hand would."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_an_edited_result_file_is_refused(tmp_path: Path) -> None:
    """A robust accuracy edited from 0.63 to 0.99, or a clean accuracy from 0.86 to 0.99, used
    to load and pass a 0.95 minimum; now the figures are recomputed from the per-sample record,
    and a consistent edit still breaks the content hash."""
    result = _result({"linf-0.3": _pattern(63, 100)}, clean=_pattern(86, 100))
    path = result.save(tmp_path / "r.json")
    loaded = SuiteResult.load(path)
    assert loaded.content_sha256 is not None and loaded.threats == result.threats

    def robust(d: dict[str, Any]) -> None:
        d["threats"][0]["robust_accuracy"] = 0.99

    def clean(d: dict[str, Any]) -> None:
        d["clean_accuracy"] = 0.99

    for edit, field in ((robust, "robust_accuracy"), (clean, "clean_accuracy")):
        bad = _edit(result.save(tmp_path / f"{field}.json"), edit)
        with pytest.raises(SpecError) as info:
            SuiteResult.load(bad)
        assert field in str(info.value) and "per-sample record" in str(info.value)

    def consistent(d: dict[str, Any]) -> None:  # every figure edited together
        t = d["threats"][0]
        t["robust"] = [True] * 86 + [False] * 14
        t["broken_by"] = [None] * 86 + ["pgd"] * 0 + [None] * 14
        t["n_robust"], t["robust_accuracy"] = 86, 0.86
        t["attack_success_rate"] = 0.0
        t["attacks"][0].update(n_broken=0, success_rate=0.0)

    forged = _edit(result.save(tmp_path / "forged.json"), consistent)
    with pytest.raises(SpecError) as info:
        SuiteResult.load(forged)
    assert "content_sha256" in str(info.value) and "edited" in str(info.value)
    stripped = _edit(result.save(tmp_path / "stripped.json"), lambda d: d.pop("content_sha256"))
    with pytest.raises(SpecError, match="content_sha256"):
        SuiteResult.load(stripped)

    runner = CliRunner()
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"min_robust_accuracy": {"linf-0.3": 0.95}}))
    bad = _edit(result.save(tmp_path / "bad.json"), robust)
    out = runner.invoke(app, ["gate", "-r", str(bad), "--policy", str(policy)])
    assert out.exit_code == 2 and "Traceback" not in out.output


@pytest.mark.parametrize("version", ["9.9.9", "1.99.0", "2.0.0", "one"])
def test_unknown_schema_versions_are_refused(tmp_path: Path, version: str) -> None:
    path = _result({"linf-0.3": _pattern(6, 10)}).save(tmp_path / "r.json")
    _edit(path, lambda d: d.update(schema_version=version, content_sha256=None))
    with pytest.raises(SpecError) as info:
        SuiteResult.load(path)
    assert "schema_version" in str(info.value)


def test_older_schemas_without_a_hash_still_load(tmp_path: Path) -> None:
    path = _result({"linf-0.3": _pattern(6, 10)}).save(tmp_path / "r.json")

    def old(d: dict[str, Any]) -> None:
        d.update(schema_version="1.2.0")
        del d["content_sha256"]

    assert SuiteResult.load(_edit(path, old)).schema_version == "1.2.0"


def test_a_wildcard_rule_needs_a_threat_and_the_spec_its_threats(tmp_path: Path) -> None:
    empty = _result({}, clean=_pattern(9, 10))
    report = evaluate_gate(empty, None, GatePolicy(min_robust_accuracy={"*": 0.5}))
    assert not report.passed
    assert "no threat" in _rule(report, "min_robust_accuracy[*]").reason
    # A policy read from a spec knows which threats its evaluation declares (per tier).
    root = Path(__file__).resolve().parent.parent
    policy = load_policy(root / "configs" / "mnist.yaml")
    assert policy.threats == ["linf-0.3", "l2-2.0", "patch-6"]
    only_linf = _result({"linf-0.3": _pattern(9, 10)})
    report = evaluate_gate(only_linf, None, policy.model_copy(update={"max_p99_latency_ms": None}))
    missing = _rule(report, "threats[l2-2.0]")
    assert missing.status == "fail" and "declares" in missing.reason
    raw = yaml.safe_load((root / "configs" / "mnist.yaml").read_text())
    raw["evaluation"]["tiers"]["quick"]["threats"] = ["linf-0.3"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert load_policy(spec, tier="quick").threats == ["linf-0.3"]


def test_interval_judging_does_not_let_a_small_sample_pass_by_luck() -> None:
    small = _result({"linf-0.3": _pattern(19, 20)})  # 95% robust on 20 samples
    rules = {"min_robust_accuracy": {"*": 0.9}, "max_attack_success_rate": {"*": 0.1}}
    assert evaluate_gate(small, None, GatePolicy(**rules)).passed
    strict = evaluate_gate(small, None, GatePolicy(judge="interval", **rules))
    low = _rule(strict, "min_robust_accuracy[linf-0.3]")
    high = _rule(strict, "max_attack_success_rate[linf-0.3]")
    assert low.status == "fail" and low.figures["judged"] == pytest.approx(
        wilson_interval(19, 20)[0]
    )
    assert high.status == "fail" and "upper end" in high.reason
    large = _result({"linf-0.3": _pattern(1900, 2000)})
    assert evaluate_gate(large, None, GatePolicy(judge="interval", **rules)).passed


def test_unadapted_attacks_on_a_stochastic_model_fail_unless_allowed() -> None:
    from robustops.evaluation.result import StochasticRecord

    record = StochasticRecord(
        detected=True,
        max_logit_gap=2.0,
        eot_samples=10,
        adapted_attacks=["pgd"],
        unadapted_attacks=["my-plugin"],
    )
    new = _result({"linf-0.3": _pattern(6, 10)}).model_copy(update={"stochastic": record})
    report = evaluate_gate(new, None, GatePolicy())
    rule = _rule(report, "adapted_attacks")
    assert rule.status == "fail" and "my-plugin" in rule.reason
    assert evaluate_gate(new, None, GatePolicy(allow_unadapted_attacks=True)).passed
    adapted = record.model_copy(update={"unadapted_attacks": []})
    assert evaluate_gate(new.model_copy(update={"stochastic": adapted}), None, GatePolicy()).passed
