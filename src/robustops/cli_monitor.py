"""``robustops monitor <verb>``: calibrated change detectors over the guard's request log, alerts
with their evidence, Prometheus rules, and the on-call's status and acknowledgements.

Every command reads the spec's ``monitor:`` section (request log folder, state file, rules,
webhooks); see docs/monitoring.md.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from robustops.console import console, err_console, fail
from robustops.errors import RobustOpsError, SpecError

if TYPE_CHECKING:
    from robustops.monitoring.config import MonitorConfig

monitor_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Drift and attack alerts over the guard's request log (calibrated change detectors).",
)
SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of tables")]


def _config(spec: Path) -> tuple[str, MonitorConfig]:
    from robustops.config import load_spec

    s = load_spec(spec)
    if s.monitor is None:
        raise SpecError([("monitor", "the spec has no monitor section")], source=str(spec))
    return s.name, s.monitor


def _when(ts: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_alert(alert: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(alert, separators=(",", ":")))
        return
    colour = {"critical": "bold red", "warning": "yellow"}.get(alert["severity"], "cyan")
    rb = alert.get("rollback", {})
    console.print(
        f"[{colour}]{alert['severity'].upper()}[/] {_when(alert['fired_ts'])} "
        f"[bold]{escape(alert['rule'])}[/] {escape(alert['summary'])} "
        f"model={escape(str(alert.get('model')))} id={alert['id']}"
        + (" [bold red]rollback due[/]" if rb.get("eligible") else ""),
        highlight=False,
        soft_wrap=True,
    )


@monitor_app.command("run")
def run(
    spec: SpecOpt,
    once: Annotated[
        bool, typer.Option("--once", help="process the log as it is now, deliver, and exit")
    ] = False,
    alerts_file: Annotated[
        Path | None,
        typer.Option("--alerts-file", help="also append each alert to this JSON-lines file"),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry", help="registry folder for rollbacks (default $ROBUSTOPS_REGISTRY)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print alerts as JSON lines")] = False,
) -> None:
    """Watch the guard's request log: calibrate each rule on its first requests, then alert on
    changes (webhooks, --alerts-file, stdout). Resumes from its state after any stop; SIGTERM
    or Ctrl-C stops it after the current step."""
    from robustops.monitoring.monitor import Monitor, default_sinks

    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    try:
        _, cfg = _config(spec)
        home = str(registry) if registry else os.environ.get("ROBUSTOPS_REGISTRY")
        mon = Monitor(
            cfg,
            sinks=default_sinks(cfg, alerts_file),
            registry_home=home,
            on_alert=lambda a: _print_alert(a, as_json),
        )
    except RobustOpsError as exc:
        fail(exc)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if not as_json:
            err_console.print(
                f"monitoring {escape(cfg.request_log)} ({len(cfg.rules)} rules; state "
                f"{escape(cfg.state)})",
                highlight=False,
            )
        mon.run(once=once, should_stop=lambda: stop["now"])
    except RobustOpsError as exc:
        fail(exc)
    finally:
        mon.close()


@monitor_app.command("calibrate")
def calibrate_cmd(
    spec: SpecOpt,
    log: Annotated[
        Path, typer.Option("--log", help="a request log folder of stable traffic to fit from")
    ],
) -> None:
    """Fit every rule's calibration window from an existing log of stable traffic (instead of
    the first live requests). Stop the monitor first: it holds the state."""
    from robustops.monitoring.monitor import calibrate_from_log

    try:
        _, cfg = _config(spec)
        out = calibrate_from_log(cfg, log)
    except RobustOpsError as exc:
        fail(exc)
    t = Table("rule", "n", "mean", "std", "p01", "p99", "threshold")
    for rule, s in out.items():
        t.add_row(
            escape(rule),
            str(s["n"]),
            *(f"{s[k]:.4g}" for k in ("mean", "std", "p01", "p99")),
            f"{s['threshold']:.4g}" if "threshold" in s else "-",
        )
    console.print(t)


@monitor_app.command("status")
def status(
    spec: SpecOpt,
    alerts: Annotated[int, typer.Option("--alerts", min=0, help="recent alerts to show")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Calibration, detector state, recent alerts and undelivered alerts."""
    from robustops.monitoring.monitor import monitor_status

    try:
        _, cfg = _config(spec)
        st = monitor_status(cfg, alerts=alerts)
    except RobustOpsError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    swap = st["last_swap"]
    console.print(
        f"log {escape(st['request_log'])}: {len(st['files'])} files, "
        f"{sum(st['files'].values())} bytes read, "
        + (f"[red]{st['unread_bytes']} unread[/]" if st["unread_bytes"] else "none unread")
        + "; last model swap: "
        + (f"{escape(str(swap.get('model')))} at {_when(swap.get('ts'))}" if swap else "none"),
        highlight=False,
    )
    t = Table(
        "rule", "signal", "detector", "calibration", "mean ± std", "streams", "alerts", "suppressed"
    )
    for r in st["rules"]:
        cal = r["calibration"]
        if cal is None:
            cal_text, ms = "not started", "-"
        else:
            cal_text = (
                f"{cal['status']} {cal['values']}/{cal['needed']} ({cal['source']})"
                + ("" if cal["current"] else " [red]stale[/]")
                + (f"\n[red]{escape(cal['error'])}[/]" if cal.get("error") else "")
            )
            sm = cal["summary"]
            ms = f"{sm['mean']:.4g} ± {sm['std']:.3g}" if sm else "-"
        streams = r["streams"].values()
        t.add_row(
            escape(r["rule"]),
            escape(r["signal"]),
            r["detector"],
            cal_text,
            ms,
            str(len(r["streams"])),
            str(sum(s["alerts"] for s in streams)),
            str(sum(s["suppressed"] for s in streams)),
        )
    console.print(t)
    a = Table("fired (UTC)", "severity", "rule", "key", "model", "id", "delivered", "ack")
    for al in st["alerts"]:
        d = al["deliveries"]
        a.add_row(
            _when(al["fired_ts"]),
            al["severity"],
            escape(al["rule"]),
            escape(str(al.get("key") or "")),
            escape(str(al.get("model"))),
            al["id"][:12],
            f"{sum(v is not None for v in d.values())}/{len(d)}",
            escape(al["acked_by"] or ""),
        )
    console.print(a)
    colour = "red" if st["undelivered"] else "green"
    console.print(f"undelivered: [{colour}]{st['undelivered']}[/]")
    for aid, sink, attempts, err in st["delivery_errors"][:10]:
        console.print(
            f"  {aid[:12]} → {escape(sink)}: {attempts} attempts, {escape(str(err))}",
            highlight=False,
        )


