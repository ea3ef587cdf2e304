"""``robustops train --spec``: progress, metrics file, checkpoints, ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from robustops.cli import app

SPEC: dict[str, Any] = {
    "name": "cli-train",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {
        "factory": "robustops.models:mlp",
        "kwargs": {"input_dim": 64, "hidden": [32]},
        "weights": "w/m.safetensors",
    },
    "train": {
        "epochs": 2,
        "batch_size": 128,
        "lr": 0.01,
        "objective": {"name": "pgd-at", "steps": 2},
        "threats": [{"kind": "linf", "epsilon": 0.1}],
        "validation": {"holdout": 100, "pgd_steps": 2},
        "out": "w/m.safetensors",
    },
}


def test_train_writes_weights_metrics_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    runner = CliRunner()
    first = runner.invoke(app, ["train", "--spec", str(path)])
    assert first.exit_code == 0, first.output
    assert "robust" in first.output and "clean" in first.output
    w = tmp_path / "w"
    lines = [json.loads(x) for x in (w / "m.safetensors.metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert {"loss", "val_clean_accuracy", "val_robust_accuracy", "lr"} <= set(lines[0])
    side = json.loads((w / "m.safetensors.json").read_text())
    assert side["recipe"] == "pgd-at" and side["data"]["fingerprint"] and len(side["sha256"]) == 64
    ckpt = json.loads((w / "m.safetensors.ckpt" / "epoch-0002.json").read_text())
    assert ckpt["epoch"] == 2 and ckpt["data"]["fingerprint"] == side["data"]["fingerprint"]
    assert ckpt["recipe"]["objective"]["name"] == "pgd-at" and ckpt["seed"] == 0

    again = runner.invoke(app, ["train", "--spec", str(path), "--resume"])
    assert again.exit_code == 0, again.output
    side2 = json.loads((w / "m.safetensors.json").read_text())
    assert side2["resumed_from_epoch"] == 2 and side2["state_sha256"] == side["state_sha256"]

    changed = {**SPEC, "train": {**SPEC["train"], "lr": 0.02}}
    path.write_text(yaml.safe_dump(changed))
    refused = runner.invoke(app, ["train", "--spec", str(path), "--resume"])
    assert refused.exit_code == 2 and "train.lr" in refused.output
