"""What the per-model benchmark scripts share: their command line and their result file."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from robustops._util import environment

ROOT = Path(__file__).resolve().parent.parent


def model_benchmark_main(
    doc: str,
    out: str,
    models: Iterable[str],
    run: Callable[[str, int, bool], dict[str, Any]],
    print_table: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Parse ``--n-eval``, ``--retrain``, ``--threads``, ``--out`` (default ``out`` under the
    repository) and ``--table-only``; run ``run(model, n_eval, retrain)`` for every model, write
    the results with the environment and the arguments to ``--out``, and print the table."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / out)
    ap.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(args.out.read_text())["results"])
        return
    torch.set_num_threads(args.threads)
    results = [run(name, args.n_eval, args.retrain) for name in models]
    write_results(args, results, print_table)


def write_results(
    args: argparse.Namespace, results: Any, print_table: Callable[[Any], None]
) -> None:
    """Write ``results`` with the command line, the environment and the arguments to
    ``args.out`` (JSON), then print the table and where it went."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", *sys.argv])
    args.out.write_text(
        json.dumps(
            {
                "results": results,
                "command": command,
                "environment": environment(),
                "args": vars(args),
            },
            indent=2,
            default=str,
        )
    )
    print_table(results)
    print(f"written to {args.out}")
