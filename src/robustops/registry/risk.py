"""The risk register of one version: its threat catalog joined with its newest evaluation and
its vulnerabilities not yet closed.

Per catalog entry (ranked by risk): the evaluated threats that exercise it, with the residual
robust accuracy and attack success rate of each (and the worst of each over them), or
*uncovered* when no evaluated threat exercises it; the records of vulnerabilities under it (by
catalog entry, or by a threat it lists). Evaluated threats that exercise no entry are listed
too, as are the vulnerabilities, so nothing the registry knows is left out.

Exported as Markdown, as one self-contained HTML page in the style of the evaluation report
(the same document model and backends, :mod:`robustops.report`), and as CSV (one row per
entry and evaluated threat; one row for an uncovered entry).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from robustops.io import atomic_write_text
from robustops.registry.models import Evaluation, Vulnerability, VulnerabilityVersion
from robustops.registry.service import BLOCKING_STATUSES, Registry, label
from robustops.registry.store import RegistryError
from robustops.registry.vulnerabilities import version_catalog
from robustops.report.document import (
    Block,
    Cell,
    Document,
    KeyValues,
    Paragraph,
    Section,
    Status,
    Table,
)
from robustops.report.html import to_html
from robustops.report.markdown import to_markdown
from robustops.threats.catalog import RiskLevel

__all__ = [
    "RISK_FORMATS",
    "RiskEntry",
    "RiskRegister",
    "ThreatFigures",
    "VulnerabilitySummary",
    "render_risk_register",
    "risk_register",
    "write_risk_register",
]

RiskFormat = Literal["md", "html", "csv"]
RISK_FORMATS: tuple[RiskFormat, ...] = ("md", "html", "csv")
"""Formats :func:`render_risk_register` writes."""

CSV_COLUMNS = (
    "version",
    "entry",
    "title",
    "component",
    "channel",
    "owner",
    "likelihood",
    "impact",
    "risk",
    "level",
    "coverage",
    "threat",
    "robust_accuracy",
    "attack_success_rate",
    "n_attacked",
    "vulnerabilities",
    "result_sha256",
)
"""The header of the CSV export."""


@dataclass(frozen=True)
class ThreatFigures:
    """What the newest evaluation measured under one threat."""

    name: str
    robust_accuracy: float
    attack_success_rate: float
    n_attacked: int | None


@dataclass(frozen=True)
class VulnerabilitySummary:
    """A vulnerability not yet closed that affects the version."""

    id: str
    title: str
    threat: str | None
    catalog_entry: str | None
    severity: str
    status: str
    owner: str


@dataclass(frozen=True)
class RiskEntry:
    """One catalog entry with what the evaluation and the vulnerability records say of it.

    ``threats``: the evaluated threats exercising it, in the catalog's order; ``missing``:
    threats it lists that the evaluation did not run; ``vulnerabilities``: ids of the records
    under it."""

    id: str
    title: str
    component: str
    channel: str
    owner: str
    likelihood: int
    impact: int
    risk: int
    level: RiskLevel
    threats: list[ThreatFigures]
    missing: list[str]
    vulnerabilities: list[str]

    @property
    def covered(self) -> bool:
        """Some evaluated threat exercises it."""
        return bool(self.threats)

    @property
    def worst_robust_accuracy(self) -> float | None:
        """The lowest robust accuracy over its threats (None when uncovered)."""
        return min((t.robust_accuracy for t in self.threats), default=None)

    @property
    def worst_attack_success_rate(self) -> float | None:
        """The highest attack success rate over its threats (None when uncovered)."""
        return max((t.attack_success_rate for t in self.threats), default=None)


@dataclass(frozen=True)
class RiskRegister:
    """The risk register of one version (see the module docstring)."""

    version: str
    weights_sha256: str
    catalog_sha256: str | None
    evaluation: dict[str, Any] | None
    entries: list[RiskEntry]
    unmapped_threats: list[ThreatFigures]
    vulnerabilities: list[VulnerabilitySummary]
    notes: list[str] = field(default_factory=list)

    @property
    def uncovered(self) -> list[RiskEntry]:
        """Entries no evaluated threat exercises, ranked."""
        return [e for e in self.entries if not e.covered]


def _newest_evaluation(evaluations: list[Evaluation]) -> Evaluation | None:
    """The newest evaluation that ran some threat (by the result's creation time, then the
    order it was attached in)."""
    with_threats = [e for e in evaluations if e.summary.get("threats")]
    if not with_threats:
        return None
    return max(with_threats, key=lambda e: (str(e.summary.get("created_at") or ""), e.id))


def risk_register(reg: Registry, ref: str) -> RiskRegister:
    """The risk register of the version ``ref``."""
    with reg.store.read() as s:
        v = reg.version_in(s, ref)
        evaluations = list(s.scalars(select(Evaluation).where(Evaluation.version_id == v.id)))
        vulns = list(
            s.scalars(
                select(Vulnerability)
                .join(
                    VulnerabilityVersion,
                    VulnerabilityVersion.vulnerability_id == Vulnerability.id,
                )
                .where(VulnerabilityVersion.version_id == v.id, Vulnerability.status != "closed")
                .order_by(Vulnerability.id)
            )
        )
    catalog = version_catalog(reg.store, v)
    newest = _newest_evaluation(evaluations)
    figures: dict[str, ThreatFigures] = {}
    evaluation = None
    if newest is not None:
        summary = newest.summary
        for t in summary.get("threats", []):
            figures[t["name"]] = ThreatFigures(
                name=t["name"],
                robust_accuracy=float(t["robust_accuracy"]),
                attack_success_rate=float(t["attack_success_rate"]),
                n_attacked=t.get("n_attacked"),
            )
        evaluation = {
            "result_sha256": newest.result_sha256,
            "name": summary.get("name"),
            "created_at": summary.get("created_at"),
            "attached_at": newest.attached_at,
            "seed": summary.get("seed"),
            "n_samples": summary.get("n_samples"),
            "clean_accuracy": summary.get("clean_accuracy"),
            "catalog_sha256": summary.get("catalog_sha256"),
        }
    summaries = [
        VulnerabilitySummary(
            id=x.id,
            title=x.title,
            threat=x.threat,
            catalog_entry=x.catalog_entry,
            severity=x.severity,
            status=x.status,
            owner=x.owner,
        )
        for x in vulns
    ]
    entries = []
    exercised: set[str] = set()
    for e in catalog.ranked() if catalog else []:
        exercised.update(e.exercised_by)
        entries.append(
            RiskEntry(
                **e.register_fields(),
                threats=[figures[t] for t in e.exercised_by if t in figures],
                missing=[t for t in e.exercised_by if t not in figures],
                vulnerabilities=[
                    x.id
                    for x in summaries
                    if x.catalog_entry == e.id
                    or (x.catalog_entry is None and x.threat in e.exercised_by)
                ],
            )
        )
    notes = []
    if catalog is None:
        notes.append(f"{label(v)} was registered without a threat catalog.")
    if newest is None:
        notes.append(f"{label(v)} has no evaluation attached: every entry is uncovered.")
    elif evaluation and catalog and evaluation["catalog_sha256"] not in (None, v.catalog_sha256):
        notes.append(
            "The newest evaluation was run under another threat catalog "
            f"({str(evaluation['catalog_sha256'])[:12]}…) than the version's."
        )
    return RiskRegister(
        version=label(v),
        weights_sha256=v.weights_sha256,
        catalog_sha256=v.catalog_sha256,
        evaluation=evaluation,
        entries=entries,
        unmapped_threats=[f for name, f in figures.items() if name not in exercised],
        vulnerabilities=summaries,
        notes=notes,
    )


# -- exports ---------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _verdict(rr: RiskRegister) -> tuple[str, str]:
    """A callout status and sentence for the register's header."""
    critical = [
        x.id
        for x in rr.vulnerabilities
        if x.severity == "critical" and x.status in BLOCKING_STATUSES
    ]
    unresolved = [x.id for x in rr.vulnerabilities if x.status in ("open", "triaged")]
    uncovered = [e.id for e in rr.uncovered]
    parts = []
    if critical:
        parts.append(f"critical vulnerabilities blocking promotion: {', '.join(critical)}")
    if unresolved:
        parts.append(
            f"{_count(len(unresolved), 'vulnerability', 'vulnerabilities')} open or triaged"
        )
    if uncovered:
        parts.append(
            f"{_count(len(uncovered), 'catalog entry', 'catalog entries')} uncovered: "
            f"{', '.join(uncovered)}"
        )
    if critical or any(e.level == "critical" and not e.covered for e in rr.entries):
        status = "fail"
    elif parts:
        status = "warn"
    else:
        status = "pass"
    sentence = (
        "; ".join(parts) if parts else "every catalog entry is covered; no open vulnerability"
    )
    return status, sentence[0].upper() + sentence[1:] + "."


