"""``robustops canary init`` and ``robustops canary run``: a fixed, registered canary set
attacked on the live endpoint on a schedule (see :mod:`robustops.canary`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from robustops.console import console, err_console, fail
from robustops.errors import RobustOpsError

canary_app = typer.Typer(
    no_args_is_help=True,
    help="Canary attacks on the live endpoint: a registered canary set, compared with the "
    "production version's accepted result (McNemar); a significant drop opens a "
    "vulnerability and rolls production back.",
)
SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML) with monitor:")]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", help="registry folder (default $ROBUSTOPS_REGISTRY or ./registry)"),
]


def _warn(msg: str) -> None:
    err_console.print(f"[yellow]warning[/]: {escape(msg)}", highlight=False)


@canary_app.command("init")
def init(
    spec: SpecOpt,
    registry: RegistryOpt = None,
    actor: Annotated[
        str | None,
        typer.Option("--as", help="acting principal (default $ROBUSTOPS_PRINCIPAL or OS user)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="canary set file (default <monitor.canary.records>/canary-set.json)"
        ),
    ] = None,
) -> None:
    """Draw the canary set from the production version's accepted result and register it."""
    from robustops.canary import init_canary
    from robustops.config import load_spec
    from robustops.registry.service import resolve_actor

    try:
        made = init_canary(
            load_spec(spec),
            registry_home=registry,
            actor=resolve_actor(actor),
            out=out,
            warn=_warn,
        )
    except RobustOpsError as exc:
        fail(exc)
    kind = "accepted" if made.baseline.accepted else "newest (NOT gate-accepted)"
    console.print(
        f"canary set [green]{escape(made.dataset)}[/]: {made.n_samples} samples from "
        f"{escape(made.baseline.version)}'s {kind} result {made.baseline.result_sha256[:12]}…; "
        f"file {escape(str(made.path))} (sha256 {made.sha256[:12]}…)",
        highlight=False,
    )


def _print_run(record: dict[str, Any]) -> None:
    served = (record.get("served") or {}).get("version")
    console.print(
        f"{record['started_at']} canary {escape(record['dataset'])} vs {escape(str(served))}: "
        f"[bold]{record['verdict']}[/] ({record['queries']} queries, "
        f"{record.get('wall_time_s', 0):.1f} s)",
        highlight=False,
    )
    for name, t in record.get("tests", {}).items():
        console.print(
            f"  {escape(name)}: baseline {t['baseline_correct']}/{t['n']}, canary "
            f"{t['canary_correct']}/{t['n']}, McNemar b={t['baseline_only']} "
            f"c={t['canary_only']} p={t['p_value']:.3g}{'  SIGNIFICANT' if t['significant'] else ''}",
            highlight=False,
        )
    for name, why in record.get("not_attacked", {}).items():
        console.print(f"  {escape(name)}: not attacked ({escape(why)})", highlight=False)
    if record.get("stopped"):
        console.print(f"  [yellow]stopped[/]: {escape(record['stopped'])}", highlight=False)
    if record.get("vulnerability"):
        console.print(f"  vulnerability: {escape(str(record['vulnerability']))}", highlight=False)
    rb = record.get("rollback")
    if rb:
        if rb["rolled_back"]:
            console.print(
                f"  [red]rolled back[/] {rb['model']}:{rb['alias']} {rb['from_version']} → "
                f"{rb['to_version']}",
                highlight=False,
            )
        else:
            console.print(f"  rollback refused: {escape(str(rb['refused']))}", highlight=False)
    console.print(f"  record: {escape(str(record.get('record_path')))}", highlight=False)


@canary_app.command("run")
def run(
    spec: SpecOpt,
    url: Annotated[str, typer.Option("--url", help="the guard's base URL")],
    registry: RegistryOpt = None,
    actor: Annotated[
        str | None,
        typer.Option("--as", help="acting principal (default monitor.rollback.actor)"),
    ] = None,
    every: Annotated[
        float | None,
        typer.Option(
            "--every",
            help="repeat every SECONDS (default: once; monitor.canary.every_seconds with 0)",
            min=0,
        ),
    ] = None,
    runs: Annotated[
        int | None, typer.Option("--runs", help="with --every: stop after N runs", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print each run record as JSON")] = False,
) -> None:
    """Attack the live endpoint with the canary set under the spec's threats, within the
    budget; compare with the accepted result; open a vulnerability and roll back on a
    significant drop. Exit 1 when the (last) run found a regression."""
    from robustops.canary import run_canary
    from robustops.config import load_spec

    try:
        loaded = load_spec(spec)
        period = None
        if every is not None:
            period = every or (loaded.monitor.canary.every_seconds if loaded.monitor else 3600.0)
        done = 0
        while True:
            t0 = time.monotonic()
            record = run_canary(loaded, url, registry_home=registry, actor=actor, warn=_warn)
            done += 1
            if as_json:
                typer.echo(json.dumps(record, default=str))
            else:
                _print_run(record)
            if period is None or (runs is not None and done >= runs):
                break
            time.sleep(max(period - (time.monotonic() - t0), 0.0))
    except RobustOpsError as exc:
        fail(exc)
    if record["verdict"] == "regression":
        raise typer.Exit(code=1)
