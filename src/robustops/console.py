"""The command line's consoles and its one way of reporting a :class:`RobustOpsError`: shared by
``robustops`` (:mod:`robustops.cli`) and ``robustops registry`` (:mod:`robustops.cli_registry`)."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console

from robustops.errors import RobustOpsError, SpecError

console = Console()
err_console = Console(stderr=True)


def fail(exc: RobustOpsError) -> NoReturn:
    """Print ``exc`` on one line per field (with the traceback when ``ROBUSTOPS_DEBUG`` is set)
    and exit with code 2."""
    if os.environ.get("ROBUSTOPS_DEBUG") and exc.__cause__ is not None:
        err_console.print_exception()
    err_console.print(f"[bold red]error[/]: {type(exc).__name__}")
    if isinstance(exc, SpecError):
        where = f"{exc.source}: " if exc.source else ""
        for path, msg in exc.errors:
            err_console.print(f"  {where}[yellow]{path}[/]: {msg}", highlight=False)
    else:
        err_console.print(f"  {exc}", highlight=False)
    raise typer.Exit(code=2)
