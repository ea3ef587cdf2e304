"""``robustops <verb>``: parses arguments, calls library functions, renders with rich."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from robustops.console import console, err_console
from robustops.console import fail as _fail
from robustops.errors import RobustOpsError, SpecError
from robustops.format import percent
from robustops.io import atomic_write_text

if TYPE_CHECKING:
    from robustops.config import PipelineSpec
    from robustops.evaluation import SuiteResult
    from robustops.evaluation.masking import AuditResult
    from robustops.training import BatchEvent, EpochMetrics, TextEpochMetrics

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown")

SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML)")]
TrustOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trust-code",
        help="trust code from this module (and its submodules) when the spec names it as a "
        "factory or hook; repeatable. A spec is data: code outside RobustOps runs only if "
        "trusted here or in ROBUSTOPS_TRUSTED_MODULES",
    ),
]
RegisterOpt = Annotated[
    bool, typer.Option("--register", help="record the outcome in the governance registry")
]
RegistryHomeOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="registry folder (default $ROBUSTOPS_REGISTRY or ./registry)"),
]
ActorOpt = Annotated[
    str | None,
    typer.Option("--as", help="acting principal (default $ROBUSTOPS_PRINCIPAL or the OS user)"),
]
AllowCodeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-code", help="trust any code the spec names (only for specs you wrote yourself)"
    ),
]


def _trust(modules: list[str] | None, allow_all: bool) -> contextlib.AbstractContextManager[Any]:
    from robustops.trust import trusting

    return trusting(modules or [], allow_all=allow_all)


def _load_result(path: Path, option: str) -> SuiteResult:
    """``SuiteResult.load`` with a non-UTF-8 file reported as a spec error at ``option``."""
    from robustops.evaluation import SuiteResult

    try:
        return SuiteResult.load(path)
    except UnicodeDecodeError as exc:
        raise SpecError.single(
            option, f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"robustops {version('robustops')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Adversarial robustness for shipped models: threats, attacks, hardening, evaluation and
    gates. A pipeline spec (YAML) describes the data, the model, the threats and the rules.

    Start with: robustops validate SPEC, then train, evaluate, report and gate.
    """