def _document(rr: RiskRegister) -> Document:
    """The register as a report document (rendered by the report's backends)."""
    status, sentence = _verdict(rr)
    ev = rr.evaluation
    header_items: list[tuple[str, Cell]] = [
        ("version", rr.version),
        ("weights sha256", rr.weights_sha256),
        ("threat catalog", rr.catalog_sha256 or "none registered"),
        ("evaluation", f"{ev['name']} ({ev['result_sha256']})" if ev else "none attached"),
    ]
    if ev:
        header_items += [
            ("evaluated at", str(ev["created_at"])),
            ("samples · seed", f"{ev['n_samples']} · {ev['seed']}"),
            ("clean accuracy", _pct(ev["clean_accuracy"])),
        ]
    header: list[Block] = [
        KeyValues(tuple(header_items)),
        Paragraph.of(Status(status), " ", sentence, callout=status),
        *(Paragraph.of(n, note=True) for n in rr.notes),
    ]
    rows = []
    for e in rr.entries:
        threat_text = (
            ", ".join(
                f"{t.name}: robust {_pct(t.robust_accuracy)}, success {_pct(t.attack_success_rate)}"
                for t in e.threats
            )
            if e.threats
            else "uncovered"
        )
        if e.missing:
            threat_text += f" (not evaluated: {', '.join(e.missing)})"
        rows.append(
            (
                str(e.risk),
                e.level,
                e.id,
                e.title,
                e.component,
                e.owner,
                threat_text,
                _pct(e.worst_robust_accuracy),
                _pct(e.worst_attack_success_rate),
                ", ".join(e.vulnerabilities) or "–",
            )
        )
    register = Section(
        "Risk register",
        "register",
        blocks=[
            Table(
                (
                    "risk",
                    "level",
                    "entry",
                    "title",
                    "component",
                    "owner",
                    "threats (residual figures)",
                    "worst robust acc.",
                    "worst attack success",
                    "vulnerabilities",
                ),
                tuple(rows),
                numeric=frozenset({0, 7, 8}),
                caption="Risk = likelihood × impact (1–25); worst figures over the evaluated "
                "threats exercising the entry.",
            )
            if rows
            else Paragraph.of("No threat catalog: nothing to join.", note=True)
        ],
    )
    uncovered = Section(
        "Uncovered entries",
        "uncovered",
        blocks=[
            Table(
                ("risk", "level", "entry", "title", "owner", "threats it lists"),
                tuple(
                    (str(e.risk), e.level, e.id, e.title, e.owner, ", ".join(e.missing) or "none")
                    for e in rr.uncovered
                ),
                numeric=frozenset({0}),
            )
            if rr.uncovered
            else Paragraph.of("Every catalog entry is exercised by an evaluated threat.", note=True)
        ],
        status=Status("warn" if rr.uncovered else "pass"),
    )
    vulns = Section(
        "Vulnerabilities not closed",
        "vulnerabilities",
        blocks=[
            Table(
                ("id", "severity", "status", "threat", "catalog entry", "owner", "title"),
                tuple(
                    (
                        x.id,
                        x.severity,
                        x.status,
                        x.threat or "–",
                        x.catalog_entry or "–",
                        x.owner,
                        x.title,
                    )
                    for x in rr.vulnerabilities
                ),
            )
            if rr.vulnerabilities
            else Paragraph.of("None.", note=True)
        ],
    )
    sections = [register, uncovered, vulns]
    if rr.unmapped_threats:
        sections.append(
            Section(
                "Evaluated threats outside the catalog",
                "unmapped",
                blocks=[
                    Table(
                        ("threat", "robust acc.", "attack success"),
                        tuple(
                            (t.name, _pct(t.robust_accuracy), _pct(t.attack_success_rate))
                            for t in rr.unmapped_threats
                        ),
                        numeric=frozenset({1, 2}),
                    )
                ],
            )
        )
    return Document(f"Risk register of {rr.version}", header=header, sections=sections)


