"""A version's lineage as a graph: its ancestors and descendants (fine-tuned from / into), with
the evaluations and gate records of each version as secondary nodes, written as Mermaid text
(``.mmd``), Graphviz DOT text (``.dot``) or a PNG picture drawn with matplotlib (``.png``; Agg,
no Graphviz binary needed).

Nodes: ``version`` (``NAME@N``, its aliases, the start of its weights hash; the version asked
about is the ``focus``), ``evaluation`` (start of the result file's hash, clean and worst robust
accuracy) and ``gate`` (record id and verdict). Edges: ``fine-tuned`` (parent → child),
``evaluated`` (version → evaluation) and ``gated`` (evaluation → gate on that result; version →
gate when the result is not attached). Node ids are stable across runs (``v<id>``,
``e<id>_<hash12>``, ``g<id>``), so the text outputs of the same registry state are identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from robustops.io import atomic_write_bytes, atomic_write_text
from robustops.registry.models import Alias, Evaluation, GateRecord, ModelVersion
from robustops.registry.service import Registry, label
from robustops.registry.store import RegistryError

__all__ = [
    "GRAPH_FORMATS",
    "Edge",
    "LineageGraph",
    "Node",
    "lineage_graph",
    "to_dot",
    "to_mermaid",
    "to_png",
    "write_graph",
]

NodeKind = Literal["version", "evaluation", "gate"]
EdgeKind = Literal["fine-tuned", "evaluated", "gated"]
GRAPH_FORMATS = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".png": "png",
}
"""File suffix → format of :func:`write_graph`."""


@dataclass(frozen=True)
class Node:
    """One node: ``id`` (stable, ``[A-Za-z0-9_]``), ``kind``, ``lines`` (the label, one entry per
    line), ``version`` (the id of the version it belongs to), ``focus`` (the version asked
    about) and ``passed`` (gates: the verdict)."""

    id: str
    kind: NodeKind
    lines: tuple[str, ...]
    version: int
    focus: bool = False
    passed: bool | None = None


@dataclass(frozen=True)
class Edge:
    """A directed edge ``source → target`` of one :data:`EdgeKind`."""

    source: str
    target: str
    kind: EdgeKind


@dataclass
class LineageGraph:
    """The nodes (versions in depth-first order from the root ancestor, each followed by its
    secondary nodes) and edges of one version's lineage."""

    focus: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError when absent)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def depth(self) -> dict[str, int]:
        """Version node id → generation (0 for the root ancestor)."""
        out: dict[str, int] = {}
        parents = {e.target: e.source for e in self.edges if e.kind == "fine-tuned"}
        for n in self.nodes:
            if n.kind == "version":
                p = parents.get(n.id)
                out[n.id] = out[p] + 1 if p is not None else 0
        return out


def _version_lines(v: ModelVersion, aliases: list[str]) -> tuple[str, ...]:
    lines = [label(v)]
    if aliases:
        lines.append("[" + ", ".join(aliases) + "]")
    lines.append(f"weights {v.weights_sha256[:12]}")
    return tuple(lines)


def _eval_lines(e: Evaluation) -> tuple[str, ...]:
    s = e.summary or {}
    lines = [f"eval {e.result_sha256[:12]}"]
    if isinstance(s.get("clean_accuracy"), int | float):
        lines.append(f"clean {s['clean_accuracy']:.3f}")
    robust = [
        t["robust_accuracy"]
        for t in s.get("threats") or []
        if isinstance(t.get("robust_accuracy"), int | float)
    ]
    if robust:
        lines.append(f"worst robust {min(robust):.3f}")
    return tuple(lines)


def lineage_graph(reg: Registry, ref: str, *, secondary: bool = True) -> LineageGraph:
    """The lineage graph of ``ref``: the chain of its ancestors, it, and every descendant (all
    generations), and (``secondary``) each version's evaluations and gate records."""
    with reg.store.read() as s:
        focus = reg.version_in(s, ref)
        root = focus
        seen = {root.id}
        while root.parent_id is not None:
            p = s.get(ModelVersion, root.parent_id)
            if p is None or p.id in seen:
                break
            seen.add(p.id)
            root = p
        ancestors = _ancestor_ids(s, focus)
        graph = LineageGraph(focus=label(focus))
        _walk(s, root, focus.id, ancestors, graph, secondary, set())
        return graph


def _ancestor_ids(s: Session, v: ModelVersion) -> set[int]:
    out = {v.id}
    while v.parent_id is not None and v.parent_id not in out:
        p = s.get(ModelVersion, v.parent_id)
        if p is None:
            break
        out.add(p.id)
        v = p
    return out