@app.command()
def train(
    spec: SpecOpt,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the newest checkpoint of the run")
    ] = False,
    trust_code: TrustOpt = None,
    allow_code: AllowCodeOpt = False,
    register: RegisterOpt = False,
    registry: RegistryHomeOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Train the spec's model with its recipe; save safetensors weights, checkpoints and metrics.

    With --register (or a registry section in the spec) the weights are registered as a new
    version with their lineage (sidecar, spec, threat catalog).

    To train with N processes (DistributedDataParallel; only rank 0 reports and writes), run
    the command under torchrun:

        torchrun --nproc_per_node N -m robustops train --spec FILE
    """
    from robustops.config import load_spec
    from robustops.runner import check_outputs, recipe_label, register_trained, train_spec
    from robustops.training import env_rank, latest_checkpoint

    quiet = env_rank() != 0
    try:
        s = load_spec(spec)
        if s.train is None:
            raise SpecError.single("train", "the spec has no train section")
        check_outputs(s)
        ckpt = s.train.checkpoint_path()
        if resume and s.data.modality != "text" and latest_checkpoint(ckpt) is None and not quiet:
            console.print(
                f"[yellow]--resume[/]: no checkpoint in {ckpt}; starting from scratch",
                highlight=False,
            )
        with (
            _trust(trust_code, allow_code),
            _TrainProgress(recipe_label(s), s.train.epochs, quiet) as progress,
        ):
            meta = train_spec(
                s, on_epoch=progress.on_epoch, on_batch=progress.on_batch, resume=resume
            )
        version = None
        if not quiet and (register or s.registry is not None):
            version = register_trained(s, spec, meta, home=registry, actor=actor)
    except RobustOpsError as exc:
        _fail(exc)
        return
    if quiet:
        return
    best = f", best epoch {meta['best_epoch']}" if meta.get("final") == "best" else ""
    console.print(
        f"saved [green]{meta['weights']}[/] sha256 {meta['sha256'][:16]}… "
        f"({meta['epochs_run']} epochs{best}); metrics in {meta['metrics']}"
    )
    if version:
        console.print(f"registered as [green]{version}[/]", highlight=False)


class _TrainProgress:
    """The progress of ``robustops train``: a bar over the epochs, one over the current
    epoch's batches, and one printed line per epoch; all silent when ``quiet`` (ranks > 0)."""

    def __init__(self, label: str, epochs: int, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = Progress(
            TextColumn("[bold]{task.fields[label]}[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=quiet,
        )
        self.label, self.total = label, epochs

    def __enter__(self) -> _TrainProgress:
        self.bar.__enter__()
        self.epochs = self.bar.add_task(self.label, total=self.total, label="epochs")
        self.batches = self.bar.add_task("", total=None, label="batches", visible=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def on_batch(self, e: BatchEvent) -> None:
        """Advance the batch bar."""
        self.bar.update(
            self.batches,
            total=e.n_batches,
            completed=e.batch,
            description=f"epoch {e.epoch} loss {e.loss:.3f}",
            visible=True,
        )

    def on_epoch(self, e: EpochMetrics | TextEpochMetrics) -> None:
        """Advance the epoch bar and print the epoch's line."""
        line = _epoch_line(e)
        self.bar.update(self.epochs, completed=e.epoch, description=line)
        if not self.quiet:
            console.print(line, highlight=False)


def _epoch_line(e: EpochMetrics | TextEpochMetrics) -> str:
    """One epoch's figures: loss and training accuracy, then the augmentation round (text) or
    the holdout accuracies, budget and guard (tensors)."""
    from robustops.training import TextEpochMetrics

    parts = [f"epoch {e.epoch}", f"loss {e.loss:.3f}", f"train acc {e.train_accuracy:.3f}"]
    if isinstance(e, TextEpochMetrics):
        if e.augment is not None:
            a = e.augment
            parts.append(
                f"augment: {a.fooled}/{a.attacked} fooled, {a.added} added, pool {a.pool_size}"
            )
        return " · ".join(parts)
    if e.val_clean_accuracy is not None:
        parts.append(f"clean {e.val_clean_accuracy:.3f}")
    if e.val_robust_accuracy is not None:
        parts.append(f"robust {e.val_robust_accuracy:.3f}")
    if e.epsilon is not None:
        parts.append(f"eps {e.epsilon:.3g}")
    if e.guard_restored:
        parts.append("[red]guard: restored[/]")
    return " · ".join(parts)


@app.command()
def evaluate(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="result JSON to write")] = Path(
        "result.json"
    ),
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="write reliability diagrams (PNG) to this folder")
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier", help="budget tier of evaluation.tiers, e.g. quick for pull requests"
        ),
    ] = None,
    trust_code: TrustOpt = None,
    allow_code: AllowCodeOpt = False,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="shard the samples across this many local processes"),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="shard across a Ray cluster at this address ('local': start a head here)",
        ),
    ] = None,
    shard_dir: Annotated[
        Path | None,
        typer.Option(
            "--shard-dir",
            help="shard checkpoints, reused by a rerun (default: <out>.shards when sharding)",
        ),
    ] = None,
    register: RegisterOpt = False,
    registry: RegistryHomeOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Run the spec's evaluation suite and write the result JSON.

    With --workers N or --ray ADDRESS the samples are sharded (per-sample outcomes equal a
    single-process run); under torchrun every rank runs its shard and rank 0 writes the result.
    With --register (or a registry section in the spec) the result is attached to the
    registered version with the weights it judged.
    """

    from robustops.config import load_spec
    from robustops.evaluation import ProgressEvent
    from robustops.evaluation.sharding import ScaleOut
    from robustops.io import check_writable
    from robustops.runner import evaluate_spec, save_result

    try:
        s = load_spec(spec)
        if tier is not None:
            s = s.with_tier(tier)
        check_writable(out, "--out")
        if plots is not None:
            check_writable(plots, "--plots", folder=True)
        with (
            _trust(trust_code, allow_code),
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar,
        ):
            tasks: dict[tuple[str, str], TaskID] = {}

            def on_progress(ev: ProgressEvent) -> None:
                key = (ev.threat, ev.attack)
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{ev.threat} · {ev.attack}", total=max(ev.total, 1))
                bar.update(tasks[key], completed=ev.done if ev.total else 1)

            scale = None
            if workers > 1 or ray is not None or shard_dir is not None:
                folder = shard_dir or out.with_name(out.name + ".shards")
                scale = ScaleOut(workers=workers, ray_address=ray, shard_dir=folder)
                if s.data.modality == "text":
                    err_console.print(
                        "note: text models are evaluated in one process "
                        "(--workers, --ray and --shard-dir apply to tensor models)",
                        highlight=False,
                    )
            result = evaluate_spec(s, seed=seed, progress=on_progress, tier=tier, scale=scale)
        if os.environ.get("RANK", "0") != "0":
            return  # torchrun: rank 0 writes the merged result
        save_result(result, out)
        version = _attach(s, out, register, registry, actor)
    except RobustOpsError as exc:
        _fail(exc)
        return
    _print_result(result, out, plots)
    if version:
        console.print(f"result attached to [green]{version}[/] in the registry", highlight=False)


def _attach(
    spec: PipelineSpec, out: Path, register: bool, home: Path | None, actor: str | None
) -> str | None:
    """Attach the result at ``out`` in the registry when asked (flag or spec section); the
    version it went to, else None."""
    if not register and spec.registry is None:
        return None
    from robustops.runner import attach_result

    return attach_result(spec, out, home=home, actor=actor)


def _print_result(result: SuiteResult, out: Path, plots: Path | None) -> None:
    if result.threats:
        console.print(_summary_table(result))
    if result.calibration is not None and (result.threats or result.certification is None):
        console.print(_calibration_table(result))
    st = result.stochastic
    if st is not None and st.detected:
        adapted = ", ".join(st.adapted_attacks) or "none"
        console.print(
            f"[yellow]stochastic model[/] (two passes differ by up to {st.max_logit_gap:.3g} in a "
            f"logit): predictions average {st.eot_samples} passes; attacks given EOT "
            f"{st.eot_samples} and no early stop: {adapted}",
            highlight=False,
        )
        if st.unadapted_attacks:
            console.print(
                f"[bold red]warning[/]: attacks {', '.join(st.unadapted_attacks)} ran without EOT "
                "on this stochastic model (their failures may overstate robustness; the gate "
                "refuses this unless allow_unadapted_attacks is set)",
                highlight=False,
            )
    for audit in result.audit:
        console.print(_audit_table(audit))
    if result.certification is not None:
        console.print(_certification_table(result))
    if result.latency is not None:
        lat = result.latency
        console.print(
            f"latency (single input): p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms; "
            f"throughput {lat.throughput_per_s:,.0f} samples/s in batches of {lat.batch_size}",
            highlight=False,
        )
    console.print(f"result written to [green]{out}[/]")
    if plots is not None:
        from robustops.evaluation.plots import plot_result

        for path in plot_result(result, plots):
            console.print(f"figure written to [green]{path}[/]")


def _summary_table(result: SuiteResult) -> Table:
    table = Table(
        title=f"{result.name}: {result.n_samples} samples, clean accuracy {percent(result.clean_accuracy)}"
    )
    table.add_column("threat")
    table.add_column("attack")
    table.add_column("attacked", justify="right")
    table.add_column("broken", justify="right")
    table.add_column("mean queries", justify="right")
    edits = any(a.mean_edits is not None for t in result.threats for a in t.attacks)
    if edits:
        table.add_column("edits / success", justify="right")
    table.add_column("time (s)", justify="right")
    table.add_column("robust acc.", justify="right", style="bold")
    for t in result.threats:
        for i, a in enumerate(t.attacks):
            last = i == len(t.attacks) - 1
            cells = [
                t.name if i == 0 else "",
                a.name,
                str(a.n_attacked),
                str(a.n_broken),
                f"{a.mean_queries:.1f}",
            ]
            if edits:
                cells.append(f"{a.mean_edits:.2f}" if a.mean_edits is not None else "")
            cells += [f"{a.wall_time_s:.2f}", f"{percent(t.robust_accuracy)}" if last else ""]
            table.add_row(*cells, end_section=last)
    return table


def _calibration_table(result: SuiteResult) -> Table:
    cal = result.calibration
    assert cal is not None
    fit = cal.temperature
    title = "calibration (ECE: 15 equal-width bins; NLL in nats)"
    if fit is not None:
        src = f"{fit.fit_on}, {fit.n_clean + fit.n_adversarial} held-out inputs"
        title += f"; temperature {fit.temperature:.3g} fitted on {src}"
    table = Table(title=title)
    for col in ("inputs", "accuracy", "confidence", "ECE", "Brier", "NLL"):
        table.add_column(col, justify="left" if col == "inputs" else "right")
    rows = [("clean", cal.clean, cal.clean_scaled)]
    rows += [
        (f"{t.name} attacked", t.calibration.attacked, t.calibration.attacked_scaled)
        for t in result.threats
        if t.calibration is not None
    ]
    for label, raw, scaled in rows:

        def cell(a: float, b: float | None) -> str:
            return f"{a:.3f}" if b is None else f"{a:.3f} → {b:.3f}"

        table.add_row(
            label,
            f"{percent(raw.accuracy)}",
            cell(raw.mean_confidence, scaled.mean_confidence if scaled else None),
            cell(raw.ece, scaled.ece if scaled else None),
            cell(raw.brier, scaled.brier if scaled else None),
            cell(raw.nll, scaled.nll if scaled else None),
        )
    return table


_STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _audit_table(audit: AuditResult) -> Table:
    style = _STATUS_STYLE[audit.verdict]
    eot = f", EOT over {audit.eot_samples} passes" if audit.eot_samples > 1 else ""
    table = Table(
        title=f"gradient-masking audit, {audit.threat} ({audit.n_samples} samples{eot}): "
        f"[{style}]{audit.verdict}[/]",
        caption=audit.summary,
    )
    table.add_column("check")
    table.add_column("status")
    table.add_column("reason")
    for c in audit.checks:
        table.add_row(c.name, f"[{_STATUS_STYLE[c.status]}]{c.status}[/]", c.reason)
    return table


def _certification_table(result: SuiteResult) -> Table:
    cert = result.certification
    assert cert is not None
    table = Table(
        title=f"randomized smoothing: σ={cert.sigma:g}, n={cert.n}, α={cert.alpha:g}, "
        f"{cert.n_samples} samples; abstained {percent(cert.abstain_rate)}; "
        f"ACR {cert.average_certified_radius:.3f}; max certifiable radius "
        f"{cert.max_certifiable_radius:.2f}"
    )
    table.add_column("L2 radius", justify="right")
    table.add_column("certified accuracy", justify="right", style="bold")
    for r, acc in cert.certified_accuracy.items():
        table.add_row(r, f"{percent(acc)}")
    table.caption = f"{cert.samples_per_second:,.0f} noisy samples/s, {cert.wall_time_s:.1f} s"
    return table


@app.command()
def certify(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="result JSON to write")] = Path(
        "certification.json"
    ),
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
    plots: Annotated[
        Path | None,
        typer.Option("--plots", help="write the certified-accuracy curve (PNG) to this folder"),
    ] = None,
    trust_code: TrustOpt = None,
    allow_code: AllowCodeOpt = False,
    register: RegisterOpt = False,
    registry: RegistryHomeOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Certify the spec's model with randomized smoothing; write the certificates as result JSON.

    The spec's evaluation.certification section sets the noise level, the sample counts and the
    radii to report. --register (or a registry section in the spec) attaches the result to the
    registered version, as for evaluate.
    """
    from robustops.config import load_spec
    from robustops.io import check_writable
    from robustops.runner import certify_spec, save_result

    try:
        s = load_spec(spec)
        check_writable(out, "--out")
        if plots is not None:
            check_writable(plots, "--plots", folder=True)
        with _trust(trust_code, allow_code), console.status("certifying…"):
            result = certify_spec(s, seed=seed)
        save_result(result, out)
        version = _attach(s, out, register, registry, actor)
    except RobustOpsError as exc:
        _fail(exc)
        return
    _print_result(result, out, plots)
    if version:
        console.print(f"result attached to [green]{version}[/] in the registry", highlight=False)


