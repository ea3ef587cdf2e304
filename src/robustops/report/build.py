"""From a :class:`~robustops.evaluation.result.SuiteResult` to a format-neutral
:class:`~robustops.report.document.Document`: every figure, table and sentence of the report is
decided here, once, so the Markdown and HTML reports say the same thing."""

from __future__ import annotations

from typing import Any

from robustops.attacks.registry import attack_defaults
from robustops.evaluation.masking import AuditResult
from robustops.evaluation.metrics import CalibrationMetrics, wilson_interval
from robustops.evaluation.plots import (
    AccuracyPoint,
    SweepSeries,
    certified_accuracy_figure,
    figure_png,
    reliability_curves,
    reliability_figure,
    robustness_curve_figure,
)
from robustops.evaluation.result import AttackFigures, SuiteResult, ThreatResult
from robustops.format import percent
from robustops.report.document import (
    Block,
    Cell,
    Details,
    Document,
    Figure,
    Gallery,
    KeyValues,
    Paragraph,
    Section,
    Status,
    Table,
    slug,
)
from robustops.report.examples import (
    ExampleContext,
    class_label,
    find_renderer,
    render_example,
)

__all__ = ["MAX_EXAMPLES", "audit_sweep", "build_document", "wilson_interval"]

MAX_EXAMPLES = 8
"""Adversarial examples shown per threat."""

_NORM_NAME = {
    "linf": "L∞",
    "l2": "L2",
    "patch": "patch side (pixels)",
    "spatial": "rotation (degrees)",
    "corruption": "corruption severity",
}
_WORD_EDITS = "word-edits"
_DASH = "—"

_LEGEND = {
    "image": "Images: clean, adversarial, the perturbation δ (signed) and the attribution "
    "δ ⊙ ∇(z_adversarial − z_label) (signed: red pushed towards the adversarial class); both on "
    "a scale symmetric around 0.",
    "features": "Feature vectors: the features that changed, by |attribution|.",
    "text": "Texts: each edited word struck through and followed by its replacement in bold; "
    "invisible characters are shown as ⟨U+…⟩ and characters an edit brought in from other "
    "scripts (look-alikes) are followed by their code point. Per edit: the change of the "
    "attacker's objective (its probability margin) when the attack applied it, and its drop "
    "when only that edit is reverted in the final text (edits interact: these need not add up).",
}
"""What the gallery's note says about the examples of each renderer modality present."""


def audit_sweep(audit: AuditResult) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
    """The epsilon sweep of an audit's ``monotone_in_epsilon`` check: ``([(epsilon, PGD
    success)], (unbounded epsilon, success) or None)``, bounded budgets sorted by epsilon; empty
    when the check is missing or skipped."""
    try:
        check = audit.check("monotone_in_epsilon")
    except KeyError:
        return [], None
    if check.status == "skip":
        return [], None
    f = check.figures
    points: list[tuple[float, float]] = []
    unbounded: tuple[float, float] | None = None
    for key, eps in f.items():
        if not key.startswith("eps_"):
            continue
        suffix = key[len("eps_") :]
        success = f.get(f"success_{suffix}")
        if success is None:
            continue
        if suffix == "unbounded":
            unbounded = (eps, success)
        else:
            points.append((eps, success))
    return sorted(points), unbounded


def _ci(lo_hi: tuple[float, float]) -> str:
    return f"[{percent(lo_hi[0])}, {percent(lo_hi[1])}]"


def _num(v: float | None, fmt: str = ".4g") -> str:
    return _DASH if v is None else format(v, fmt)


def _share(v: float) -> str:
    """A share as a percentage: 0.2 → ``20%``, 0.125 → ``12.5%``."""
    return percent(v, 4, significant=True)


def _norm_title(norm: str) -> str:
    """``L∞``, ``L2``, ``word edits``."""
    return "word edits" if norm == _WORD_EDITS else _NORM_NAME.get(norm, norm)


def _epsilon(norm: str, epsilon: float) -> str:
    """A budget in its unit: ``0.1`` (a norm ball's radius), ``20%`` (a share of the words)."""
    return _share(epsilon) if norm == _WORD_EDITS else f"{epsilon:g}"


