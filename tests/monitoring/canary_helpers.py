"""Helpers of the canary tests: a registry with a gated, approved digits MLP in production and
a weak (untrained) version of it, and the guard in front of whatever a registry reference
names; everything real (the pipeline's CLI verbs, SQLite files in a temporary folder, uvicorn
on a free loopback port). Import as ``from monitoring.canary_helpers import ...``.

Built once per session (training and evaluating cost seconds); tests that change the registry
copy it first (:func:`fresh_registry`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from robustops.cli import app
from robustops.models import mlp, save_weights
from robustops.registry.service import Registry
from robustops.serving.keys import KeyStore
from serving.fuzz_helpers import threaded_server
from spec_helpers import digits_mlp

MODEL = "canary-digits"
MONITOR_ACTOR = "robustops-monitor"
KEY_ENV = "ROBUSTOPS_TEST_CANARY_KEY"

EVALUATION: dict[str, Any] = {
    "n_samples": 80,
    "batch_size": 80,
    "calibration": {"enabled": False},
    "threats": [{"name": "linf", "epsilon": 0.1, "attacks": [{"name": "pgd", "steps": 10}]}],
}


def spec_dict(root: Path, **monitor: Any) -> dict[str, Any]:
    """The digits MLP spec (10 epochs; PGD at ε=0.1 on 80 test samples; gate: clean accuracy ≥
    0.8), its guard's files under ``root/guard``, the canary's under ``root/canary``;
    ``monitor`` overrides fields of ``monitor.canary``."""
    spec = digits_mlp(
        MODEL,
        evaluation=EVALUATION,
        gate={"min_clean_accuracy": 0.8},
        serve={
            "keys": str(root / "guard" / "keys.db"),
            "state_dir": str(root / "guard"),
            "state": {"backend": "memory"},
            "detection": {"enabled": False},
            "abstention": {"enabled": False},
            "limits": {"rate_per_second": 100000, "burst": 100000, "max_batch": 64},
        },
        monitor={
            "request_log": str(root / "guard" / "requests"),
            "canary": {
                "samples": 40,
                "queries_per_sample": 60,
                "max_traffic_share": 1.0,
                "key_env": KEY_ENV,
                "records": str(root / "canary"),
                **monitor,
            },
            "rollback": {"actor": MONITOR_ACTOR},
        },
    )
    spec["train"] = {**spec["train"], "epochs": 10, "out": str(root / "w" / "mlp.safetensors")}
    spec["model"]["weights"] = str(root / "w" / "mlp.safetensors")
    return spec


def write(root: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(args: list[str], actor: str) -> str:
    result = CliRunner().invoke(app, args, env={"ROBUSTOPS_PRINCIPAL": actor})
    assert result.exit_code == 0, result.output
    return str(result.output)


@dataclass
class World:
    """The session's registry (do not change it; copy it), spec and weights."""

    root: Path
    home: Path
    spec: Path
    good: Path
    weak: Path


_WORLD: list[World] = []


def build_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The session's world, built on first use (every canary test module's ``world`` fixture
    calls this; a conftest would clash with the other monitoring tests' own)."""
    if not _WORLD:
        _WORLD.append(_build(tmp_path_factory))
    return _WORLD[0]


def _build(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("canary-world")
    spec_path = write(root, spec_dict(root))
    home = root / "reg"
    h = str(home)
    cli(["registry", "init", "--admin", "ada", "--home", h], "ada")
    for name, role in (("eve", "engineer"), ("apu", "approver"), (MONITOR_ACTOR, "engineer")):
        cli(["registry", "principal", "add", name, "--role", role, "--home", h], "ada")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli(["train", "--spec", str(spec_path), "--register", "--registry", h], "eve")
        result = root / "good.json"
        cli(["evaluate", "--spec", str(spec_path), "--out", str(result)], "eve")
    finally:
        torch.set_num_threads(threads)
    cli(["registry", "policy", MODEL, "production", str(spec_path), "--home", h], "ada")
    gate = ["gate", "--result", str(result), "--policy", str(spec_path), "--register"]
    cli([*gate, "--registry", h], "eve")
    cli(["registry", "approve", f"{MODEL}@1", "--home", h], "apu")
    cli(["registry", "promote", f"{MODEL}@1", "production", "--home", h], "eve")
    weak = root / "w" / "weak.safetensors"  # the same architecture, never trained
    save_weights(mlp(input_dim=64, hidden=[32], num_classes=10, seed=0).eval(), weak)
    reg = Registry.open(home)
    try:
        reg.register("eve", MODEL, weak, description="untrained: a bad build")
    finally:
        reg.close()
    return World(root, home, spec_path, root / "w" / "mlp.safetensors", weak)


def fresh_registry(world: World, dest: Path) -> Path:
    """A copy of the session's registry home in ``dest`` (tests change their own copy)."""
    home = dest / "reg"
    shutil.copytree(world.home, home)
    return home


@contextmanager
def guard(spec: Path, home: Path, ref: str = f"{MODEL}:production") -> Iterator[str]:
    """The guard serving the registry version ``ref`` (uvicorn on a free loopback port, in a
    thread) with a canary key in ``$KEY_ENV``; yields its URL."""
    from robustops.serve import ServeTarget, build_app

    loaded = yaml.safe_load(spec.read_text())
    keys = KeyStore(Path(loaded["serve"]["keys"]))
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = keys.add(f"canary-{os.urandom(4).hex()}", "canary")
    try:
        app_ = build_app(ServeTarget(spec=str(spec), ref=ref, registry=str(home)))
        with threaded_server(app_) as url:
            yield url
    finally:
        if old is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old