if TYPE_CHECKING:
    from robustops.gate import GateReport


_GATE_STATUS = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def _gate_table(report: GateReport) -> Table:
    from rich.markup import escape

    against = f" vs baseline {report.baseline.name}" if report.baseline is not None else ""
    tier = f" (tier {report.tier})" if report.tier else ""
    verdict = "[green]passed[/]" if report.passed else "[bold red]failed[/]"
    table = Table(
        title=f"robustness gate{escape(tier)}: {escape(report.new.name + against)}: {verdict}"
    )
    table.add_column("rule")
    table.add_column("status")
    table.add_column("reason")
    for r in report.rules:
        table.add_row(escape(r.rule), _GATE_STATUS[r.status], escape(r.reason))
    return table


def _write_junit(path: Path, xml: str) -> None:
    try:
        atomic_write_text(path, xml)
    except OSError as exc:
        raise SpecError.single("--junit", f"cannot write {path}: {exc}") from None


@app.command()
def gate(
    result: Annotated[Path, typer.Option("--result", "-r", help="the new result JSON")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="gate policy (YAML)")],
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", "-b", help="the accepted baseline result JSON"),
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier",
            help="rule set from the policy's tiers (default: the top-level rules, else 'full')",
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="write a JUnit XML report to this file")
    ] = None,
    register: RegisterOpt = False,
    registry: RegistryHomeOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Check a result against a policy's rules and, when given, an accepted baseline.

    Against a baseline, a drop counts as a regression only beyond sampling noise (paired
    McNemar test). With --register the verdict is recorded in the registry for the version
    whose weights the result judged (a passed record is what promotion to production needs).

    Exit code: 0 when every rule passes, 1 when one fails, 2 for invalid input.
    """
    try:
        report = _run_gate(result, policy, baseline, tier, junit)
        recorded = _register_gate(report, result, baseline, registry, actor) if register else ""
    except RobustOpsError as exc:
        _fail(exc)
        return
    passed = _print_gate(report, junit)
    if recorded:
        console.print(recorded, highlight=False)
    if not passed:
        raise typer.Exit(code=1)


def _register_gate(
    report: GateReport,
    result: Path,
    baseline: Path | None,
    home: Path | None,
    actor: str | None,
) -> str:
    """Record the gate's verdict in the registry (see ``robustops registry``); returns the
    line that says where."""
    from robustops.registry.service import Registry, resolve_actor

    reg = Registry.open(home)
    try:
        g = reg.record_gate(
            resolve_actor(actor),
            report.model_dump(mode="json"),
            result=result,
            baseline=baseline,
        )
        return f"gate record #{g.id} registered for {reg.version_label(g.version_id)}"
    finally:
        reg.close()


def _run_gate(
    result: Path, policy: Path, baseline: Path | None, tier: str | None, junit: Path | None
) -> GateReport:
    """Load the policy and the results, judge them and write the JUnit file if asked."""
    from robustops.gate import evaluate_gate, load_policy
    from robustops.junit import to_junit_xml

    try:
        rules = load_policy(policy, tier)
    except UnicodeDecodeError as exc:
        raise SpecError.single(
            "--policy", f"{policy} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    new = _load_result(result, "--result")
    base = _load_result(baseline, "--baseline") if baseline is not None else None
    report = evaluate_gate(new, base, rules)
    if junit is not None:
        _write_junit(junit, to_junit_xml(new, report))
    return report


def _print_gate(report: GateReport, junit: Path | None) -> bool:
    """Print the gate's table, warnings and failures; True when the gate passed."""
    from rich.markup import escape

    console.print(_gate_table(report))
    for w in report.warnings:
        console.print(f"[yellow]warning[/]: {escape(w)}", highlight=False, soft_wrap=True)
    if junit is not None:
        console.print(f"JUnit XML written to [green]{escape(str(junit))}[/]")
    failures = report.failures()
    if not failures:
        console.print(f"[green]gate passed[/]: {len(report.rules)} rules checked")
        return True
    console.print(
        f"[bold red]gate failed[/]: {len(failures)} of {len(report.rules)} rules failed",
        highlight=False,
    )
    for r in failures:
        console.print(
            f"  [red]{escape(r.rule)}[/]: {escape(r.reason)}", highlight=False, soft_wrap=True
        )
    return False


