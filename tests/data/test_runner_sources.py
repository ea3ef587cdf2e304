"""``robustops train`` and ``evaluate`` (through :mod:`robustops.runner`) on the example specs of
``configs/`` with their data written from the embedded sets: a tiny budget each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustops.config import load_spec
from robustops.runner import evaluate_spec, train_spec
from spec_helpers import write_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _tiny(config: str, data: Path, tmp_path: Path, threats: list[dict[str, Any]]) -> dict[str, Any]:
    spec = yaml.safe_load((CONFIGS / config).read_text())
    spec["data"]["source"]["path"] = str(data)
    spec["device"] = "cpu"
    weights = str(tmp_path / "model.safetensors")
    spec["model"]["weights"] = weights
    spec["train"].update({"epochs": 1, "out": weights})
    spec["evaluation"] = {
        "n_samples": 10,
        "batch_size": 64,
        "threats": threats,
        "calibration": {"fit_on": "none"},
    }
    spec.pop("gate", None)
    return spec


CASES = {
    "mnist_folder.yaml": (
        "mnist",
        [{"name": "linf", "norm": "linf", "epsilon": 0.1, "attacks": [{"name": "fgsm"}]}],
    ),
    "breast_cancer_parquet.yaml": (
        "bc.parquet",
        [{"name": "linf", "norm": "linf", "epsilon": 0.1, "attacks": [{"name": "fgsm"}]}],
    ),
    "sms_jsonl.yaml": (
        "sms.jsonl",
        [
            {
                "name": "edits",
                "norm": "word-edits",
                "epsilon": 0.2,
                "knowledge": "score-based",
                "query_budget": 50,
                "attacks": [{"name": "char-edit"}],
            }
        ],
    ),
}


@pytest.mark.parametrize("config", sorted(CASES))
def test_example_spec_trains_and_evaluates(config: str, sources: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    name, threats = CASES[config]
    spec = load_spec(write_spec(tmp_path, _tiny(config, sources / name, tmp_path, threats)))
    sidecar = train_spec(spec)
    result = evaluate_spec(spec)
    assert sidecar["data"]["fingerprint"] == result.data["fingerprint"]
    assert result.data["source"]["kind"] == spec.data.source.kind  # type: ignore[union-attr]
    assert result.data["classes"]
    assert 0.0 <= result.clean_accuracy <= 1.0
    if spec.model.normalize is not None:
        assert result.model["normalize"]["std"] == spec.model.normalize.std
    assert time.perf_counter() - t0 < 20
