"""Helpers for tests that write pipeline specs (importable from every test folder: pytest puts
``tests/`` on ``sys.path`` for its conftest)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    """``spec`` written as ``tmp_path/spec.yaml``."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


def spec_with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the field at dotted ``path`` (list items by index) set to
    ``value``."""
    spec = copy.deepcopy(base)
    node: Any = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def digits_mlp(name: str = "tiny-digits", **sections: Any) -> dict[str, Any]:
    """A spec for a small MLP on scikit-learn's digits (trains in seconds on the CPU): name,
    seed 0, CPU, the digits data, the MLP with its weights at ``w/mlp.safetensors`` and a
    2-epoch standard recipe writing them; ``sections`` add or replace top-level sections
    (``evaluation=…``, ``catalog=…``; ``train=None`` drops the recipe)."""
    spec: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "data": {"name": "digits"},
        "model": {
            "factory": "robustops.models:mlp",
            "kwargs": {"input_dim": 64, "hidden": [32]},
            "weights": "w/mlp.safetensors",
        },
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.005, "out": "w/mlp.safetensors"},
    }
    for key, value in copy.deepcopy(sections).items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


FGSM_EVALUATION: dict[str, Any] = {
    "n_samples": 40,
    "batch_size": 40,
    "calibration": {"enabled": False},
    "threats": [{"name": "linf", "epsilon": 0.05, "attacks": [{"name": "fgsm"}]}],
}
"""A one-threat, one-attack evaluation of 40 digits (fast), no calibration."""
