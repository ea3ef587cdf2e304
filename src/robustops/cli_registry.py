"""``robustops registry <verb>``: the governance registry from the command line.

Every command takes ``--home`` (default ``$ROBUSTOPS_REGISTRY`` or ``./registry``), ``--url``
(a SQLAlchemy URL; default ``$ROBUSTOPS_REGISTRY_URL`` or the SQLite file in the home) and
``--as`` (the acting principal; default ``$ROBUSTOPS_PRINCIPAL`` or the OS user). A refused
request prints one line and exits 2 with nothing changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from robustops.console import console, fail
from robustops.errors import RobustOpsError
from robustops.registry.service import Registry, label, resolve_actor

registry_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Model versions with lineage, gated promotion, history, rollback and a signed audit log.",
)
principal_app = typer.Typer(no_args_is_help=True, help="Who may act, and with which role.")
audit_app = typer.Typer(no_args_is_help=True, help="The signed, hash-chained audit log.")
registry_app.add_typer(principal_app, name="principal")
registry_app.add_typer(audit_app, name="audit")

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="registry folder (default $ROBUSTOPS_REGISTRY or ./registry)"),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="SQLAlchemy database URL (default $ROBUSTOPS_REGISTRY_URL or HOME's SQLite)"
    ),
]
AsOpt = Annotated[
    str | None,
    typer.Option("--as", help="acting principal (default $ROBUSTOPS_PRINCIPAL or the OS user)"),
]
RefArg = Annotated[str, typer.Argument(help="NAME@N, NAME@latest or NAME:ALIAS")]


@contextmanager
def _opened(home: Path | None, url: str | None) -> Iterator[Registry]:
    """The registry, closed afterwards; a :class:`RobustOpsError` becomes exit code 2."""
    try:
        reg = Registry.open(home, url)
    except RobustOpsError as exc:
        fail(exc)
    try:
        yield reg
    except RobustOpsError as exc:
        fail(exc)
    finally:
        reg.close()


@registry_app.command()
def init(
    admin: Annotated[str, typer.Option("--admin", help="the first principal (an admin)")],
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Create a registry (store, migrations, audit key) with its first admin."""
    with _opened(home, url) as reg:
        reg.add_principal(admin, admin, "admin")
        console.print(f"registry ready in [green]{escape(str(reg.store.home))}[/]; admin {admin}")
        console.print(f"audit key id (pin it): {reg.store.key.key_id}")