def _walk(
    s: Session,
    v: ModelVersion,
    focus_id: int,
    ancestors: set[int],
    graph: LineageGraph,
    secondary: bool,
    done: set[int],
) -> None:
    """Add ``v`` (and, below the focus, all its descendants; above it only the ancestor line)
    depth first."""
    done.add(v.id)
    aliases = sorted(a.alias for a in s.scalars(select(Alias).where(Alias.version_id == v.id)))
    vid = f"v{v.id}"
    graph.nodes.append(
        Node(vid, "version", _version_lines(v, aliases), v.id, focus=v.id == focus_id)
    )
    if secondary:
        evals: dict[str, str] = {}
        for e in s.scalars(
            select(Evaluation).where(Evaluation.version_id == v.id).order_by(Evaluation.id)
        ):
            eid = f"e{v.id}_{e.result_sha256[:12]}"
            evals[e.result_sha256] = eid
            graph.nodes.append(Node(eid, "evaluation", _eval_lines(e), v.id))
            graph.edges.append(Edge(vid, eid, "evaluated"))
        for g in s.scalars(
            select(GateRecord).where(GateRecord.version_id == v.id).order_by(GateRecord.id)
        ):
            gid = f"g{g.id}"
            verdict = "passed" if g.passed else "failed"
            graph.nodes.append(
                Node(
                    gid,
                    "gate",
                    (f"gate #{g.id} {verdict}", f"policy {g.policy_sha256[:12]}"),
                    v.id,
                    passed=g.passed,
                )
            )
            graph.edges.append(Edge(evals.get(g.result_sha256, vid), gid, "gated"))
    below_focus = v.id not in ancestors or v.id == focus_id
    children = s.scalars(
        select(ModelVersion).where(ModelVersion.parent_id == v.id).order_by(ModelVersion.id)
    ).all()
    for c in children:
        if c.id in done or not (below_focus or c.id in ancestors):
            continue
        graph.edges.append(Edge(vid, f"v{c.id}", "fine-tuned"))
        _walk(s, c, focus_id, ancestors, graph, secondary, done)


# -- text formats ----------------------------------------------------------------------------


def _mermaid_text(lines: tuple[str, ...]) -> str:
    escaped = [
        ln.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for ln in lines
    ]
    return "<br/>".join(escaped)


def to_mermaid(graph: LineageGraph) -> str:
    """The graph as a Mermaid ``flowchart LR`` (versions as boxes, evaluations as rounded
    boxes, gates as hexagons; the focus, passed and failed gates styled by class)."""
    out = [f"%% lineage of {graph.focus} (RobustOps registry)", "flowchart LR"]
    shapes = {"version": ('["', '"]'), "evaluation": ('("', '")'), "gate": ('{{"', '"}}')}
    for n in graph.nodes:
        left, right = shapes[n.kind]
        out.append(f"    {n.id}{left}{_mermaid_text(n.lines)}{right}")
    arrows = {"fine-tuned": "-->|fine-tuned|", "evaluated": "-.->", "gated": "-.->"}
    out += [f"    {e.source} {arrows[e.kind]} {e.target}" for e in graph.edges]
    out += [
        "    classDef focus fill:#ffe08a,stroke:#b8860b,stroke-width:2px",
        "    classDef version fill:#dbe9f6,stroke:#2f5d8a",
        "    classDef evaluation fill:#eeeeee,stroke:#777777",
        "    classDef passed fill:#d4efd4,stroke:#2e7d32",
        "    classDef failed fill:#f8d7d7,stroke:#c62828",
    ]
    for n in graph.nodes:
        cls = (
            "focus"
            if n.focus
            else ("passed" if n.passed else "failed")
            if n.kind == "gate"
            else n.kind
        )
        out.append(f"    class {n.id} {cls}")
    return "\n".join(out) + "\n"


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_DOT_STYLE = {
    "version": 'shape=box, style="rounded,filled", fillcolor="#dbe9f6"',
    "evaluation": 'shape=note, style=filled, fillcolor="#eeeeee"',
    "gate": "shape=hexagon, style=filled",
}


