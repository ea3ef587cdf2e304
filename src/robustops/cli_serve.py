"""``robustops serve`` and ``robustops keys``: the guard in front of a model, and its API keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from robustops.console import console, fail
from robustops.errors import RobustOpsError

keys_app = typer.Typer(no_args_is_help=True, help="API keys of the guard (salted scrypt hashes).")
KeysOpt = Annotated[Path, typer.Option("--keys", help="the key file (SQLite) the guard reads")]


def serve(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="pipeline spec (YAML)")],
    ref: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="serve this registry version instead (NAME@N, or NAME:ALIAS, which the "
            "workers follow when it moves: serve.follow_seconds)",
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry", help="registry folder (default $ROBUSTOPS_REGISTRY or ./registry)"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1)] = None,
) -> None:
    """Serve the spec's model (or a registry version) behind the guard: API keys, limits,
    validation, attack-in-progress detection, calibrated abstention, JSON logs, /metrics."""
    from robustops.serve import ServeTarget, run

    target = ServeTarget(
        spec=str(spec), ref=ref, registry=str(registry) if registry is not None else None
    )
    try:
        run(target, host=host, port=port, workers=workers)
    except RobustOpsError as exc:
        fail(exc)


@keys_app.command("add")
def keys_add(
    name: str,
    keys: KeysOpt = Path("guard/keys.db"),
    role: Annotated[str, typer.Option("--role", help="client, canary or admin")] = "client",
) -> None:
    """Make an API key; it is printed once and only its salted hash is stored."""
    from robustops.serving.keys import KeyStore

    try:
        key = KeyStore(keys).add(name, role)
    except RobustOpsError as exc:
        fail(exc)
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(name: str, keys: KeysOpt = Path("guard/keys.db")) -> None:
    """Revoke a key (every worker refuses it within its cache time, 5 s)."""
    from robustops.serving.keys import KeyStore

    try:
        KeyStore(keys).revoke(name)
    except RobustOpsError as exc:
        fail(exc)
    console.print(f"revoked {escape(name)}")


@keys_app.command("list")
def keys_list(keys: KeysOpt = Path("guard/keys.db")) -> None:
    """Every key's name, role and dates (never the key)."""
    from datetime import UTC, datetime

    from robustops.serving.keys import KeyStore

    t = Table("name", "role", "created", "revoked")
    for name, role, created, revoked in KeyStore(keys).list():
        stamp = [
            datetime.fromtimestamp(x, UTC).isoformat(timespec="seconds") if x else "-"
            for x in (created, revoked)
        ]
        t.add_row(escape(name), role, *stamp)
    console.print(t)
