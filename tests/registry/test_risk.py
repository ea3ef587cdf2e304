"""The risk register of a version on a real registry: the catalog joined with the newest
evaluation (real result files: the MNIST baseline, re-tied to the registered weights), the
vulnerabilities not closed, uncovered entries; exported as Markdown, HTML and CSV, through the
library and the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustops.cli import app
from robustops.evaluation.result import content_hash
from robustops.registry.risk import render_risk_register, risk_register, write_risk_register
from robustops.registry.service import Registry
from robustops.registry.store import RegistryError
from robustops.registry.vulnerabilities import open_vulnerability, update_vulnerability
from robustops.report.html import CSP
from robustops.threats.catalog import ThreatCatalog

BASELINE = Path(__file__).resolve().parents[2] / "baselines" / "mnist.json"

CATALOG = ThreatCatalog.model_validate(
    {
        "entries": [
            {
                "id": "img-linf",
                "title": "imperceptible pixel changes",
                "component": "model",
                "channel": "image",
                "perturbation": "linf",
                "likelihood": 5,
                "impact": 5,
                "owner": "vision",
                "exercised_by": ["linf-0.3"],
            },
            {
                "id": "img-l2",
                "title": "small l2 changes",
                "component": "model",
                "channel": "image",
                "perturbation": "l2",
                "likelihood": 3,
                "impact": 4,
                "owner": "vision",
                "exercised_by": ["l2-2.0", "l2-3.0"],
            },
            {
                "id": "img-rotation",
                "title": "a tilted camera",
                "component": "camera",
                "channel": "image",
                "perturbation": "spatial",
                "likelihood": 2,
                "impact": 2,
                "owner": "ops",
                "exercised_by": ["rotation-30"],
            },
            {
                "id": "feed-poisoning",
                "title": "poisoned <training> feed",
                "component": "data pipeline",
                "channel": "other",
                "perturbation": "poisoning",
                "likelihood": 4,
                "impact": 5,
                "owner": "data",
            },
        ]
    }
)


def _result_for(weights_sha: str, path: Path, *, drop: str | None = None, when: str = "") -> Path:
    """The MNIST baseline re-tied to ``weights_sha`` (optionally without the threat ``drop``
    and created at ``when``), sealed with its content hash."""
    data: dict[str, Any] = json.loads(BASELINE.read_text())
    data["model"]["weights_sha256"] = weights_sha
    if drop:
        data["threats"] = [t for t in data["threats"] if t["name"] != drop]
    if when:
        data["created_at"] = when
    data["content_sha256"] = content_hash(data)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def reg(tmp_path: Path) -> Any:
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(weights))
    import hashlib

    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    newest = _result_for(sha, tmp_path / "newest.json")
    older = _result_for(
        sha, tmp_path / "older.json", drop="l2-2.0", when="2026-01-01T00:00:00+00:00"
    )
    r = Registry.open(tmp_path / "reg")
    r.add_principal("alice", "alice", "admin")
    r.add_principal("alice", "eve", "engineer")
    # The newest result is attached first: "newest" is the run's time, not the attach order.
    r.register("eve", "mnist", weights, catalog=CATALOG, results=[newest])
    r.attach_evaluation("eve", "mnist@1", older)
    yield r
    r.close()


def _vulns(reg: Registry) -> None:
    open_vulnerability(reg, "eve", "mnist@1", threat="linf-0.3", title="PGD <b>breaks</b> all",
                       severity="critical")  # fmt: skip
    open_vulnerability(reg, "eve", "mnist@1", threat="l2-2.0", title="l2 fixed", severity="high")
    update_vulnerability(reg, "eve", "RVULN-0002", status="triaged")
    update_vulnerability(reg, "eve", "RVULN-0002", status="mitigated", remediation="done")
    update_vulnerability(reg, "alice", "RVULN-0002", status="verified")
    update_vulnerability(reg, "alice", "RVULN-0002", status="closed")  # closed: not listed
    open_vulnerability(reg, "eve", "mnist@1", threat="rotation-30", title="tilt", severity="low")


def test_register_joins_catalog_newest_evaluation_and_open_vulnerabilities(
    reg: Registry,
) -> None:
    _vulns(reg)
    events = len(list(reg.audit_events()))
    rr = risk_register(reg, "mnist@1")
    assert len(list(reg.audit_events())) == events  # reading changes nothing
    assert rr.version == "mnist@1" and rr.catalog_sha256 == CATALOG.content_hash()
    newest = json.loads(BASELINE.read_text())["created_at"]  # the baseline's run, not "older"
    assert rr.evaluation is not None and rr.evaluation["created_at"] == newest
    assert any("another threat catalog" in n for n in rr.notes)
    by_id = {e.id: e for e in rr.entries}
    # Ranked by risk: 25, 20, 12, 4.
    assert [e.id for e in rr.entries] == ["img-linf", "feed-poisoning", "img-l2", "img-rotation"]
    linf = by_id["img-linf"]
    assert (linf.risk, linf.level, linf.covered) == (25, "critical", True)
    assert [(t.name, t.robust_accuracy, t.attack_success_rate) for t in linf.threats] == [
        ("linf-0.3", 0.0, 1.0)
    ]
    assert linf.vulnerabilities == ["RVULN-0001"]
    l2 = by_id["img-l2"]  # the newest result has l2-2.0 (the older one does not)
    assert [t.name for t in l2.threats] == ["l2-2.0"] and l2.missing == ["l2-3.0"]
    assert l2.worst_robust_accuracy == 0.152
    assert l2.worst_attack_success_rate == pytest.approx(0.8406708595387841)
    assert l2.vulnerabilities == []  # RVULN-0002 is closed
    assert [e.id for e in rr.uncovered] == ["feed-poisoning", "img-rotation"]
    assert by_id["img-rotation"].vulnerabilities == ["RVULN-0003"]
    assert by_id["img-rotation"].worst_robust_accuracy is None
    assert [t.name for t in rr.unmapped_threats] == ["patch-6"]
    assert [(v.id, v.severity, v.status) for v in rr.vulnerabilities] == [
        ("RVULN-0001", "critical", "open"),
        ("RVULN-0003", "low", "open"),
    ]
    assert reg.verify_audit(full=True).ok


def test_markdown_html_and_csv_exports(reg: Registry, tmp_path: Path) -> None:
    _vulns(reg)
    rr = risk_register(reg, "mnist@1")
    md = render_risk_register(rr, "md")
    assert md.startswith("# Risk register of mnist@1")
    assert "Critical vulnerabilities blocking promotion: RVULN-0001" in md
    assert "2 catalog entries uncovered: feed-poisoning, img-rotation" in md
    row = next(line for line in md.splitlines() if line.startswith("| 12 |"))
    assert "img-l2" in row and "15.2%" in row and "84.1%" in row and "l2-3.0" in row
    assert "linf-0.3: robust 0.0%, success 100.0%" in md
    assert "patch-6 | 10.0% | 89.5%" in md  # outside the catalog, still reported
    assert "&lt;b&gt;breaks&lt;/b&gt;" in md and "<b>" not in md
    assert "another threat catalog" in md  # the baseline ran under its own catalog

    html = render_risk_register(rr, "html")
    assert html.startswith("<!DOCTYPE html>") and CSP in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "&lt;b&gt;breaks&lt;/b&gt;" in html and "poisoned &lt;training&gt; feed" in html
    assert "callout-fail" in html and "15.2%" in html and "uncovered" in html
    assert '<section id="uncovered">' in html and "RVULN-0003" in html

    rows = list(csv.DictReader(io.StringIO(render_risk_register(rr, "csv"))))
    assert [(r["entry"], r["coverage"], r["threat"]) for r in rows] == [
        ("img-linf", "covered", "linf-0.3"),
        ("feed-poisoning", "uncovered", ""),
        ("img-l2", "covered", "l2-2.0"),
        ("img-rotation", "uncovered", ""),
    ]
    linf, poison, l2, rot = rows
    assert (linf["robust_accuracy"], linf["attack_success_rate"], linf["n_attacked"]) == (
        "0",
        "1",
        "477",
    )
    assert float(l2["robust_accuracy"]) == 0.152 and l2["risk"] == "12" and l2["level"] == "high"
    assert float(l2["attack_success_rate"]) == pytest.approx(0.8406708595387841, abs=1e-6)
    assert poison["robust_accuracy"] == "" and poison["title"] == "poisoned <training> feed"
    assert linf["vulnerabilities"] == "RVULN-0001" and rot["vulnerabilities"] == "RVULN-0003"
    assert {r["result_sha256"] for r in rows} == {rr.evaluation["result_sha256"]}  # type: ignore[index]

    out = write_risk_register(rr, "csv", tmp_path / "out" / "risk.csv")
    assert out.read_text() == render_risk_register(rr, "csv")
    with pytest.raises(RegistryError, match=r"^format:"):
        render_risk_register(rr, "pdf")


def test_a_version_without_catalog_or_evaluation(reg: Registry, tmp_path: Path) -> None:
    weights = tmp_path / "w2.safetensors"
    save_file({"w": torch.ones(2)}, str(weights))
    reg.register("eve", "mnist", weights)
    rr = risk_register(reg, "mnist@2")
    assert rr.entries == [] and rr.evaluation is None and rr.vulnerabilities == []
    assert any("without a threat catalog" in n for n in rr.notes)
    assert any("no evaluation" in n for n in rr.notes)
    assert render_risk_register(rr, "csv").splitlines()[0].startswith("version,entry,title")
    assert "No threat catalog" in render_risk_register(rr, "md")
    with pytest.raises(RegistryError, match=r"^version:"):
        risk_register(reg, "mnist@7")


def test_cli_writes_each_format(reg: Registry, tmp_path: Path) -> None:
    _vulns(reg)
    home = ["--home", str(reg.store.home)]
    runner = CliRunner()
    for fmt in ("md", "html", "csv"):
        out = tmp_path / f"risk.{fmt}"
        res = runner.invoke(
            app, ["registry", "risk", "mnist@latest", "--format", fmt, "--out", str(out), *home]
        )
        assert res.exit_code == 0, res.output
        assert out.read_text() == render_risk_register(risk_register(reg, "mnist@1"), fmt)
    shown = runner.invoke(app, ["registry", "risk", "mnist@1", *home])
    assert shown.exit_code == 0 and shown.output.startswith("# Risk register of mnist@1")
    bad = runner.invoke(app, ["registry", "risk", "mnist@1", "--format", "pdf", *home])
    assert bad.exit_code == 2 and "format" in bad.output