def _threat_line(t: ThreatResult, class_names: tuple[str, ...] = ()) -> str:
    tm = t.threat
    if not tm.targeted:
        goal = "untargeted"
    elif tm.target_class is not None:
        goal = f"targeted at class {class_label(tm.target_class, class_names)}"
    else:
        goal = "targeted"
    parts = [tm.budget, tm.knowledge, goal]
    if tm.norm != _WORD_EDITS:
        parts.append(f"bounds [{tm.bounds[0]:g}, {tm.bounds[1]:g}]")
    if tm.query_budget is not None:
        parts.append(f"query budget {tm.query_budget}")
    return ", ".join(parts)


def _class_names(data: dict[str, Any]) -> tuple[str, ...]:
    """The class names the result's data records (``data["classes"]``), if any."""
    classes = data.get("classes")
    if not isinstance(classes, list | tuple):
        return ()
    return tuple(str(c) for c in classes)


def _attack_table(t: ThreatResult) -> Table:
    """The attacks of a threat; queries per success and mean words edited when recorded."""
    text = t.threat.norm == _WORD_EDITS
    attacks = t.attacks
    per_success = any(a.mean_queries_per_success is not None for a in attacks)
    edits = any(a.mean_edits is not None for a in attacks)

    def size(a: AttackFigures) -> str:
        v = a.median_perturbation
        return _DASH if v is None else _share(v) if text else _num(v)

    columns = ["attack", "params", "attacked", "broken", "success rate", "mean queries"]
    if per_success:
        columns.append("queries per success")
    if edits:
        columns.append("mean words edited")
    columns += ["median share of words edited" if text else "median perturbation"]
    columns.append("wall time (s)")
    rows: list[tuple[Cell, ...]] = []
    for a in attacks:
        row: list[Cell] = [
            a.name,
            _params(a.params, attack_defaults(a.name, t.threat)),
            str(a.n_attacked),
            str(a.n_broken),
            percent(a.success_rate),
            f"{a.mean_queries:.1f}",
        ]
        if per_success:
            row.append(_num(a.mean_queries_per_success, ".1f"))
        if edits:
            row.append(_num(a.mean_edits, ".2f"))
        row += [size(a), f"{a.wall_time_s:.2f}"]
        rows.append(tuple(row))
    caption = "attacks run in order on the samples still robust; "
    if text:
        caption += "words edited and their share: medians and means over the successes"
    else:
        caption += f"median perturbation of the successes in {_norm_title(t.threat.norm)}"
    if per_success:
        caption += "; queries per success: mean queries spent on the samples the attack broke"
    return Table(
        tuple(columns), tuple(rows), numeric=frozenset(range(2, len(columns))), caption=caption
    )


def _is_default(key: str, value: Any, defaults: dict[str, Any]) -> bool:
    if key not in defaults:
        return False
    d = defaults[key]
    return bool(value == d or (isinstance(d, tuple) and list(d) == value))


def _params(params: dict[str, Any], defaults: dict[str, Any]) -> Cell:
    """The parameters that differ from the attack's defaults, with the full set folded under
    them (HTML; Markdown shows the full set): every value stays in the result JSON."""
    full = ", ".join(f"{k}={v}" for k, v in params.items())
    if not full:
        return _DASH
    changed = ", ".join(f"{k}={v}" for k, v in params.items() if not _is_default(k, v, defaults))
    return Details(summary=changed or "defaults", full=full)


def _verdict_callout(r: SuiteResult) -> Paragraph:
    verdict = r.audit_verdict() or "skip"
    worst = [a for a in r.audit if a.verdict == verdict]
    detail = "; ".join(a.summary for a in worst if a.verdict != "pass")
    return Paragraph.of(
        "Gradient-masking audit: ",
        Status(verdict),
        f" (worst over {len(r.audit)} audited threat{'s' if len(r.audit) != 1 else ''})",
        f": {detail}" if detail else "",
        callout=verdict,
    )