@principal_app.command("add")
def principal_add(
    name: str,
    role: Annotated[str, typer.Option("--role", help="viewer, engineer, approver or admin")],
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Add a principal or change its role (admin only)."""
    with _opened(home, url) as reg:
        p = reg.add_principal(resolve_actor(actor), name, role)
        console.print(f"{p.name}: {p.role}")


@principal_app.command("list")
def principal_list(home: HomeOpt = None, url: UrlOpt = None) -> None:
    """Every principal and its role."""
    with _opened(home, url) as reg:
        t = Table("principal", "role", "since", "added by")
        for p in reg.principals():
            t.add_row(p.name, p.role, p.created_at, p.created_by)
        console.print(t)


@registry_app.command()
def register(
    name: Annotated[str, typer.Argument(help="model name (versions are numbered per name)")],
    weights: Annotated[Path, typer.Argument(help="the weights file (safetensors)")],
    spec: Annotated[
        Path | None, typer.Option("--spec", "-s", help="the pipeline spec it was trained from")
    ] = None,
    parent: Annotated[
        str | None, typer.Option("--parent", help="the version it was fine-tuned from")
    ] = None,
    results: Annotated[
        list[Path] | None, typer.Option("--result", "-r", help="a result JSON that judged it")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="refuse unless the weights hash to this")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Register a weights file as the next version of NAME, with its lineage: the training
    sidecar (``WEIGHTS.json``), the spec and its threat catalog, the parent, the results."""
    from robustops.runner import registration_inputs

    try:
        side, spec_text, catalog = registration_inputs(weights, spec)
    except RobustOpsError as exc:
        fail(exc)
    with _opened(home, url) as reg:
        v = reg.register(
            resolve_actor(actor),
            name,
            weights,
            expected_sha256=sha256,
            sidecar=side,
            spec_text=spec_text,
            catalog=catalog,
            parent=parent,
            results=results or [],
            description=description,
        )
        console.print(f"registered [green]{label(v)}[/] (weights {v.weights_sha256[:12]}…)")


@registry_app.command()
def attach(
    ref: RefArg,
    result: Annotated[Path, typer.Argument(help="a result JSON about this version's weights")],
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Attach an evaluation result to a version."""
    with _opened(home, url) as reg:
        e = reg.attach_evaluation(resolve_actor(actor), ref, result)
        console.print(f"attached result {e.result_sha256[:12]}… to {ref}")


@registry_app.command("list")
def list_versions(
    name: Annotated[str | None, typer.Argument(help="only this model")] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Registered versions and the aliases pointing at them."""
    with _opened(home, url) as reg:
        t = Table("version", "weights", "registered", "by", "aliases")
        versions = reg.versions(name)
        held: dict[int, list[str]] = {}
        for model in sorted({v.name for v in versions}):
            for alias, target in reg.aliases(model).items():
                held.setdefault(target.id, []).append(alias)
        for v in versions:
            t.add_row(
                label(v),
                v.weights_sha256[:12] + "…",
                v.registered_at,
                v.registered_by,
                ", ".join(sorted(held.get(v.id, []))),
            )
        console.print(t)


@registry_app.command()
def show(
    ref: RefArg,
    as_json: Annotated[bool, typer.Option("--json", help="print the lineage as JSON")] = False,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """A version's lineage: weights, spec, data, recipe, parent chain, evaluations, gate
    records, approvals, aliases."""
    from robustops.registry.lineage import lineage

    with _opened(home, url) as reg:
        info = lineage(reg, ref)
        if as_json:
            typer.echo(json.dumps(info, indent=2, sort_keys=True))
            return
        _print_lineage(info)


def _print_lineage(info: dict[str, Any]) -> None:
    v = info["version"]
    console.print(f"[bold]{v['label']}[/]  registered {v['registered_at']} by {v['registered_by']}")
    rows = [
        ("weights sha256", v["weights_sha256"]),
        ("tensor sha256", v["state_sha256"]),
        ("spec sha256", v["spec_sha256"]),
        ("threat catalog", v["catalog_sha256"]),
        ("data", f"{v['data'].get('name')} {v['data_fingerprint']}"),
        *(
            ("extra train data", f"{e.get('name')} {e.get('sha256')} (n={e.get('n')})")
            for e in v["data"].get("extra_train") or []
        ),
        ("recipe", v["recipe"].get("recipe")),
        ("robustops", v["robustops_version"]),
        ("git commit", v["git_commit"]),
        ("parents", " ← ".join(info["parents"]) or "none"),
        ("aliases", ", ".join(info["aliases"]) or "none"),
    ]
    for key, value in rows:
        console.print(f"  {key:<16} {escape(str(value))}", highlight=False, soft_wrap=True)
    for e in info["evaluations"]:
        figures = ", ".join(
            f"{t['name']} {t['robust_accuracy']:.3f}" for t in e["summary"]["threats"]
        )
        console.print(
            f"  evaluation {e['result_sha256'][:12]}… clean {e['summary']['clean_accuracy']:.3f}"
            f"; robust: {figures}",
            highlight=False,
        )
    for g in info["gates"]:
        verdict = "[green]passed[/]" if g["passed"] else "[red]failed[/]"
        console.print(
            f"  gate #{g['id']} {verdict} at {g['recorded_at']} (policy {g['policy_sha256'][:12]}…)"
        )
    for a in info["approvals"]:
        console.print(f"  approved for {a['alias']} by {a['principal']} at {a['approved_at']}")


@registry_app.command()
def policy(
    model: str,
    alias: str,
    policy_file: Annotated[
        Path, typer.Argument(help="the gate policy (YAML), or a spec with a gate section")
    ],
    tier: Annotated[str | None, typer.Option("--tier", help="the policy's tier to use")] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Put a gate policy in force for MODEL:ALIAS (admin only): promotion then needs a gate
    record that passed under exactly these rules."""
    from robustops.gate import load_policy

    try:
        rules = load_policy(policy_file, tier).model_dump(mode="json")
    except RobustOpsError as exc:
        fail(exc)
    with _opened(home, url) as reg:
        p = reg.set_policy(resolve_actor(actor), model, alias, rules)
        console.print(f"policy {p.policy_sha256[:12]}… in force for {model}:{alias}")


@registry_app.command()
def approve(
    ref: RefArg,
    alias: Annotated[str, typer.Option("--alias", help="the alias it is approved for")] = (
        "production"
    ),
    comment: Annotated[str, typer.Option("--comment")] = "",
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Approve a version for an alias (approver; never the principal who registered it)."""
    with _opened(home, url) as reg:
        reg.approve(resolve_actor(actor), ref, alias, comment)
        console.print(f"approved {ref} for {alias}")


@registry_app.command()
def promote(
    ref: RefArg,
    alias: Annotated[str, typer.Argument(help="the alias to move (e.g. production)")],
    break_glass: Annotated[
        str | None,
        typer.Option("--break-glass", help="admin only: skip the checks, logged with this reason"),
    ] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Point ALIAS at a version. A protected alias (production, or any alias with a policy)
    needs a passed gate record for exactly these weights under the policy in force and an
    approval by another principal."""
    with _opened(home, url) as reg:
        ev = reg.move_alias(resolve_actor(actor), ref, alias, break_glass=break_glass)
        console.print(
            f"{escape(ev.model_name)}:{escape(alias)} → {reg.version_label(ev.version_id)} "
            f"({ev.kind}; was {reg.version_label(ev.previous_version_id) or 'unset'})"
        )


@registry_app.command()
def rollback(
    model: str,
    alias: str,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Move ALIAS back to the previous version that held it (its gate record re-checked)."""
    with _opened(home, url) as reg:
        ev = reg.rollback(resolve_actor(actor), model, alias)
        console.print(
            f"{model}:{alias} rolled back to {reg.version_label(ev.version_id)} "
            f"(from {reg.version_label(ev.previous_version_id)})"
        )


@registry_app.command()
def history(
    model: str,
    alias: str,
    at: Annotated[
        str | None,
        typer.Option("--at", help="only say which version held the alias at this ISO-8601 time"),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="the newest N moves (0: every move)")
    ] = 50,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Every move of MODEL:ALIAS (newest first), or which version held it at a time."""
    with _opened(home, url) as reg:
        if at is not None:
            v = reg.alias_at(model, alias, at)
            typer.echo(label(v) if v else f"{model}:{alias} pointed to no version at {at}")
            return
        t = Table("at", "version", "previous", "kind", "by", "reason")
        moves = reg.history(model, alias, limit or None)
        names = reg.labels([m.version_id for m in moves] + [m.previous_version_id for m in moves])
        for ev in moves:
            t.add_row(
                ev.at,
                names.get(ev.version_id or -1, "-"),
                names.get(ev.previous_version_id or -1, "-"),
                ev.kind,
                ev.actor,
                escape(ev.reason),
            )
        console.print(t)


@audit_app.command("verify")
def audit_verify(
    pin: Annotated[
        str | None,
        typer.Option("--pin", help="the key id the log must be signed with (from `init`)"),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="check every signature, not only the head's")
    ] = False,
    expect_head: Annotated[
        str | None,
        typer.Option("--expect-head", help="SEQ:HASH of a head recorded earlier (truncation)"),
    ] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Check every event of the audit log: order, links, hashes, keys and signatures. Exit 1
    naming the first bad event when the log was edited, deleted from, inserted into or
    reordered."""
    head = None
    if expect_head is not None:
        seq, _, digest = expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            fail(RobustOpsError("--expect-head: give SEQ:HASH (a number and a hex sha256)"))
        head = (int(seq), digest)
    with _opened(home, url) as reg:
        verdict = reg.verify_audit(pinned=pin, full=full, expect_head=head)
    if verdict.ok:
        console.print(
            f"[green]audit log intact[/]: {verdict.events_checked} events, head "
            f"{verdict.head_seq}:{verdict.head_hash}"
        )
        return
    console.print(
        f"[bold red]audit log broken[/] at event {verdict.first_bad_seq}: {escape(verdict.reason)}",
        highlight=False,
    )
    raise typer.Exit(code=1)


@audit_app.command("show")
def audit_show(
    tail: Annotated[int, typer.Option("--tail", min=1, help="the last N events")] = 20,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """The newest audit events."""
    with _opened(home, url) as reg:
        events = reg.recent_events(tail)
        t = Table("seq", "at", "actor", "action", "subject", "payload")
        for ev in events:
            t.add_row(str(ev.seq), ev.at, ev.actor, ev.action, ev.subject, escape(ev.payload))
        console.print(t)


# -- vulnerabilities and the risk register ---------------------------------------------------

vuln_app = typer.Typer(
    no_args_is_help=True,
    help="Vulnerability records: known weaknesses of versions, each replayable.",
)
registry_app.add_typer(vuln_app, name="vuln")

VulnIdArg = Annotated[str, typer.Argument(help="the vulnerability id, e.g. RVULN-0001")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _print_vuln(rec: Any) -> None:
    """A vulnerability record for people (``rec``: a VulnerabilityRecord)."""
    console.print(f"[bold]{escape(rec.id)}[/] {escape(rec.title)}", highlight=False, soft_wrap=True)
    rows = [
        ("model", rec.model),
        ("status", rec.status),
        ("severity", rec.severity),
        ("owner", rec.owner),
        ("threat", rec.threat or "-"),
        ("catalog entry", rec.catalog_entry or "-"),
        ("affects", ", ".join(rec.affected) or "-"),
        ("opened", f"{rec.opened_at} by {rec.opened_by}"),
        ("updated", rec.updated_at),
        ("closed", rec.closed_at or "-"),
        ("remediation", rec.remediation or "-"),
    ]
    ev, rp = rec.evidence, rec.reproduce
    if ev:
        rows += [
            ("evidence", f"result {str(ev.get('result_sha256'))[:12]}…"),
            (
                "observed",
                f"robust accuracy {ev.get('robust_accuracy', float('nan')):.3f}, attack "
                f"success {ev.get('attack_success_rate', float('nan')):.3f}, "
                f"{ev.get('n_broken')} samples broken",
            ),
        ]
    if rp:
        rows.append(
            (
                "reproduce",
                f"{rp.get('attack')} {json.dumps(rp.get('params'), sort_keys=True)} under "
                f"{rp.get('threat', {}).get('name')} (seed {rp.get('seed')}) on "
                f"{len(rp.get('indices', []))} test samples",
            )
        )
    for key, value in rows:
        console.print(f"  {key:<14} {escape(str(value))}", highlight=False, soft_wrap=True)
    for n in rec.notes:
        changes = json.dumps(n["changes"], sort_keys=True)
        if len(changes) > 300:
            changes = changes[:300] + "…"
        console.print(
            f"  note {n['at']} {escape(n['actor'])}: {escape(changes)}",
            highlight=False,
            soft_wrap=True,
        )


@vuln_app.command("list")
def vuln_list(
    model: Annotated[str | None, typer.Option("--model", help="only this model")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="only this status (repeatable)")
    ] = None,
    severity: Annotated[
        list[str] | None, typer.Option("--severity", help="only this severity (repeatable)")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="only those affecting this version")
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Vulnerability records, by id."""
    from robustops.registry.vulnerabilities import list_vulnerabilities

    with _opened(home, url) as reg:
        records = list_vulnerabilities(
            reg, model=model, status=status, severity=severity, version=version
        )
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in records], indent=2, sort_keys=True))
        return
    t = Table("id", "severity", "status", "threat", "affects", "owner", "title")
    for r in records:
        t.add_row(
            r.id,
            r.severity,
            r.status,
            escape(r.threat or "-"),
            escape(", ".join(r.affected)),
            escape(r.owner),
            escape(r.title),
        )
    console.print(t)


@vuln_app.command("show")
def vuln_show(
    vuln_id: VulnIdArg, as_json: JsonOpt = False, home: HomeOpt = None, url: UrlOpt = None
) -> None:
    """One vulnerability record with its reproduction, evidence and notes."""
    from robustops.registry.vulnerabilities import show_vulnerability

    with _opened(home, url) as reg:
        rec = show_vulnerability(reg, vuln_id)
    if as_json:
        typer.echo(json.dumps(rec.to_json(), indent=2, sort_keys=True))
        return
    _print_vuln(rec)


@vuln_app.command("open")
def vuln_open(
    ref: RefArg,
    threat: Annotated[str, typer.Option("--threat", help="the threat it falls under")],
    title: Annotated[str, typer.Option("--title", help="one line saying what breaks")],
    severity: Annotated[str, typer.Option("--severity", help="low, medium, high or critical")],
    owner: Annotated[
        str | None, typer.Option("--owner", help="who answers for it (default: the entry's)")
    ] = None,
    catalog_entry: Annotated[
        str | None, typer.Option("--catalog-entry", help="the threat catalog entry")
    ] = None,
    remediation: Annotated[str, typer.Option("--remediation")] = "",
    result: Annotated[
        str | None,
        typer.Option("--result", help="sha256 of the attached result holding the evidence"),
    ] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Open a vulnerability record by hand for a version. Its reproduction and evidence come
    from the newest evaluation of the version that ran the threat."""
    from robustops.registry.vulnerabilities import open_vulnerability

    with _opened(home, url) as reg:
        rec = open_vulnerability(
            reg,
            resolve_actor(actor),
            ref,
            threat=threat,
            title=title,
            severity=severity,
            owner=owner,
            catalog_entry=catalog_entry,
            remediation=remediation,
            result_sha256=result,
        )
    replay = "replayable" if rec.replayable else "no attack recorded to replay"
    console.print(f"opened [bold]{rec.id}[/] ({rec.severity}; {replay})")


@vuln_app.command("update")
def vuln_update(
    vuln_id: VulnIdArg,
    status: Annotated[
        str | None,
        typer.Option("--status", help="open, triaged, mitigated, verified or closed"),
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    severity: Annotated[str | None, typer.Option("--severity")] = None,
    remediation: Annotated[str | None, typer.Option("--remediation")] = None,
    affects: Annotated[
        list[str] | None,
        typer.Option("--affects", help="another version it affects (repeatable)"),
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment", help="kept in the note")] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Change a vulnerability record. The status moves one step at a time (open, triaged,
    mitigated, verified, closed) or back to open; verified and closed need an approver."""
    from robustops.registry.vulnerabilities import update_vulnerability

    with _opened(home, url) as reg:
        rec = update_vulnerability(
            reg,
            resolve_actor(actor),
            vuln_id,
            status=status,
            owner=owner,
            severity=severity,
            remediation=remediation,
            affects=affects or [],
            comment=comment,
        )
    console.print(
        f"{rec.id}: {rec.status}, {rec.severity}, owner {escape(rec.owner)}; affects "
        f"{', '.join(rec.affected)}",
        highlight=False,
    )


@vuln_app.command("replay")
def vuln_replay(
    vuln_id: VulnIdArg,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", "-s", help="the spec to build model and data from (default: stored)"
        ),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option("--on", help="replay on this version (default: where it was found)"),
    ] = None,
    record: Annotated[
        bool, typer.Option("--record", help="keep the outcome as a note of the record")
    ] = False,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
    url: UrlOpt = None,
    actor: AsOpt = None,
) -> None:
    """Re-run exactly the recorded attack (parameters, threat, seed) on the recorded samples,
    with the version's weights from the artifact store, and say how many break again."""
    import tempfile

    from robustops.registry.vulnerabilities import record_replay, replay_inputs
    from robustops.runner import replay_attack

    with _opened(home, url) as reg:
        inputs = replay_inputs(reg, vuln_id, on)
        with tempfile.TemporaryDirectory(prefix="robustops-replay-") as tmp:
            spec_path = spec
            if spec_path is None:
                if inputs.spec_text is None:
                    raise RobustOpsError(
                        f"--spec: {inputs.version} was registered without a spec; give one"
                    )
                spec_path = Path(tmp) / "spec.yaml"
                spec_path.write_text(inputs.spec_text, encoding="utf-8")
            outcome = replay_attack(
                spec_path,
                inputs.weights_path,
                inputs.record.reproduce,
                weights_sha256=inputs.weights_sha256,
            )
        outcome = {"version": inputs.version, **outcome}
        if record:
            record_replay(reg, resolve_actor(actor), vuln_id, outcome)
    if as_json:
        typer.echo(json.dumps(outcome, indent=2, sort_keys=True))
        return
    verdict = "[red]reproduced[/]" if outcome["reproduced"] else "[green]not reproduced[/]"
    console.print(
        f"{vuln_id} on {inputs.version}: {outcome['attack']} under {escape(outcome['threat'])} "
        f"broke {outcome['n_broken']} of {outcome['n_samples']} recorded samples: {verdict}",
        highlight=False,
    )


@registry_app.command("risk")
def risk(
    ref: RefArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md, html or csv")] = "md",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write here (default: print)")
    ] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """The risk register of a version: its threat catalog joined with its newest evaluation
    (residual figures per entry, uncovered entries) and its vulnerabilities not closed."""
    from robustops.registry.risk import (
        render_risk_register,
        risk_register,
        write_risk_register,
    )

    with _opened(home, url) as reg:
        rr = risk_register(reg, ref)
        if out is None:
            typer.echo(render_risk_register(rr, fmt), nl=False)
            return
        path = write_risk_register(rr, fmt, out)
    console.print(f"risk register of {rr.version} written to {escape(str(path))}")


# -- exports: MLflow, model card, in-toto attestation, lineage graph -------------------------


@registry_app.command("export-mlflow")
def export_mlflow_cmd(
    ref: RefArg,
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking store, e.g. sqlite:///mlflow.db or http://host:5000 "
            "(the model registry needs a database-backed store)",
        ),
    ],
    registry_uri: Annotated[
        str | None, typer.Option("--registry-uri", help="MLflow registry (default: tracking)")
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="MLflow registered model (default: the model's name)"),
    ] = None,
    experiment: Annotated[str, typer.Option("--experiment")] = "robustops",
    aliases: Annotated[
        bool,
        typer.Option("--aliases/--no-aliases", help="mirror the RobustOps aliases in MLflow"),
    ] = True,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Write a version into MLflow: a run (params, metrics, tags with every hash and the threat
    models, artifacts: weights, spec, results, model card, in-toto statement) and a registered
    model version pointing at its weights (needs the extra robustops[mlflow])."""
    from robustops.registry.exports import export_mlflow

    with _opened(home, url) as reg:
        out = export_mlflow(
            reg,
            ref,
            tracking_uri,
            registered_model_name=model_name,
            experiment=experiment,
            registry_uri=registry_uri,
            mirror_aliases=aliases,
        )
    verb = "exported to" if out["created"] else "already exported as"
    console.print(
        f"{escape(ref)} {verb} MLflow {escape(out['registered_model'])} version "
        f"{out['model_version']} (run {out['run_id']})",
        highlight=False,
        soft_wrap=True,
    )
    if out["aliases"]:
        console.print(f"  aliases: {', '.join(out['aliases'])}", highlight=False, soft_wrap=True)
    if out["skipped_aliases"]:
        console.print(
            f"  not mirrored (reserved in MLflow): {', '.join(out['skipped_aliases'])}",
            highlight=False,
            soft_wrap=True,
        )


@registry_app.command()
def card(
    ref: RefArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for card.md and card.json")],
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Write the model card of a version (card.md and card.json): intended use, data, threat
    catalog, clean/robust/calibration/certified figures with Wilson 95% intervals, known
    vulnerabilities, lineage, gate records."""
    from robustops.registry.exports import write_card

    with _opened(home, url) as reg:
        md, js = write_card(reg, ref, out)
    console.print(
        f"model card: {escape(str(md))}, {escape(str(js))}", highlight=False, soft_wrap=True
    )


@registry_app.command()
def attest(
    ref: RefArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="the attestation file (JSON)")],
    sign: Annotated[
        bool,
        typer.Option(
            "--sign/--no-sign",
            help="wrap the statement in a DSSE envelope signed with the registry's audit key",
        ),
    ] = True,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Write an in-toto Statement v1 binding the version's weights (subject, sha256) to its
    evaluation results, gate records, threat catalog and spec hashes; signed (DSSE, Ed25519)
    by default."""
    from robustops.io import atomic_write_text
    from robustops.registry.exports import intoto_statement, sign_statement

    with _opened(home, url) as reg:
        doc = sign_statement(reg, ref) if sign else intoto_statement(reg, ref)
        key_id = reg.store.key.key_id
    atomic_write_text(out, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    what = f"DSSE envelope signed by key {key_id}" if sign else "unsigned in-toto statement"
    console.print(f"{escape(str(out))}: {what}", highlight=False, soft_wrap=True)


@registry_app.command("verify-attestation")
def verify_attestation(
    envelope: Annotated[Path, typer.Argument(help="a DSSE envelope written by `attest`")],
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="raw Ed25519 public key, 64 hex digits (default: the audit key)"
        ),
    ] = None,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """Check an attestation's signature; print its subject and evaluations. Exit 2 when it
    does not verify."""
    from robustops.registry.exports import verify_dsse
    from robustops.registry.store import RegistryError

    try:
        doc = json.loads(envelope.read_text(encoding="utf-8"))
        public = bytes.fromhex(key) if key else None
    except (OSError, ValueError) as exc:
        fail(RegistryError(f"attestation: cannot read {envelope}: {exc}"))
    if public is None:
        with _opened(home, url) as reg:
            public = reg.store.key.public_raw
    try:
        statement = verify_dsse(doc if isinstance(doc, dict) else {}, public)
    except RobustOpsError as exc:
        fail(exc)
    console.print("[green]signature verifies[/]")
    for s in statement.get("subject", []):
        console.print(
            f"  subject {escape(str(s.get('name')))} sha256 {s.get('digest', {}).get('sha256')}",
            highlight=False,
            soft_wrap=True,
        )
    for e in statement.get("predicate", {}).get("evaluations", []):
        console.print(f"  evaluation {e.get('result_sha256')}", highlight=False, soft_wrap=True)


@registry_app.command("lineage")
def lineage_cmd(
    ref: RefArg,
    graph: Annotated[
        Path | None,
        typer.Option(
            "--graph",
            help="write the graph to FILE; its suffix picks the format: .mmd (Mermaid), "
            ".dot (Graphviz), .png (picture)",
        ),
    ] = None,
    secondary: Annotated[
        bool,
        typer.Option("--secondary/--versions-only", help="show evaluations and gate records"),
    ] = True,
    home: HomeOpt = None,
    url: UrlOpt = None,
) -> None:
    """The lineage graph of a version (ancestors, descendants, their evaluations and gate
    records): written to --graph FILE, else printed as Mermaid."""
    from robustops.registry.graph import lineage_graph, to_mermaid, write_graph

    with _opened(home, url) as reg:
        if graph is None:
            typer.echo(to_mermaid(lineage_graph(reg, ref, secondary=secondary)), nl=False)
            return
        path = write_graph(reg, ref, graph, secondary=secondary)
    console.print(
        f"lineage graph of {escape(ref)}: {escape(str(path))}", highlight=False, soft_wrap=True
    )
