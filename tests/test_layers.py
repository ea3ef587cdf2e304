"""The package layers of ``src/robustops`` (docs: shared DESIGN, issue 12): every import points
down, no package imports itself back through another, nothing hides an import behind importlib,
and no package reaches into another's private modules. Lazy and ``TYPE_CHECKING`` imports count.

A new subpackage or top-level module fails here until it is given its place below."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "robustops"

# Subpackages, bottom up: a package may import those of a lower or equal rank, never higher
# (equal ranks may not form a cycle either).
RANK: dict[str, int] = {
    "threats": 0,  # the threat model, its catalog and its geometry
    "models": 1,
    "tabular": 1,  # feature schemas and their projection: data, not attacks
    "text": 2,  # text classifiers, embeddings, sanitizer, attack tables
    "data": 2,  # embedded data sets (the breast cancer table is encoded by its schema)
    "attacks": 3,  # every modality, one contract
    "training": 4,
    "defenses": 4,
    "evaluation": 4,
    "report": 5,
    "registry": 6,  # on results, reports and gate records
    "serving": 7,  # the guard in front of a model
    "monitoring": 8,  # drift alerts, canaries, rollback and harvesting over the guard
}
# Top-level modules: the foundations anyone may import, and the top that nothing imports.
FOUNDATION = {"errors", "io", "trust", "_util", "schema", "format", "__init__"}
TOP = {
    "config",
    "gate",
    "junit",
    "runner",
    "serve",
    "cli",
    "cli_registry",
    "cli_serve",
    "canary",  # the canary job: needs the spec and the gate's McNemar
    "cli_canary",
    "cli_monitor",
    "cli_review",
    "console",
    "lifecycle",
    "__main__",
}


def _imports() -> list[tuple[Path, str, str, int]]:
    """``(file, home, imported module, line)`` for every robustops import in the package."""
    out = []
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        home = parts[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            out += [(f, home, m, node.lineno) for m in mods if m.startswith("robustops.")]
    return out


def _edges() -> set[tuple[str, str]]:
    return {
        (home, m.split(".")[1])
        for _, home, m, _ in _imports()
        if home in RANK and m.split(".")[1] != home
    }


def test_every_package_and_module_has_its_place() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py")}
    assert packages == set(RANK), "give a new subpackage its rank in RANK"
    assert modules <= FOUNDATION | TOP, "place a new top-level module in FOUNDATION or TOP"


def test_imports_point_down() -> None:
    bad = []
    for f, home, module, line in _imports():
        target = module.split(".")[1]
        if target == home:
            continue
        if target in TOP and home not in TOP:
            bad.append(f"{f.relative_to(SRC)}:{line} imports {module} (a top-level entry point)")
        if home in RANK and target in RANK and RANK[target] > RANK[home]:
            bad.append(f"{f.relative_to(SRC)}:{line}: {home} (rank {RANK[home]}) imports {module}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_packages() -> None:
    edges = _edges()
    reach = {a: {b for x, b in edges if x == a} for a in RANK}
    changed = True
    while changed:
        changed = False
        for a in RANK:
            new = set().union(*(reach.get(b, set()) for b in reach[a])) - reach[a]
            if new:
                reach[a] |= new
                changed = True
    cycles = sorted(a for a in RANK if a in reach[a])
    assert not cycles, f"packages on an import cycle: {cycles}; edges {sorted(edges)}"


def test_no_private_module_across_packages() -> None:
    bad = [
        f"{f.relative_to(SRC)}:{line} imports {module}"
        for f, home, module, line in _imports()
        if module.split(".")[1] != home and any(p.startswith("_") for p in module.split(".")[2:])
    ]
    assert not bad, "promote what is shared to a public module:\n" + "\n".join(bad)


def test_no_import_hidden_behind_importlib() -> None:
    bad = []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            name = getattr(func, "attr", getattr(func, "id", ""))
            if isinstance(node, ast.Call) and name in ("import_module", "__import__"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("robustops"):
                    bad.append(f"{f.relative_to(SRC)}:{node.lineno}")
    assert not bad, f"imports hidden behind importlib: {bad}"


def test_the_edges_are_real() -> None:
    """The checks are not vacuous: the import graph holds the edges we know of."""
    assert {("attacks", "threats"), ("evaluation", "attacks"), ("training", "text")} <= _edges()