def _latency_block(r: SuiteResult) -> Block:
    """The latency table, or a note that latency was not measured."""
    lat = r.latency
    if lat is None:
        return Paragraph.of("Latency was not measured.", note=True)
    return Table(
        ("latency p50", "p95", "p99", "mean", "throughput"),
        (
            (
                f"{lat.p50_ms:.2f} ms",
                f"{lat.p95_ms:.2f} ms",
                f"{lat.p99_ms:.2f} ms",
                f"{lat.mean_ms:.2f} ms",
                f"{lat.throughput_per_s:,.0f} samples/s",
            ),
        ),
        numeric=frozenset({0, 1, 2, 3, 4}),
        caption=f"single-input latency over {lat.n_calls} calls on {r.device}; "
        f"throughput in batches of {lat.batch_size}",
    )


def _stochastic_block(r: SuiteResult) -> Paragraph | None:
    """How the suite adapted to a stochastic model (``None`` when it was not stochastic)."""
    st = r.stochastic
    if st is None or not st.detected:
        return None
    adapted = ", ".join(st.adapted_attacks) or "none"
    return Paragraph.of(
        Status("warn" if st.unadapted_attacks else "pass"),
        f" Stochastic model (two passes differ by up to {st.max_logit_gap:.3g} in a "
        f"logit): predictions average {st.eot_samples} passes; attacks given EOT "
        f"and no early stop: {adapted}."
        + (
            f" Attacks run without EOT, whose failures may overstate robustness: "
            f"{', '.join(st.unadapted_attacks)}."
            if st.unadapted_attacks
            else ""
        ),
    )


def _calibration_row(label: str, m: CalibrationMetrics) -> tuple[Cell, ...]:
    return (
        label,
        f"{m.temperature:.3g}",
        str(m.n),
        percent(m.accuracy),
        f"{m.mean_confidence:.3f}",
        f"{m.ece:.3f}",
        f"{m.adaptive_ece:.3f}",
        f"{m.brier:.3f}",
        f"{m.nll:.3f}",
    )


def _calibration_table(
    raw: list[tuple[str, CalibrationMetrics]], scaled: list[tuple[str, CalibrationMetrics]]
) -> Table:
    """Every calibration figure of the ``raw`` curves, then of the ``scaled`` ones."""
    rows = [_calibration_row(label, m) for label, m in raw]
    rows += [_calibration_row(f"{label}, scaled", m) for label, m in scaled]
    return Table(
        (
            "inputs",
            "temperature",
            "n",
            "accuracy",
            "confidence",
            "ECE",
            "adaptive ECE",
            "Brier",
            "NLL",
        ),
        tuple(rows),
        numeric=frozenset(range(1, 9)),
        caption="attacked: each sample's worst case over the threat's attacks",
    )


