"""The canary on a text model: the SMS spam filter behind the guard, attacked with the spec's
own text attacks (spam → ham, a fixed target class) through the HTTP adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from monitoring.canary_helpers import KEY_ENV, MONITOR_ACTOR, cli, guard
from robustops.canary import init_canary, load_canary_set, run_canary
from robustops.config import load_spec


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the test's folder: whatever the guard writes relative to it (its request log
    folder, by default ``guard/requests``) stays there, next to ``monitor.request_log``."""
    monkeypatch.chdir(tmp_path)


THREAT: dict[str, Any] = {
    "name": "evasion",
    "norm": "word-edits",
    "epsilon": 0.2,
    "knowledge": "score-based",
    "query_budget": 100,
    "targeted": True,
    "target_class": 0,
}


def _spec(root: Path) -> dict[str, Any]:
    return {
        "name": "canary-spam",
        "seed": 0,
        "data": {"name": "sms_spam"},
        "model": {
            "factory": "robustops.text:char_ngram_classifier",
            "kwargs": {"embed_dim": 32},
            "weights": str(root / "w" / "spam.safetensors"),
        },
        "train": {"epochs": 3, "lr": 0.02, "out": str(root / "w" / "spam.safetensors")},
        "evaluation": {
            "n_samples": 60,
            "calibration": {"enabled": False},
            "threats": [{**THREAT, "attacks": [{"name": "char-edit"}, {"name": "split"}]}],
        },
        "gate": {"min_clean_accuracy": 0.8},
        "serve": {
            "keys": str(root / "guard" / "keys.db"),
            "state_dir": str(root / "guard"),
            "state": {"backend": "memory"},
            "detection": {"enabled": False},
            "abstention": {"enabled": False},
            "limits": {"rate_per_second": 100000, "burst": 100000},
        },
        "monitor": {
            "canary": {
                "samples": 30,
                "queries_per_sample": 60,
                "max_traffic_share": 1.0,
                "key_env": KEY_ENV,
                "records": str(root / "canary"),
            },
            "rollback": {"actor": MONITOR_ACTOR},
        },
    }


def test_text_canary_run(tmp_path: Path) -> None:
    spec_dict = _spec(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    h = str(tmp_path / "reg")
    cli(["registry", "init", "--admin", "ada", "--home", h], "ada")
    for name, role in (("eve", "engineer"), ("apu", "approver"), (MONITOR_ACTOR, "engineer")):
        cli(["registry", "principal", "add", name, "--role", role, "--home", h], "ada")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli(["train", "--spec", str(path), "--register", "--registry", h], "eve")
        result = tmp_path / "r.json"
        cli(["evaluate", "--spec", str(path), "--out", str(result)], "eve")
    finally:
        torch.set_num_threads(threads)
    cli(["registry", "policy", "canary-spam", "production", str(path), "--home", h], "ada")
    cli(
        ["gate", "--result", str(result), "--policy", str(path), "--register", "--registry", h],
        "eve",
    )
    cli(["registry", "approve", "canary-spam@1", "--home", h], "apu")
    cli(["registry", "promote", "canary-spam@1", "production", "--home", h], "eve")

    spec = load_spec(path)
    made = init_canary(spec, registry_home=h, actor="eve")
    doc = load_canary_set(made.path)
    assert doc["modality"] == "text" and all(isinstance(s["text"], str) for s in doc["samples"])
    with guard(path, Path(h), "canary-spam:production") as url:
        record = run_canary(spec, url, registry_home=h)
    assert record["served"]["version"] == "canary-spam@1"
    assert set(record["tests"]) == {"clean", "evasion"}
    assert record["tests"]["clean"]["baseline_only"] == record["tests"]["clean"]["canary_only"] == 0
    assert record["verdict"] == "ok", record["tests"]
    assert record["queries"] > 30
    print(f"\ntext: {record['tests']} {record['queries']} queries {record['wall_time_s']} s")
