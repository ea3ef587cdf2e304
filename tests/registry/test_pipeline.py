"""The pipeline's verbs feed the registry: train registers, evaluate attaches, gate records, and
only a gated, approved version reaches production (a spec's registry section or --register)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from robustops.cli import app
from robustops.registry.service import Registry
from spec_helpers import FGSM_EVALUATION, digits_mlp, write_spec

SPEC: dict[str, Any] = digits_mlp(
    "tiny",
    catalog={
        "entries": [
            {
                "id": "digit-evasion",
                "title": "bounded pixel changes",
                "component": "model",
                "channel": "image",
                "perturbation": "linf",
                "likelihood": 3,
                "impact": 4,
                "owner": "ml",
                "exercised_by": ["linf"],
            }
        ]
    },
    evaluation=FGSM_EVALUATION,
    gate={"min_clean_accuracy": 0.5},
)


def _run(args: list[str], actor: str) -> Any:
    result = CliRunner().invoke(app, args, env={"ROBUSTOPS_PRINCIPAL": actor})
    return result


def _ok(args: list[str], actor: str) -> str:
    result = _run(args, actor)
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    reg = tmp_path / "reg"
    _ok(["registry", "init", "--admin", "ada", "--home", str(reg)], "ada")
    _ok(["registry", "principal", "add", "eve", "--role", "engineer", "--home", str(reg)], "ada")
    _ok(["registry", "principal", "add", "apu", "--role", "approver", "--home", str(reg)], "ada")
    return reg


def test_spec_section_registers_and_gate_promotes(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = copy.deepcopy(SPEC)
    spec["registry"] = {"home": str(home), "model": "digits-mlp"}
    path = write_spec(tmp_path, spec)
    trained = _ok(["train", "--spec", str(path)], "eve")
    assert "registered as digits-mlp@1" in trained
    out = tmp_path / "r.json"
    evaluated = _ok(["evaluate", "--spec", str(path), "--out", str(out)], "eve")
    assert "attached to digits-mlp@1" in evaluated

    h = str(home)
    _ok(["registry", "policy", "digits-mlp", "production", str(path), "--home", h], "ada")
    refused = _run(["registry", "promote", "digits-mlp@1", "production", "--home", h], "eve")
    assert refused.exit_code == 2 and "no gate record" in refused.output
    gated = _ok(
        ["gate", "--result", str(out), "--policy", str(path), "--register", "--registry", h],
        "eve",
    )
    assert "gate record #1 registered for digits-mlp@1" in gated
    own = _run(["registry", "approve", "digits-mlp@1", "--home", h], "eve")
    assert own.exit_code == 2  # an engineer cannot approve (and not their own version)
    _ok(["registry", "approve", "digits-mlp@1", "--home", h], "apu")
    moved = _ok(["registry", "promote", "digits-mlp@1", "production", "--home", h], "eve")
    assert "digits-mlp@1 (promote; was unset)" in moved

    reg = Registry.open(home)
    try:
        v = reg.get("digits-mlp:production")
        assert v.version == 1 and v.registered_by == "eve"
        assert v.recipe["recipe"] == "standard" and v.data["name"] == "digits"
        assert v.catalog_sha256 is not None and reg.store.artifacts.has(v.catalog_sha256)
        (ev,) = reg.evaluations("digits-mlp@1")
        assert ev.summary["threats"][0]["attacks"][0]["name"] == "fgsm"
        actions = [e.action for e in reg.audit_events()]
        assert actions == [
            "key", "principal", "principal", "principal",
            "register", "evaluation", "policy", "gate", "approve", "alias",
        ]  # fmt: skip
        assert reg.verify_audit(full=True).ok
    finally:
        reg.close()


def test_register_flag_and_rollback(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    h = str(home)
    results = []
    for seed in (0, 1):
        spec = copy.deepcopy(SPEC)
        spec["seed"] = seed
        path = write_spec(tmp_path, spec)
        reg_args = ["--register", "--registry", h]
        _ok(["train", "--spec", str(path), *reg_args], "eve")
        out = tmp_path / f"r{seed}.json"
        _ok(["evaluate", "--spec", str(path), "--out", str(out), *reg_args], "eve")
        results.append((path, out))
    _ok(["registry", "policy", "tiny", "production", str(results[0][0]), "--home", h], "ada")
    for n, (path, out) in enumerate(results, start=1):
        _ok(
            ["gate", "--result", str(out), "--policy", str(path), "--register", "--registry", h],
            "eve",
        )
        _ok(["registry", "approve", f"tiny@{n}", "--home", h], "apu")
        _ok(["registry", "promote", f"tiny@{n}", "production", "--home", h], "eve")
    back = _ok(["registry", "rollback", "tiny", "production", "--home", h], "eve")
    assert "rolled back to tiny@1 (from tiny@2)" in back
    hist = _ok(["registry", "history", "tiny", "production", "--home", h], "eve")
    assert hist.index("rollback") < hist.index("promote")  # newest first
    verify = _ok(["registry", "audit", "verify", "--home", h], "eve")
    assert "audit log intact" in verify