@app.command("attacks")
def list_attacks() -> None:
    """List the registered attacks, of every modality and plug-ins included."""
    from robustops.attacks import available_attacks, get_attack

    table = Table("name", "knowledge", "norms", "class")
    for name in available_attacks():
        cls = get_attack(name)
        table.add_row(
            name, cls.knowledge, ", ".join(cls.norms), f"{cls.__module__}.{cls.__qualname__}"
        )
    console.print(table)


_LEVEL_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "green"}


@app.command()
def threats(
    spec: Annotated[Path, typer.Argument(help="pipeline spec (YAML) with a catalog section")],
    result: Annotated[
        Path | None,
        typer.Option("--result", "-r", help="a result JSON: add the residual robust accuracy"),
    ] = None,
) -> None:
    """List the spec's threat catalog ranked by risk (likelihood × impact).

    Each entry shows the evaluation threats that exercise it; entries that no threat exercises
    are flagged. With --result, the residual robust accuracy of each entry is added.
    """
    from robustops.config import load_spec

    try:
        s = load_spec(spec)
        if s.catalog is None:
            raise SpecError.single("catalog", "the spec has no threat catalog")
        res = _load_result(result, "--result") if result is not None else None
    except RobustOpsError as exc:
        _fail(exc)
        return
    names = [t.name for t in s.evaluation.threats] if s.evaluation else []
    accs = {t.name: t.robust_accuracy for t in res.threats} if res else None
    rates = {t.name: t.attack_success_rate for t in res.threats} if res else None
    rows = s.catalog.risk_register(names, accs, rates)
    table = Table(title=f"threat catalog {s.catalog.content_hash()[:12]} ({len(rows)} entries)")
    for col in ("risk", "id", "component", "channel", "L×I", "owner", "exercised by"):
        table.add_column(
            col, justify="right" if col in ("risk", "L×I") else "left", no_wrap=col == "id"
        )
    if accs is not None:
        table.add_column("robust acc.", justify="right")
        table.add_column("attack success", justify="right")
    for r in rows:
        cells = [
            f"[{_LEVEL_STYLE[r.level]}]{r.risk} {r.level}[/]",
            r.id,
            r.component,
            r.channel,
            f"{r.likelihood}×{r.impact}",
            r.owner,
            ", ".join(r.threats) if r.covered else "[bold red]not covered[/]",
        ]
        if accs is not None:
            cells.append("" if r.robust_accuracy is None else f"{percent(r.robust_accuracy)}")
            cells.append(
                "" if r.attack_success_rate is None else f"{percent(r.attack_success_rate)}"
            )
        table.add_row(*cells)
    console.print(table)
    uncovered = [r.id for r in rows if not r.covered]
    if uncovered:
        console.print(
            f"[bold red]{len(uncovered)} threat(s) no attack covers[/]: {', '.join(uncovered)}"
        )


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write here instead of stdout")
    ] = None,
    what: Annotated[str, typer.Option("--what", help="spec or result")] = "spec",
) -> None:
    """Print the JSON Schema of the pipeline spec (for editors) or of the result JSON."""
    import json

    from pydantic import BaseModel

    from robustops.config import PipelineSpec
    from robustops.evaluation import SuiteResult

    models: dict[str, type[BaseModel]] = {"spec": PipelineSpec, "result": SuiteResult}
    if what not in models:
        _fail(SpecError.single("--what", f"must be one of {sorted(models)}, got {what!r}"))
        return
    text = json.dumps(models[what].model_json_schema(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        atomic_write_text(out, text + "\n")
        console.print(f"schema written to [green]{out}[/]")


def _report_formats(text: str) -> list[str]:
    from robustops.report import parse_formats

    try:
        return parse_formats(text)
    except SpecError as exc:
        raise SpecError([("--format", msg) for _, msg in exc.errors]) from None


@app.command()
def report(
    result: Annotated[Path, typer.Argument(help="a result JSON (robustops evaluate / certify)")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="folder to write the report and its figures to")
    ] = Path("report"),
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="comma-separated formats: md, html")
    ] = "md,html",
) -> None:
    """Write a human-readable report of a result: Markdown and/or one self-contained HTML page.

    The Markdown report has its PNG figures beside it; the HTML page inlines them and fetches
    nothing. Open report.html first.
    """
    from rich.markup import escape

    from robustops.report import write_report

    try:
        formats = _report_formats(fmt)
        res = _load_result(result, "RESULT")
        try:
            written = write_report(res, out, formats)
        except OSError as exc:
            raise SpecError.single("--out", f"cannot write {out}: {exc}") from None
    except RobustOpsError as exc:
        _fail(exc)
        return
    for path in written:
        console.print(f"report written to [green]{escape(str(path))}[/]", soft_wrap=True)


