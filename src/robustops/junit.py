"""JUnit XML for CI reporters: one test case per threat and one per gate rule.

The document holds up to two ``<testsuite>`` elements inside ``<testsuites>``:

* ``robustops.threats``: one ``<testcase classname="robustops.threat">`` per threat of the
  result, named after the threat, ``time`` its wall time; a ``<failure>`` when some gate rule
  about that threat failed; ``<system-out>`` with the robust accuracy and the attacks' figures.
* ``robustops.gate`` (when a gate report is given): one ``<testcase classname="robustops.gate">``
  per rule, with ``<failure>`` for a failing rule and ``<skipped>`` for a skipped one; the
  reason is the message and ``<system-out>`` lists the rule's figures.

Every element carries consistent ``tests``, ``failures``, ``errors``, ``skipped`` and ``time``
counts (junitparser builds the document and counts them). Characters that XML 1.0 cannot hold
(control characters) are dropped; attribute values are single lines.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

from robustops.evaluation.result import SuiteResult, ThreatResult
from robustops.gate import GateReport, RuleOutcome

__all__ = ["to_junit_xml"]

_INVALID_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (the writer escapes the rest)."""
    return _INVALID_XML.sub("", text)


def _attr(text: str) -> str:
    """``text`` for an attribute value: cleaned, line breaks and tabs as spaces (the indented
    output would otherwise turn them into spaces on reading, unannounced)."""
    return re.sub("[\t\n\r]", " ", _clean(text))


def _timestamp(iso: str) -> str | None:
    """``iso`` as the JUnit schema's timestamp: UTC, ``YYYY-MM-DDTHH:MM:SS`` without a zone."""
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _suite(name: str, created_at: str, properties: list[tuple[str, str]]) -> TestSuite:
    suite = TestSuite(name)
    stamp = _timestamp(created_at)
    if stamp is not None:
        suite.timestamp = stamp
    for key, value in properties:  # before the test cases, as the schema orders them
        suite.add_property(key, _attr(value))
    return suite


def _secs(t: float) -> float:
    """Seconds rounded to the millisecond: the suites' sums of them stay exact."""
    return round(max(t, 0.0), 3)


def _failure(message: str, text: str) -> Failure:
    failure = Failure(_attr(message), "robustops.gate")
    failure.text = _clean(text)
    return failure


def _threat_out(t: ThreatResult, n: int) -> str:
    lines = [
        f"robust accuracy {t.robust_accuracy:.4f} ({t.n_robust}/{n})",
        f"attack success rate {t.attack_success_rate:.4f}",
        f"threat {t.threat.norm} epsilon {t.threat.epsilon:g} ({t.threat.knowledge})",
        f"total queries {t.total_queries}",
    ]
    if t.calibration is not None:
        lines.append(f"attacked ECE {t.calibration.attacked.ece:.4f}")
    for a in t.attacks:
        pert = (
            ""
            if a.median_perturbation is None
            else f", median perturbation {a.median_perturbation:.4g}"
        )
        lines.append(
            f"attack {a.name}: attacked {a.n_attacked}, broken {a.n_broken} "
            f"(success rate {a.success_rate:.4f}), mean queries {a.mean_queries:.1f}{pert}, "
            f"{a.wall_time_s:.2f} s"
        )
    return "\n".join(lines)


def _figures_out(rule: RuleOutcome) -> str:
    return "\n".join(f"{k} = {v:.6g}" for k, v in rule.figures.items())


def _threat_suite(new: SuiteResult, report: GateReport | None) -> TestSuite:
    suite = _suite(
        "robustops.threats",
        new.created_at,
        [
            ("result", new.name),
            ("n_samples", str(new.n_samples)),
            ("clean_accuracy", f"{new.clean_accuracy:.4f}"),
            ("model_sha256", str(new.model.get("weights_sha256", ""))),
            ("data_fingerprint", str(new.data.get("fingerprint", ""))),
        ],
    )
    for t in new.threats:
        case = TestCase(_attr(t.name), "robustops.threat", _secs(t.wall_time_s))
        failed = [r for r in report.for_threat(t.name) if r.status == "fail"] if report else []
        if failed:
            case.result = [
                _failure(
                    "; ".join(r.rule for r in failed),
                    "\n".join(f"{r.rule}: {r.reason}" for r in failed),
                )
            ]
        case.system_out = _clean(_threat_out(t, new.n_samples))
        suite.add_testcase(case)
    return suite


def _gate_suite(report: GateReport) -> TestSuite:
    properties = [("passed", str(report.passed).lower()), ("tier", report.tier or "")]
    if report.baseline is not None:
        properties += [
            ("baseline", report.baseline.name),
            ("baseline_created_at", report.baseline.created_at),
        ]
    properties += [(f"warning.{i}", w) for i, w in enumerate(report.warnings)]
    suite = _suite("robustops.gate", report.new.created_at, properties)
    for rule in report.rules:
        case = TestCase(_attr(rule.rule), "robustops.gate", 0.0)
        if rule.status == "fail":
            case.result = [_failure(rule.reason, rule.reason)]
        elif rule.status == "skip":
            case.result = [Skipped(_attr(rule.reason))]
        out = rule.reason if not rule.figures else f"{rule.reason}\n{_figures_out(rule)}"
        case.system_out = _clean(out)
        suite.add_testcase(case)
    return suite


def to_junit_xml(new: SuiteResult, report: GateReport | None) -> str:
    """The JUnit XML document (a string with an XML declaration) for ``new`` and, when given,
    the gate ``report`` about it."""
    xml = JUnitXml(_attr(f"robustops {new.name}"))
    xml.add_testsuite(_threat_suite(new, report))
    if report is not None:
        xml.add_testsuite(_gate_suite(report))
    xml.update_statistics()  # type: ignore[no-untyped-call]  # junitparser leaves it unannotated
    out = io.BytesIO()
    xml.write(out, pretty=True)
    return out.getvalue().decode("utf-8")
