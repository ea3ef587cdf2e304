"""JUnit XML for CI reporters: one test case per threat and one per gate rule.

The document holds up to two ``<testsuite>`` elements inside ``<testsuites>``:

* ``robustops.threats``: one ``<testcase classname="robustops.threat">`` per threat of the
  result, named after the threat, ``time`` its wall time; a ``<failure>`` when some gate rule
  about that threat failed; ``<system-out>`` with the robust accuracy and the attacks' figures.
* ``robustops.gate`` (when a gate report is given): one ``<testcase classname="robustops.gate">``
  per rule, with ``<failure>`` for a failing rule and ``<skipped>`` for a skipped one; the
  reason is the message and ``<system-out>`` lists the rule's figures.

Every element carries consistent ``tests``, ``failures``, ``errors``, ``skipped`` and ``time``
counts. Characters that XML 1.0 cannot hold (control characters) are dropped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

from robustops.evaluation.result import SuiteResult, ThreatResult
from robustops.gate import GateReport, RuleOutcome

__all__ = ["to_junit_xml"]

_INVALID_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (ElementTree escapes the rest)."""
    return _INVALID_XML.sub("", text)


def _timestamp(iso: str) -> str | None:
    """``iso`` as the JUnit schema's timestamp: UTC, ``YYYY-MM-DDTHH:MM:SS`` without a zone."""
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _suite(root: ET.Element, name: str, created_at: str) -> ET.Element:
    suite = ET.SubElement(root, "testsuite", name=name)
    stamp = _timestamp(created_at)
    if stamp is not None:
        suite.set("timestamp", stamp)
    return suite


def _secs(t: float) -> str:
    return f"{max(t, 0.0):.3f}"


@dataclass
class _Counts:
    tests: int = 0
    failures: int = 0
    skipped: int = 0
    time: float = 0.0

    def add(self, other: _Counts) -> None:
        self.tests += other.tests
        self.failures += other.failures
        self.skipped += other.skipped
        self.time += other.time

    def stamp(self, el: ET.Element) -> None:
        el.set("tests", str(self.tests))
        el.set("failures", str(self.failures))
        el.set("errors", "0")
        el.set("skipped", str(self.skipped))
        el.set("time", _secs(self.time))


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


def _threat_suite(root: ET.Element, new: SuiteResult, report: GateReport | None) -> _Counts:
    suite = _suite(root, "robustops.threats", new.created_at)
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("result", new.name),
        ("n_samples", str(new.n_samples)),
        ("clean_accuracy", f"{new.clean_accuracy:.4f}"),
        ("model_sha256", str(new.model.get("weights_sha256", ""))),
        ("data_fingerprint", str(new.data.get("fingerprint", ""))),
    ):
        ET.SubElement(props, "property", name=name, value=_clean(value))
    counts = _Counts()
    for t in new.threats:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="robustops.threat",
            name=_clean(t.name),
            time=_secs(t.wall_time_s),
        )
        counts.tests += 1
        counts.time += float(case.get("time", "0"))  # the rounded figure: the sums stay exact
        failed = [r for r in report.for_threat(t.name) if r.status == "fail"] if report else []
        if failed:
            counts.failures += 1
            failure = ET.SubElement(
                case,
                "failure",
                message=_clean("; ".join(r.rule for r in failed)),
                type="robustops.gate",
            )
            failure.text = _clean("\n".join(f"{r.rule}: {r.reason}" for r in failed))
        ET.SubElement(case, "system-out").text = _clean(_threat_out(t, new.n_samples))
    counts.stamp(suite)
    return counts


def _gate_suite(root: ET.Element, report: GateReport) -> _Counts:
    suite = _suite(root, "robustops.gate", report.new.created_at)
    props = ET.SubElement(suite, "properties")
    pairs = [("passed", str(report.passed).lower()), ("tier", report.tier or "")]
    if report.baseline is not None:
        pairs += [
            ("baseline", report.baseline.name),
            ("baseline_created_at", report.baseline.created_at),
        ]
    pairs += [(f"warning.{i}", w) for i, w in enumerate(report.warnings)]
    for name, value in pairs:
        ET.SubElement(props, "property", name=name, value=_clean(value))
    counts = _Counts()
    for rule in report.rules:
        case = ET.SubElement(
            suite, "testcase", classname="robustops.gate", name=_clean(rule.rule), time=_secs(0.0)
        )
        counts.tests += 1
        if rule.status == "fail":
            counts.failures += 1
            failure = ET.SubElement(
                case, "failure", message=_clean(rule.reason), type="robustops.gate"
            )
            failure.text = _clean(rule.reason)
        elif rule.status == "skip":
            counts.skipped += 1
            ET.SubElement(case, "skipped", message=_clean(rule.reason))
        out = rule.reason if not rule.figures else f"{rule.reason}\n{_figures_out(rule)}"
        ET.SubElement(case, "system-out").text = _clean(out)
    counts.stamp(suite)
    return counts


def to_junit_xml(new: SuiteResult, report: GateReport | None) -> str:
    """The JUnit XML document (a string with an XML declaration) for ``new`` and, when given,
    the gate ``report`` about it."""
    root = ET.Element("testsuites", name=_clean(f"robustops {new.name}"))
    total = _Counts()
    total.add(_threat_suite(root, new, report))
    if report is not None:
        total.add(_gate_suite(root, report))
    total.stamp(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
