"""The threat catalog: risk scoring, ranking, coverage, versioning, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from robustops.cli import app
from robustops.config import load_spec
from robustops.errors import SpecError
from robustops.threats import ThreatCatalog, risk_level

ROOT = Path(__file__).resolve().parent.parent


def _entry(id: str, likelihood: int, impact: int, exercised_by: list[str]) -> dict[str, Any]:
    return {
        "id": id,
        "title": id.replace("-", " "),
        "component": "model",
        "channel": "image",
        "perturbation": "linf",
        "likelihood": likelihood,
        "impact": impact,
        "owner": "team",
        "exercised_by": exercised_by,
    }


def test_risk_levels_and_ranking() -> None:
    assert [risk_level(r) for r in (1, 4, 5, 9, 10, 16, 20, 25)] == [
        "low", "low", "medium", "medium", "high", "high", "critical", "critical"
    ]  # fmt: skip
    cat = ThreatCatalog.model_validate(
        {
            "entries": [
                _entry("a", 2, 2, ["t1"]),
                _entry("b", 5, 4, []),
                _entry("c", 4, 5, ["t2"]),
                _entry("d", 3, 3, ["t1", "t2"]),
            ]
        }
    )
    # 20 (impact 5) before 20 (impact 4), then 9, then 4.
    assert [e.id for e in cat.ranked()] == ["c", "b", "d", "a"]
    assert [e.id for e in cat.uncovered(["t1", "t2"])] == ["b"]
    assert [e.id for e in cat.uncovered(["t1"])] == ["c", "b"]
    rows = cat.risk_register(["t1", "t2"], {"t1": 0.7, "t2": 0.4}, {"t1": 0.1, "t2": 0.5})
    by_id = {r.id: r for r in rows}
    assert by_id["d"].robust_accuracy == 0.4  # the worst threat exercising it
    assert by_id["d"].attack_success_rate == 0.5
    assert by_id["b"].attack_success_rate is None
    assert by_id["b"].covered is False and by_id["b"].robust_accuracy is None
    assert by_id["c"].level == "critical" and by_id["c"].risk == 20


def test_content_hash_versions_the_catalog() -> None:
    one = ThreatCatalog.model_validate({"entries": [_entry("a", 2, 2, ["t"])]})
    reordered_keys = ThreatCatalog.model_validate(
        {"entries": [dict(reversed(list(_entry("a", 2, 2, ["t"]).items())))]}
    )
    changed = ThreatCatalog.model_validate({"entries": [_entry("a", 3, 2, ["t"])]})
    assert one.content_hash() == reordered_keys.content_hash()
    assert one.content_hash() != changed.content_hash()
    assert len(one.content_hash()) == 64


def _spec(tmp_path: Path, catalog: dict[str, Any]) -> Path:
    spec = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    spec["catalog"] = catalog
    spec["model"]["weights"] = str(tmp_path / "w.safetensors")
    spec.pop("train")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([_entry("a", 6, 2, ["linf-0.3"])], "catalog.entries.0.likelihood"),
        ([_entry("a", 2, 0, ["linf-0.3"])], "catalog.entries.0.impact"),
        ([{**_entry("a", 2, 2, []), "channel": "smell"}], "catalog.entries.0.channel"),
        ([{**_entry("A b", 2, 2, [])}], "catalog.entries.0.id"),
        ([_entry("a", 2, 2, ["linf-0.3", "nope"])], "catalog.entries.0.exercised_by.1"),
        ([_entry("a", 2, 2, []), _entry("a", 1, 1, [])], "catalog"),
    ],
)
def test_bad_catalog_names_the_field(tmp_path: Path, entries: list[Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(tmp_path, {"entries": entries}))
    assert expected in [p for p, _ in info.value.errors], info.value.errors


def test_threats_command_ranks_and_flags_uncovered(tmp_path: Path) -> None:
    import yaml

    shipped = CliRunner().invoke(app, ["threats", str(ROOT / "configs" / "mnist.yaml")])
    assert shipped.exit_code == 0, shipped.output
    assert "no attack covers" not in shipped.output  # the patch threat covers the sticker
    raw = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    raw["catalog"]["entries"][2]["exercised_by"] = []
    uncovered = tmp_path / "mnist.yaml"
    uncovered.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["threats", str(uncovered)])
    assert "no attack covers: img-patch-sticker" in result.output
    spec = load_spec(ROOT / "configs" / "mnist.yaml")
    assert spec.catalog is not None
    assert spec.catalog.content_hash()[:12] in shipped.output


def test_schema_command_exports_json_schema(tmp_path: Path) -> None:
    import json

    out = tmp_path / "spec.schema.json"
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    assert "catalog" in schema["properties"] and "evaluation" in schema["properties"]
    bad = CliRunner().invoke(app, ["schema", "--what", "nope"])
    assert bad.exit_code == 2 and "--what" in bad.output


@pytest.mark.parametrize(("what", "name"), [("spec", "pipeline-spec"), ("result", "result")])
def test_committed_json_schemas_are_current(tmp_path: Path, what: str, name: str) -> None:
    out = tmp_path / "schema.json"
    result = CliRunner().invoke(app, ["schema", "--what", what, "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    committed = ROOT / "docs" / f"{name}.schema.json"
    new, old = json.loads(out.read_text()), json.loads(committed.read_text())
    # Same models and fields (exact text may vary with the pydantic version).
    fields = {k: sorted(v.get("properties", {})) for k, v in new["$defs"].items()}
    assert fields == {k: sorted(v.get("properties", {})) for k, v in old["$defs"].items()}, (
        f"docs/{name}.schema.json is stale: robustops schema --what {what} --out {committed}"
    )
    assert sorted(new["properties"]) == sorted(old["properties"])