@app.command()
def validate(
    spec: Annotated[Path, typer.Argument(help="pipeline spec (YAML)")],
    trust_code: TrustOpt = None,
    allow_code: AllowCodeOpt = False,
) -> None:
    """Validate a spec and print every error with its field path."""
    from rich.markup import escape

    from robustops.config import load_spec
    from robustops.trust import check_ref

    try:
        s = load_spec(spec)
        untrusted = []
        with _trust(trust_code, allow_code):
            for field, ref in s.code_refs():  # imports nothing outside RobustOps
                try:
                    status = check_ref(ref, field)
                except SpecError as exc:
                    untrusted += exc.errors
                    status = "[bold red]not trusted[/]"
                console.print(
                    f"code: {escape(field)} = {escape(ref)} ({status})",
                    highlight=False,
                    soft_wrap=True,
                )
        if untrusted:
            raise SpecError(untrusted, source=str(spec))
    except RobustOpsError as exc:
        _fail(exc)
        return
    console.print(f"[green]ok[/]: {spec}")


@app.command()
def lifecycle(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML)")] = Path(
        "configs/lifecycle.yaml"
    ),
    out: Annotated[Path, typer.Option("--out", help="output folder (emptied first)")] = Path(
        "artifacts/lifecycle"
    ),
) -> None:
    """The whole loop as a timeline: train, gate, promote, serve, attack, alert, a bad
    break-glass promotion caught by the canary and rolled back, review, retrain, promote."""
    from rich.markup import escape

    from robustops.lifecycle import run_lifecycle

    try:
        summary = run_lifecycle(spec, out, echo=lambda line: console.print(escape(line)))
    except RobustOpsError as exc:
        _fail(exc)
        return
    console.print(
        f"timeline and page written to [green]{escape(str(out))}[/] ({summary['seconds']} s)"
    )


def _add_subcommands() -> None:
    from robustops.cli_canary import canary_app
    from robustops.cli_monitor import monitor_app
    from robustops.cli_registry import registry_app
    from robustops.cli_review import review_app
    from robustops.cli_serve import keys_app, serve

    app.add_typer(registry_app, name="registry")
    app.add_typer(canary_app, name="canary")
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(review_app, name="review")


_add_subcommands()


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
