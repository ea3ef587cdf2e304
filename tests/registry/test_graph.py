"""The lineage graph: which versions it holds (the ancestor line and every descendant, not the
ancestors' other children), its secondary nodes, and the Mermaid, DOT and PNG outputs."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry.test_exports import build_registry
from robustops.registry.graph import lineage_graph, to_dot, to_mermaid, write_graph
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """mnist@1 → @2 (evaluated, gated, production) → @3, and mnist@1 → @4."""
    root = tmp_path_factory.mktemp("graph")
    r = build_registry(root / "reg", root / "work")
    yield r
    r.close()


def ids(reg: Registry, *labels: str) -> list[str]:
    return [f"v{reg.get(x).id}" for x in labels]


def test_nodes_and_edges(reg: Registry) -> None:
    g = lineage_graph(reg, "mnist@2")
    v1, v2, v3, v4 = ids(reg, "mnist@1", "mnist@2", "mnist@3", "mnist@4")
    versions = [n.id for n in g.nodes if n.kind == "version"]
    assert versions == [v1, v2, v3]  # @4 is a sibling, not an ancestor or descendant of @2
    tuned = [(e.source, e.target) for e in g.edges if e.kind == "fine-tuned"]
    assert tuned == [(v1, v2), (v2, v3)]
    assert [n.id for n in g.nodes if n.focus] == [v2]
    assert g.node(v2).lines[:2] == ("mnist@2", "[candidate, production]")
    evals = [n for n in g.nodes if n.kind == "evaluation"]
    gates = [n for n in g.nodes if n.kind == "gate"]
    assert {n.version for n in evals} == {reg.get("mnist@1").id, reg.get("mnist@2").id}
    assert [n.passed for n in gates] == [False, True]
    for gate in gates:  # each gate hangs off the evaluation of its result
        (edge,) = [e for e in g.edges if e.target == gate.id]
        assert edge.kind == "gated" and g.node(edge.source).kind == "evaluation"
    assert any("clean 0.954" in ln for n in evals for ln in n.lines)
    assert g.depth() == {v1: 0, v2: 1, v3: 2}

    whole = lineage_graph(reg, "mnist@1", secondary=False)
    assert [n.id for n in whole.nodes] == [v1, v2, v3, v4]
    assert {(e.source, e.target) for e in whole.edges} == {(v1, v2), (v2, v3), (v1, v4)}
    assert [n.id for n in lineage_graph(reg, "mnist@4", secondary=False).nodes] == [v1, v4]


def test_mermaid_and_dot_text(reg: Registry) -> None:
    g = lineage_graph(reg, "mnist:production")
    v1, v2, v3 = ids(reg, "mnist@1", "mnist@2", "mnist@3")
    mmd = to_mermaid(g)
    assert mmd.splitlines()[1] == "flowchart LR"
    assert f'{v2}["mnist@2<br/>[candidate, production]<br/>weights ' in mmd
    assert f"{v1} -->|fine-tuned| {v2}" in mmd and f"{v2} -->|fine-tuned| {v3}" in mmd
    assert f"class {v2} focus" in mmd
    gate_ids = [n.id for n in g.nodes if n.kind == "gate"]
    assert gate_ids and all(f'{gid}{{{{"gate #' in mmd for gid in gate_ids)  # hexagons
    assert f"class {gate_ids[0]} failed" in mmd and f"class {gate_ids[1]} passed" in mmd
    assert mmd == to_mermaid(lineage_graph(reg, "mnist@2"))  # stable

    dot = to_dot(g)
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f'{v2} [label="mnist@2\\n[candidate, production]\\nweights ' in dot
    assert f'{v1} -> {v2} [label="fine-tuned"];' in dot
    assert f'{v2} -> {v3} [label="fine-tuned"];' in dot
    assert dot.count("->") == len(g.edges)
    assert 'fillcolor="#ffe08a"' in dot  # the focus


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_write_graph_in_three_formats(reg: Registry, tmp_path: Path) -> None:
    mmd = write_graph(reg, "mnist@2", tmp_path / "lineage.mmd")
    dot = write_graph(reg, "mnist@2", tmp_path / "lineage.dot")
    png = write_graph(reg, "mnist@1", tmp_path / "lineage.png")
    assert mmd.read_text().startswith("%% lineage of mnist@2")
    assert dot.read_text().startswith("digraph lineage")
    width, height = png_size(png.read_bytes())
    assert width > 300 and height > 300
    with pytest.raises(RegistryError, match="suffix"):
        write_graph(reg, "mnist@2", tmp_path / "lineage.svg")
    assert not (tmp_path / "lineage.svg").exists()


def test_cli_lineage(reg: Registry, tmp_path: Path) -> None:
    from robustops.cli_registry import registry_app

    home = str(reg.store.home)
    runner = CliRunner()
    for suffix in (".mmd", ".dot", ".png"):
        out = tmp_path / f"g{suffix}"
        res = runner.invoke(
            registry_app, ["lineage", "mnist@2", "--graph", str(out), "--home", home]
        )
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 0
    res = runner.invoke(registry_app, ["lineage", "mnist@2", "--versions-only", "--home", home])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1] == "flowchart LR" and "eval " not in res.output
    res = runner.invoke(
        registry_app, ["lineage", "mnist@2", "--graph", str(tmp_path / "g.svg"), "--home", home]
    )
    assert res.exit_code == 2
