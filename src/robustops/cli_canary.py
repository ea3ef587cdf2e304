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
    help="Canary attacks on the live endpoint, judged against the accepted result (McNemar).",
)
SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML) with monitor:")]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="registry folder (default the spec's registry.home, $ROBUSTOPS_REGISTRY, ./registry)",
    ),
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
            "--every", help="seconds between runs (default monitor.canary.every_seconds)", min=0
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="one run, then exit")] = False,
    runs: Annotated[int | None, typer.Option("--runs", help="stop after N runs", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print each run record as JSON")] = False,
) -> None:
    """Attack the live endpoint with the canary set under the spec's threats, within the
    budget, every --every seconds (or --once); compare with the accepted result; open a
    vulnerability and roll back on a significant drop. While repeating, a failed run is
    reported and the next one goes ahead. Exit 1 when a run found a regression, 2 on an error
    (--once) or a bad setup."""
    from robustops.canary import run_canary
    from robustops.config import load_spec

    try:
        loaded = load_spec(spec)
    except RobustOpsError as exc:
        fail(exc)
    period = (
        every
        if every is not None
        else (loaded.monitor.canary.every_seconds if loaded.monitor else 3600.0)
    )
    limit = 1 if once else runs
    done = 0
    regression = False
    while True:
        t0 = time.monotonic()
        try:
            record = run_canary(loaded, url, registry_home=registry, actor=actor, warn=_warn)
        except RobustOpsError as exc:
            if limit == 1:
                fail(exc)
            err_console.print(
                f"[bold red]canary run failed[/]: {escape(str(exc))}", highlight=False
            )
        else:
            regression |= record["verdict"] == "regression"
            if as_json:
                typer.echo(json.dumps(record, default=str))
            else:
                _print_run(record)
        done += 1
        if limit is not None and done >= limit:
            break
        time.sleep(max(period - (time.monotonic() - t0), 0.0))
    if regression:
        raise typer.Exit(code=1)