def _csv(rr: RiskRegister) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    result = rr.evaluation["result_sha256"] if rr.evaluation else ""
    for e in rr.entries:
        base = [
            rr.version,
            e.id,
            e.title,
            e.component,
            e.channel,
            e.owner,
            e.likelihood,
            e.impact,
            e.risk,
            e.level,
        ]
        vulns = ";".join(e.vulnerabilities)
        if not e.threats:
            w.writerow([*base, "uncovered", "", "", "", "", vulns, result])
        for t in e.threats:
            w.writerow(
                [
                    *base,
                    "covered",
                    t.name,
                    _num(t.robust_accuracy),
                    _num(t.attack_success_rate),
                    "" if t.n_attacked is None else t.n_attacked,
                    vulns,
                    result,
                ]
            )
    return buf.getvalue()


def render_risk_register(rr: RiskRegister, fmt: str) -> str:
    """The register as ``md``, ``html`` (one self-contained page) or ``csv`` text."""
    if fmt == "md":
        return to_markdown(_document(rr))
    if fmt == "html":
        return to_html(_document(rr))
    if fmt == "csv":
        return _csv(rr)
    raise RegistryError(f"format: {fmt!r} is not one of {', '.join(RISK_FORMATS)}")


def write_risk_register(rr: RiskRegister, fmt: str, out: str | Path) -> Path:
    """Write the register in ``fmt`` to ``out`` (atomically); returns the path."""
    path = Path(out)
    text = render_risk_register(rr, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