@monitor_app.command("show")
def show(
    spec: SpecOpt, alert_id: Annotated[str, typer.Argument(help="alert id or prefix")]
) -> None:
    """One alert with all its evidence (JSON)."""
    from robustops.monitoring.state import MonitorState

    try:
        _, cfg = _config(spec)
        st = MonitorState(cfg.state)
        try:
            full = st.resolve(alert_id)
            alert = st.alert(full)
        finally:
            st.close()
    except RobustOpsError as exc:
        fail(exc)
    typer.echo(json.dumps(alert, indent=2))


@monitor_app.command("ack")
def ack(
    spec: SpecOpt,
    alert_id: Annotated[str, typer.Argument(help="alert id or a unique prefix")],
    by: Annotated[str, typer.Option("--as", help="who acknowledges (name)")],
    note: Annotated[str | None, typer.Option("--note", help="what was done")] = None,
) -> None:
    """Acknowledge an alert (recorded with the name, time and note; shown by status)."""
    from robustops.monitoring.state import MonitorState

    try:
        _, cfg = _config(spec)
        st = MonitorState(cfg.state)
        try:
            full = st.resolve(alert_id)
            st.ack(full, by, note)
        finally:
            st.close()
    except RobustOpsError as exc:
        fail(exc)
    console.print(f"acknowledged {full} as {escape(by)}", highlight=False)


@monitor_app.command("prometheus-rules")
def prometheus_rules_cmd(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="rules file to write (YAML)")],
    log: Annotated[
        Path | None,
        typer.Option("--log", help="calibrate from this log folder (default: the state)"),
    ] = None,
    window: Annotated[str, typer.Option("--window", help="rate window (PromQL duration)")] = "5m",
    min_requests: Annotated[
        int, typer.Option("--min-requests", min=1, help="requests a window needs to alert")
    ] = 100,
) -> None:
    """Write Prometheus alerting rules over the guard's metrics, thresholds from the
    calibration (abstention, flag and 4xx rates, p99 latency, guard down)."""
    import re

    import yaml

    from robustops.io import atomic_write_text
    from robustops.monitoring.monitor import signal_calibrations
    from robustops.monitoring.promrules import RATE_SIGNALS, prometheus_rules

    try:
        if not re.fullmatch(r"[1-9][0-9]*[smh]", window):
            raise SpecError.single("--window", f"{window!r} is not a duration such as 5m")
        name, cfg = _config(spec)
        cals = signal_calibrations(cfg, RATE_SIGNALS, log)
        if not cals:
            raise SpecError.single(
                "--log",
                "no calibration for abstention, flag, rejected or latency_ms: run the monitor "
                "until its rules on them are calibrated, or give --log FOLDER of stable traffic",
            )
        sev = {r.signal: r.severity for r in cfg.rules}
        rules = prometheus_rules(
            name, cals, severities=sev, window=window, min_requests=min_requests
        )
        atomic_write_text(out, yaml.safe_dump(rules, sort_keys=False, allow_unicode=True))
    except RobustOpsError as exc:
        fail(exc)
    n = len(rules["groups"][0]["rules"])
    console.print(f"wrote {n} rules to {escape(str(out))} (signals: {', '.join(sorted(cals))})")
