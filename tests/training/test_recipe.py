"""Recipe validation: every bad field is refused with its dotted path, through the spec too."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from robustops.config import load_spec
from robustops.errors import SpecError
from robustops.training import Recipe

BASE: dict[str, Any] = {
    "name": "t",
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {"factory": "robustops.models:mlp", "kwargs": {"input_dim": 64, "hidden": [8]}},
    "train": {
        "epochs": 1,
        "out": "w/m.safetensors",
        "objective": {"name": "pgd-at", "steps": 3},
        "threats": [{"kind": "linf", "epsilon": 0.1}],
    },
}


def _spec(tmp_path: Path, **train: Any) -> Path:
    spec = copy.deepcopy(BASE)
    for key, value in train.items():
        if value is None:
            spec["train"].pop(key, None)
        else:
            spec["train"][key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _paths(tmp_path: Path, **train: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(tmp_path, **train))
    return [p for p, _ in info.value.errors]


def test_good_recipe_loads(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    assert spec.train is not None and spec.train.objective.name == "pgd-at"
    assert spec.train.checkpoint_path().name == "m.safetensors.ckpt"
    assert spec.train.metrics_path().name == "m.safetensors.metrics.jsonl"
    assert spec.train.checkpoint_path().is_absolute()


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"objective": {"name": "pgd-at", "stepz": 3}}, "train.objective.stepz"),
        ({"objective": {"name": "pgd-at", "steps": 0}}, "train.objective.steps"),
        ({"objective": {"name": "pgd-at", "beta": 3.0}}, "train.objective"),
        ({"objective": {"name": "madry"}}, "train.objective.name"),
        ({"threats": [{"kind": "linf"}]}, "train.threats.0"),
        ({"threats": [{"kind": "linf", "epsilon": -1}]}, "train.threats.0.epsilon"),
        ({"threats": [{"kind": "patch", "epsilon": 0.1, "size": 3}]}, "train.threats.0"),
        ({"threats": [{"kind": "blur", "epsilon": 0.1}]}, "train.threats.0.kind"),
        ({"threats": []}, "train"),
        ({"curriculum": {"kind": "step", "milestones": [2], "values": [0.5]}}, "train.curriculum"),
        ({"schedule": {"kind": "cyclic", "milestones": [1]}}, "train.schedule"),
        ({"schedule": {"kind": "cosine", "peak": 0.5}}, "train.schedule"),
        ({"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}}, "train.optimizer"),
        ({"early_stopping": {"patience": 2}}, "train"),
        ({"awp": {"gamma": 0.01}, "objective": {"name": "fast"}}, "train"),
        ({"awp": {"gamma": 2}}, "train.awp.gamma"),
        ({"guard": {"samples": 10}}, "train"),
        ({"validation": {"holdout": -1}}, "train.validation.holdout"),
        ({"colour": "red"}, "train.colour"),
        ({"out": "w/m.pt"}, "train.out"),
        ({"epochs": 0}, "train.epochs"),
    ],
)
def test_bad_recipe_names_the_field(tmp_path: Path, train: dict[str, Any], expected: str) -> None:
    assert expected in _paths(tmp_path, **train)


def test_standard_recipe_keeps_the_old_keys() -> None:
    r = Recipe.model_validate({"epochs": 2, "batch_size": 32, "lr": 0.01, "weight_decay": 0.1})
    assert r.objective.name == "standard" and r.threats == []
    with pytest.raises(ValidationError):
        Recipe.model_validate({"objective": {"name": "trades"}})  # needs a threat


def test_unused_parameter_message_names_it() -> None:
    with pytest.raises(ValidationError) as info:
        Recipe.model_validate(
            {"objective": {"name": "fast", "steps": 3}, "threats": [{"epsilon": 0.1}]}
        )
    assert "steps" in str(info.value) and "fast" in str(info.value)