class _Builder:
    def __init__(self, result: SuiteResult) -> None:
        self.r = result
        self._names: set[str] = set()
        self._anchors: set[str] = set()
        self._audits = {a.threat: a for a in result.audit}
        self.class_names = _class_names(result.data)

    # --- unique names -------------------------------------------------------------------------

    def figure_name(self, stem: str) -> str:
        base = f"fig-{len(self._names) + 1:02d}-{slug(stem, 'figure')}"
        name, i = f"{base}.png", 1
        while name in self._names:
            i += 1
            name = f"{base}-{i}.png"
        self._names.add(name)
        return name

    def anchor(self, text: str) -> str:
        base = slug(text, "section")
        a, i = base, 1
        while a in self._anchors:
            i += 1
            a = f"{base}-{i}"
        self._anchors.add(a)
        return a

    def section(self, title: str, level: int = 2, key: str | None = None) -> Section:
        return Section(title=title, anchor=self.anchor(key or title), level=level)

    def figure(self, stem: str, fig: Any, alt: str, caption: str = "") -> Figure:
        return Figure(self.figure_name(stem), figure_png(fig), alt, caption)

    # --- the document -------------------------------------------------------------------------

    def build(self) -> Document:
        r = self.r
        doc = Document(title=f"Robustness report: {r.name}", header=[self.header()])
        if r.audit:
            doc.header.append(_verdict_callout(r))
        doc.sections.append(self.summary())
        if r.threats:
            doc.sections.append(self.curves())
            doc.sections.append(self.threats())
        if any(t.independent for t in r.threats):
            doc.sections.append(self.corruptions())
        if r.audit:
            doc.sections.append(self.audit())
        if r.calibration is not None:
            doc.sections.append(self.calibration())
        if r.certification is not None:
            doc.sections.append(self.certification())
        if r.threats:
            doc.sections.append(self.gallery())
        return doc

    def header(self) -> KeyValues:
        r = self.r
        env = r.environment
        environment = ", ".join(
            f"{k} {env[k]}" for k in ("torch", "python", "robustops", "numpy") if k in env
        )
        if "platform" in env:
            environment += f"; {env['platform']}"
        data = r.data
        items: list[tuple[str, Cell]] = [
            ("run", r.name),
            ("created", r.created_at),
            ("schema version", r.schema_version),
            ("seed", str(r.seed)),
            ("device", r.device),
            ("samples", f"{r.n_samples} ({r.samples.split} split)"),
            ("model", str(r.model.get("factory", _DASH))),
            ("model sha256", str(r.model.get("weights_sha256") or _DASH)),
            ("data", str(data.get("name", _DASH))),
            ("data fingerprint", str(data.get("fingerprint") or _DASH)),
            ("environment", environment or _DASH),
        ]
        if r.catalog_sha256:
            items.append(("threat catalog sha256", r.catalog_sha256))
        verdict = r.audit_verdict()
        if verdict is not None:
            items.append(("gradient-masking audit", Status(verdict)))
        items.append(("wall time", f"{r.wall_time_s:.1f} s"))
        return KeyValues(tuple(items))

    def summary(self) -> Section:
        sec = self.section("Summary")
        sec.blocks.append(self.summary_table())
        sec.blocks.append(_latency_block(self.r))
        stochastic = _stochastic_block(self.r)
        if stochastic is not None:
            sec.blocks.append(stochastic)
        return sec

    def summary_table(self) -> Table:
        """Clean and per-threat accuracy with Wilson intervals, attack success, ECE, audit."""
        r = self.r
        n = r.n_samples
        n_clean = sum(r.samples.clean_correct)
        clean_ece = r.calibration.clean.ece if r.calibration is not None else None
        rows: list[tuple[Cell, ...]] = [
            (
                "clean",
                _DASH,
                percent(r.clean_accuracy),
                _ci(wilson_interval(n_clean, n)),
                _DASH,
                _num(clean_ece, ".3f"),
                _DASH,
            )
        ]
        for t in r.threats:
            audit = self._audits.get(t.name)
            ece = t.calibration.attacked.ece if t.calibration is not None else None
            rows.append(
                (
                    t.name,
                    _threat_line(t, self.class_names),
                    percent(t.robust_accuracy),
                    _ci(wilson_interval(t.n_robust, n)),
                    percent(t.attack_success_rate),
                    _num(ece, ".3f"),
                    Status(audit.verdict)
                    if audit is not None
                    else ("n/a (black-box text)" if t.threat.modality == "text" else "not audited"),
                )
            )
        return Table(
            (
                "inputs",
                "threat model",
                "accuracy",
                "95% CI (Wilson)",
                "attack success",
                "ECE",
                "masking audit",
            ),
            tuple(rows),
            numeric=frozenset({2, 3, 4, 5}),
            caption=f"{n} evaluated samples; robust accuracy = correct and not broken by any "
            "attack of the threat; ECE on the clean, resp. attacked, inputs",
        )

    def corruptions(self) -> Section:
        """Accuracy under each corruption at each severity (the independent threats): a sample
        counts when it is classified correctly both clean and corrupted."""
        r = self.r
        sec = self.section("Common corruptions", key="corruptions")
        note = (
            "Accuracy under each corruption alone (every sample corrupted by each), by severity "
            "1–5 as MNIST-C / CIFAR-10-C define them; a sample counts when it is classified "
            "correctly both clean and corrupted. The last row is the worst case over the "
            "corruptions of each threat (its robust accuracy)."
        )
        sec.blocks.append(Paragraph.of(note, note=True))
        threats = sorted((t for t in r.threats if t.independent), key=lambda t: t.threat.epsilon)
        n, correct = r.n_samples, sum(r.samples.clean_correct)
        names = list(dict.fromkeys(a.name for t in threats for a in t.attacks))
        rows: list[tuple[Cell, ...]] = []
        for name in names:
            cells: list[Cell] = [name]
            for t in threats:
                a = next((a for a in t.attacks if a.name == name), None)
                cells.append(_DASH if a is None or not n else percent((correct - a.n_broken) / n))
            rows.append(tuple(cells))
        rows.append(("worst case", *(percent(t.robust_accuracy) for t in threats)))
        columns = ("corruption", *(f"{t.name} (severity {t.threat.epsilon:g})" for t in threats))
        sec.blocks.append(Table(columns, tuple(rows), numeric=frozenset(range(1, len(columns)))))
        return sec

    def curves(self) -> Section:
        r = self.r
        any_text = any(t.threat.norm == _WORD_EDITS for t in r.threats)
        title = (
            "Robust accuracy against the budget" if any_text else "Robust accuracy against epsilon"
        )
        sec = self.section(title, key="curves")
        note = "Threats grouped by norm and goal; epsilon 0 is the clean accuracy."
        if any_text:
            note = (
                "Threats grouped by budget (a norm, or word edits for texts) and goal; a budget "
                "of 0 is the clean accuracy."
            )
        if r.audit:
            note += (
                " Dashed: the gradient-masking audit's epsilon sweep, 1 − PGD success on the "
                "audited (correctly classified) samples only, so it is not on the same base as "
                "the robust accuracy."
            )
        sec.blocks.append(Paragraph.of(note, note=True))
        groups: dict[tuple[str, bool], list[ThreatResult]] = {}
        for t in r.threats:
            groups.setdefault((t.threat.norm, t.threat.targeted), []).append(t)
        for (norm, targeted), threats in groups.items():
            sec.subsections.append(self.curve(norm, targeted, threats))
        return sec

    def curve(self, norm: str, targeted: bool, threats: list[ThreatResult]) -> Section:
        """Robust accuracy against the budget of the ``threats`` sharing ``norm`` and goal: a
        figure, its table and the audit sweeps' table."""
        r = self.r
        n = r.n_samples
        clean_ci = wilson_interval(sum(r.samples.clean_correct), n)
        goal = "targeted" if targeted else "untargeted"
        title = f"{_norm_title(norm)}, {goal}"
        text = norm == _WORD_EDITS
        sub = self.section(title, level=3, key=f"curve {norm} {goal}")
        points = [AccuracyPoint(0.0, r.clean_accuracy, *clean_ci, "clean")]
        rows: list[tuple[Cell, ...]] = [
            ("clean", _epsilon(norm, 0.0), percent(r.clean_accuracy), _ci(clean_ci))
        ]
        for t in sorted(threats, key=lambda t: t.threat.epsilon):
            ci = wilson_interval(t.n_robust, n)
            points.append(AccuracyPoint(t.threat.epsilon, t.robust_accuracy, *ci, t.name))
            rows.append(
                (t.name, _epsilon(norm, t.threat.epsilon), percent(t.robust_accuracy), _ci(ci))
            )
        sweeps, sweep_rows = self.sweeps(threats)
        fig = robustness_curve_figure(
            points,
            sweeps,
            title=f"robust accuracy, {title}",
            norm=norm,
            xlabel="word-edit budget (share of the words)" if text else "",
            percent=text,
        )
        if text:
            caption = f"robust accuracy against the word-edit budget ({goal})"
        else:
            caption = f"robust accuracy against {_norm_title(norm)} epsilon ({goal})"
        sub.blocks.append(self.figure(f"robustness-{norm}-{goal}", fig, caption, caption))
        budget = "word-edit budget" if text else "epsilon"
        sub.blocks.append(
            Table(
                ("threat", budget, "robust accuracy", "95% CI (Wilson)"),
                tuple(rows),
                numeric=frozenset({1, 2, 3}),
            )
        )
        if sweep_rows:
            sub.blocks.append(
                Table(
                    ("audited threat", "epsilon", "PGD success", "1 − success"),
                    tuple(sweep_rows),
                    numeric=frozenset({1, 2, 3}),
                    caption="gradient-masking audit sweep, on the audited (correctly "
                    "classified) samples; the unbounded budget is not plotted",
                )
            )
        return sub

    def sweeps(
        self, threats: list[ThreatResult]
    ) -> tuple[list[SweepSeries], list[tuple[Cell, ...]]]:
        """The audit sweeps of ``threats`` as dashed curves, and as table rows (with the
        unbounded budget, which is not plotted)."""
        sweeps: list[SweepSeries] = []
        rows: list[tuple[Cell, ...]] = []
        for t in threats:
            audit = self._audits.get(t.name)
            if audit is None:
                continue
            pts, unbounded = audit_sweep(audit)
            if not pts and unbounded is None:
                continue
            label = f"audit of {t.name}: 1 − PGD success on {audit.n_samples} audited samples"
            sweeps.append(SweepSeries(label, tuple((e, 1 - s) for e, s in pts)))
            for e, s in pts:
                rows.append((t.name, f"{e:g}", percent(s), percent(1 - s)))
            if unbounded is not None:
                e, s = unbounded
                rows.append((t.name, f"{e:g} (unbounded)", percent(s), percent(1 - s)))
        return sweeps, rows

    def threats(self) -> Section:
        r = self.r
        sec = self.section("Threats")
        for t in r.threats:
            sub = self.section(t.name, level=3, key=f"threat {t.name}")
            audit = self._audits.get(t.name)
            sub.status = Status(audit.verdict) if audit is not None else None
            ci = wilson_interval(t.n_robust, r.n_samples)
            sub.blocks.append(Paragraph.of(_threat_line(t, self.class_names)))
            if t.n_attacked is None:
                attacked = "of the correctly classified samples"
            elif t.threat.target_class is not None:
                target = class_label(t.threat.target_class, self.class_names)
                attacked = (
                    f"of the {t.n_attacked} samples attacked (correctly classified and not "
                    f"already of the target class {target})"
                )
            else:
                attacked = f"of the {t.n_attacked} correctly classified samples"
            sub.blocks.append(
                Paragraph.of(
                    f"Robust accuracy {percent(t.robust_accuracy)} ({t.n_robust}/{r.n_samples}, "
                    f"95% CI {_ci(ci)}); attack success {percent(t.attack_success_rate)} "
                    f"{attacked}; {t.total_queries:,} queries; {t.wall_time_s:.2f} s."
                )
            )
            sub.blocks.append(_attack_table(t))
            sec.subsections.append(sub)
        return sec

    def audit(self) -> Section:
        r = self.r
        sec = self.section("Gradient-masking audit", key="audit")
        verdict = r.audit_verdict()
        assert verdict is not None
        sec.status = Status(verdict)
        sec.blocks.append(_verdict_callout(r))
        for a in r.audit:
            sub = self.section(f"audit: {a.threat}", level=3, key=f"audit {a.threat}")
            sub.status = Status(a.verdict)
            eot = f"; stochastic model, EOT over {a.eot_samples} passes" if a.stochastic else ""
            sub.blocks.append(Paragraph.of(Status(a.verdict), " ", a.summary))
            sub.blocks.append(
                Paragraph.of(
                    f"{a.n_samples} of {a.n_inputs} inputs audited (those classified correctly)"
                    f"{eot}; seed {a.seed}; {a.wall_time_s:.1f} s.",
                    note=True,
                )
            )
            sub.blocks.append(
                Table(
                    ("check", "status", "reason"),
                    tuple((c.name, Status(c.status), c.reason) for c in a.checks),
                )
            )
            sec.subsections.append(sub)
        return sec

    def calibration(self) -> Section:
        r = self.r
        cal = r.calibration
        assert cal is not None
        sec = self.section("Calibration")
        raw, scaled = reliability_curves(r)
        raw = [(k if k == "clean" else f"{k} attacked", m) for k, m in raw]
        scaled = [(k if k == "clean" else f"{k} attacked", m) for k, m in scaled]
        fit = cal.temperature
        if fit is not None:
            sec.blocks.append(
                Paragraph.of(
                    f"Temperature {fit.temperature:.3g} fitted on {fit.fit_on} held-out inputs "
                    f"({fit.n_clean} clean, {fit.n_adversarial} adversarial); held-out NLL "
                    f"{fit.nll_before:.3f} → {fit.nll_after:.3f}, ECE {fit.ece_before:.3f} → "
                    f"{fit.ece_after:.3f}."
                )
            )
        alt = "reliability diagram, clean and attacked inputs"
        sec.blocks.append(
            self.figure(
                "reliability",
                reliability_figure(raw, title="uncalibrated", dpi=100),
                alt,
                f"uncalibrated; ECE over {cal.n_bins} equal-width bins in the legend",
            )
        )
        if scaled:
            sec.blocks.append(
                self.figure(
                    "reliability-scaled",
                    reliability_figure(scaled, title="temperature-scaled", dpi=100),
                    alt + " after temperature scaling",
                    "after temperature scaling",
                )
            )
        sec.blocks.append(_calibration_table(raw, scaled))
        return sec

    def certification(self) -> Section:
        cert = self.r.certification
        assert cert is not None
        sec = self.section("Certification")
        sec.blocks.append(
            Paragraph.of(
                f"Randomized smoothing: σ = {cert.sigma:g}, n0 = {cert.n0}, n = {cert.n}, "
                f"α = {cert.alpha:g}, {cert.n_samples} samples. Smoothed clean accuracy "
                f"{percent(cert.clean_accuracy)}, abstained {percent(cert.abstain_rate)}, average "
                f"certified radius {cert.average_certified_radius:.3f}, largest certifiable "
                f"radius {cert.max_certifiable_radius:.3f} (dotted); "
                f"{cert.samples_per_second:,.0f} noisy samples/s, {cert.wall_time_s:.1f} s."
            )
        )
        caption = "certified accuracy against L2 radius"
        sec.blocks.append(
            self.figure(
                "certified-accuracy",
                certified_accuracy_figure([cert], title=caption, dpi=100),
                caption,
                caption,
            )
        )
        grid = sorted(cert.certified_accuracy.items(), key=lambda kv: float(kv[0]))
        rows = tuple(
            (
                f"{float(radius):g}",
                percent(acc),
                _ci(wilson_interval(round(acc * cert.n_samples), cert.n_samples)),
            )
            for radius, acc in grid
        )
        sec.blocks.append(
            Table(
                ("L2 radius", "certified accuracy", "95% CI (Wilson)"),
                rows,
                numeric=frozenset({0, 1, 2}),
            )
        )
        return sec

    def gallery(self) -> Section:
        sec = self.section("Adversarial examples", key="examples")
        modalities: list[str] = []
        for t in self.r.threats:
            for ex in t.examples[:MAX_EXAMPLES]:
                renderer = find_renderer(ex)
                if renderer is not None and renderer.modality not in modalities:
                    modalities.append(renderer.modality)
        legend = [_LEGEND[m] for m in modalities if m in _LEGEND]
        if legend:
            sec.blocks.append(
                Paragraph.of(" ".join(["A few samples each threat broke.", *legend]), note=True)
            )
        any_examples = False
        for t in self.r.threats:
            examples = list(t.examples)
            if not examples:
                continue
            any_examples = True
            sub = self.section(t.name, level=3, key=f"examples {t.name}")
            ctx = ExampleContext(t.name, t.threat, self.figure_name, self.class_names)
            items = tuple(render_example(ex, ctx) for ex in examples[:MAX_EXAMPLES])
            blocks: list[Block] = [Gallery(items)]
            if len(examples) > MAX_EXAMPLES:
                blocks.append(
                    Paragraph.of(f"{len(examples) - MAX_EXAMPLES} more not shown.", note=True)
                )
            sub.blocks.extend(blocks)
            sec.subsections.append(sub)
        if not any_examples:
            sec.blocks.append(Paragraph.of("The result records no adversarial examples."))
        return sec


def build_document(result: SuiteResult) -> Document:
    """The report of ``result`` as a :class:`Document` (figures rendered)."""
    return _Builder(result).build()