def to_dot(graph: LineageGraph) -> str:
    """The graph as Graphviz DOT (``digraph lineage``, left to right; render it with
    ``dot -Tsvg``). Labels use ``\\n`` line breaks; the focus is gold and bold."""
    out = [
        "digraph lineage {",
        f"  label={_dot_string('lineage of ' + graph.focus)};",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for n in graph.nodes:
        style = _DOT_STYLE[n.kind]
        if n.kind == "gate":
            style += ', fillcolor="#d4efd4"' if n.passed else ', fillcolor="#f8d7d7"'
        if n.focus:
            style = 'shape=box, style="rounded,filled,bold", fillcolor="#ffe08a", penwidth=2'
        text = "\\n".join(ln.replace("\\", "\\\\").replace('"', '\\"') for ln in n.lines)
        out.append(f'  {n.id} [label="{text}", {style}];')
    for e in graph.edges:
        attrs = ' [label="fine-tuned"]' if e.kind == "fine-tuned" else " [style=dashed]"
        out.append(f"  {e.source} -> {e.target}{attrs};")
    out.append("}")
    return "\n".join(out) + "\n"


# -- picture -------------------------------------------------------------------------------

_COLUMN_IN = 1.5  # inches per layout column
_ROW_IN = 0.75  # inches per layout row
_MAX_PIXELS = 30_000  # longest side of the picture (matplotlib refuses 2**16 and more)
_FILL = {"version": "#dbe9f6", "evaluation": "#eeeeee"}


def _layout(graph: LineageGraph) -> dict[str, tuple[float, float]]:
    """Node id → (column, row): an indented tree. Each version sits in column ``2 × depth``
    with its evaluations and gates in the rows below it, one column to the right; its children
    follow in the next rows, two columns to the right."""
    depth = graph.depth()
    pos: dict[str, tuple[float, float]] = {}
    for row, n in enumerate(graph.nodes):
        if n.kind == "version":
            pos[n.id] = (2.0 * depth[n.id], float(row))
        else:
            pos[n.id] = (2.0 * depth[f"v{n.version}"] + 1.0, float(row))
    return pos


def to_png(graph: LineageGraph, path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the graph (see :func:`_layout`) as a PNG at ``path`` with matplotlib's Agg canvas
    (no display, no Graphviz; ``dpi`` lowered so that no side exceeds 30 000 pixels); written
    atomically. Returns ``path``."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = _layout(graph)
    cols = max((c for c, _ in pos.values()), default=0.0) + 1
    rows = max((r for _, r in pos.values()), default=0.0) + 1
    size = (max(4.0, cols * _COLUMN_IN), max(2.0, rows * _ROW_IN + 0.6))
    dpi = min(dpi, int(_MAX_PIXELS / max(size)))  # a huge lineage: smaller dots, not a crash
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.9))
    ax.set_xlim(-0.6, cols - 0.2)
    ax.set_ylim(rows - 0.4, -0.6)
    ax.set_axis_off()
    fig.suptitle(f"Lineage of {graph.focus}", fontsize=11, x=0.02, ha="left")
    artists: dict[str, Any] = {}
    for n in graph.nodes:
        x, y = pos[n.id]
        fill = _FILL.get(n.kind, "#d4efd4" if n.passed else "#f8d7d7")
        edge = "#2f5d8a" if n.kind == "version" else "#777777"
        if n.focus:
            fill, edge = "#ffe08a", "#b8860b"
        shape = "round,pad=0.35" if n.kind != "gate" else "sawtooth,pad=0.35"
        artists[n.id] = ax.text(
            x,
            y,
            "\n".join(n.lines),
            ha="left",
            va="center",
            fontsize=8,
            fontweight="bold" if n.kind == "version" else "normal",
            family="DejaVu Sans",
            bbox={
                "boxstyle": shape,
                "facecolor": fill,
                "edgecolor": edge,
                "linewidth": 2 if n.focus else 1,
            },
            zorder=3,
        )
    for e in graph.edges:
        src, dst = artists[e.source], artists[e.target]
        if e.kind == "gated":  # straight down from the evaluation to its gate below it
            style: dict[str, Any] = {
                "arrowstyle": "-|>",
                "color": "#888888",
                "linewidth": 0.9,
                "linestyle": "--",
                "connectionstyle": "arc3,rad=0",
            }
            start, end = (0.3, 0.0), (0.3, 1.0)
        else:  # down the owner's column, then right into the child or evaluation
            style = {
                "arrowstyle": "-|>",
                "color": "#2f5d8a" if e.kind == "fine-tuned" else "#888888",
                "linewidth": 1.4 if e.kind == "fine-tuned" else 0.9,
                "linestyle": "-" if e.kind == "fine-tuned" else "--",
                "connectionstyle": "angle,angleA=-90,angleB=180,rad=0",
            }
            start, end = (0.12, 0.0), (0.0, 0.5)
        ax.annotate(
            "",
            xy=end,
            xycoords=dst,
            xytext=start,
            textcoords=src,
            arrowprops={**style, "shrinkA": 0, "shrinkB": 2},
            zorder=2,
        )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.2)
    return atomic_write_bytes(path, buf.getvalue())


def write_graph(reg: Registry, ref: str, path: str | Path, *, secondary: bool = True) -> Path:
    """Write the lineage graph of ``ref`` to ``path`` in the format its suffix names (see
    :data:`GRAPH_FORMATS`: ``.mmd``/``.mermaid``, ``.dot``/``.gv``, ``.png``); returns ``path``.
    :class:`RegistryError` for another suffix (before anything is read or written)."""
    p = Path(path)
    fmt = GRAPH_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise RegistryError(
            f"graph: {p.name}: the suffix must be one of {', '.join(sorted(GRAPH_FORMATS))}"
        )
    graph = lineage_graph(reg, ref, secondary=secondary)
    if fmt == "png":
        return to_png(graph, p)
    return atomic_write_text(p, to_mermaid(graph) if fmt == "mermaid" else to_dot(graph))
