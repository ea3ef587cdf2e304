"""The trainer on the digits: every objective trains, resume is exact, the guard and early
stopping act, files are written."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from robustops.data import Dataset
from robustops.training import EpochMetrics, FitHooks, FitOptions, Recipe, fit
from robustops.training import trainer as trainer_mod

from .conftest import RICH_RECIPE, same_weights, tiny_mlp, weights_of

LINF = [{"kind": "linf", "epsilon": 0.1}]


@pytest.mark.parametrize(
    "recipe",
    [
        {"objective": {"name": "standard"}},
        {"objective": {"name": "pgd-at", "steps": 3}, "threats": LINF},
        {"objective": {"name": "trades", "steps": 3, "beta": 2.0}, "threats": LINF},
        {"objective": {"name": "fast"}, "threats": LINF, "schedule": {"kind": "cyclic"}},
        {"objective": {"name": "pgd-at", "steps": 3}, "threats": LINF, "awp": {"gamma": 0.01}},
        {"objective": {"name": "gaussian", "sigma": 0.25}},
        {
            "objective": {"name": "trades", "steps": 3},
            "threats": LINF,
            "inner_precision": "bfloat16",
        },
    ],
    ids=["standard", "pgd-at", "trades", "fast", "pgd-at+awp", "gaussian", "trades-bf16"],
)
def test_every_objective_learns(digits: Dataset, recipe: dict[str, Any]) -> None:
    rec = Recipe.model_validate({"epochs": 3, "batch_size": 64, "lr": 0.01, **recipe})
    model = tiny_mlp()
    result = fit(model, digits.x_train, digits.y_train, rec, seed=0)
    losses = [h.loss for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    with torch.no_grad():
        acc = float((model(digits.x_test).argmax(1) == digits.y_test).float().mean())
    assert acc > 0.6, acc
    assert not model.training


def test_adversarial_training_is_more_robust_than_standard(digits: Dataset) -> None:
    from robustops.attacks import build_attack
    from robustops.threats import ThreatModel

    base = {"epochs": 4, "batch_size": 64, "lr": 0.01, "threats": [{"epsilon": 0.2}]}
    robust = {}
    for name in ("standard", "pgd-at"):
        rec = Recipe.model_validate({**base, "objective": {"name": name}})
        model = tiny_mlp()
        fit(model, digits.x_train, digits.y_train, rec, seed=0)
        attack = build_attack("pgd", ThreatModel(name="t", epsilon=0.2), steps=20)
        res = attack(model, digits.x_test, digits.y_test)
        with torch.no_grad():
            ok = model(digits.x_test).argmax(1) == digits.y_test
        robust[name] = float((ok & ~res.success).float().mean())
    assert robust["pgd-at"] > robust["standard"] + 0.2, robust


def _rich() -> Recipe:
    return Recipe.model_validate(copy.deepcopy(RICH_RECIPE))


class _Stop(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(digits: Dataset, tmp_path: Path) -> None:
    rec = _rich()
    x, y, info = digits.x_train, digits.y_train, {"fingerprint": digits.fingerprint}
    full = tiny_mlp()
    ref = fit(
        full, x, y, rec, seed=3, options=FitOptions(checkpoint_dir=tmp_path / "a", data_info=info)
    )

    def stop_after_first(m: EpochMetrics) -> None:
        if m.epoch == 1:
            raise _Stop

    part = tiny_mlp()
    with pytest.raises(_Stop):
        fit(part, x, y, rec, seed=3,
            options=FitOptions(checkpoint_dir=tmp_path / "b", data_info=info,
                               metrics_path=tmp_path / "b.jsonl"),
            hooks=FitHooks(on_epoch=stop_after_first))  # fmt: skip
    torch.manual_seed(12345)  # a different global RNG state must not matter
    resumed_model = tiny_mlp(seed=9)  # different initial weights: all come from the checkpoint
    res = fit(resumed_model, x, y, rec, seed=3,
              options=FitOptions(checkpoint_dir=tmp_path / "b", resume=True, data_info=info,
                                 metrics_path=tmp_path / "b.jsonl"))  # fmt: skip
    assert res.resumed_from == 1
    assert same_weights(weights_of(full), weights_of(resumed_model))

    def strip(h: list[EpochMetrics]) -> list[dict[str, Any]]:
        return [{k: v for k, v in m.to_json().items() if k != "time_s"} for m in h]

    assert strip(ref.history) == strip(res.history)
    assert [h.epsilon_factor for h in ref.history] == [0.5, 0.75, 1.0]  # adaptive curriculum
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "b" / "best.json").is_file()
    assert sorted(p.name for p in (tmp_path / "b").glob("epoch-*.json")) == [
        "epoch-0002.json",
        "epoch-0003.json",
    ]


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json, torch
    from robustops.data import load_digits
    from robustops.models import mlp
    from robustops.training import FitHooks, FitOptions, Recipe, fit
    torch.set_num_threads(int(sys.argv[3]))
    d = load_digits()
    rec = Recipe.model_validate(json.loads(sys.argv[2]))
    def kill(m):
        if m.epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    fit(mlp(input_dim=64, hidden=[32], seed=0), d.x_train, d.y_train, rec, seed=1,
        options=FitOptions(checkpoint_dir=sys.argv[1], data_info={"fingerprint": d.fingerprint}),
        hooks=FitHooks(on_epoch=kill))
    """
)


def test_killed_process_resumes_exactly(digits: Dataset, tmp_path: Path) -> None:
    spec = copy.deepcopy(RICH_RECIPE)
    spec["epochs"] = 3
    rec = Recipe.model_validate(spec)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "ck"), json.dumps(spec),
         str(torch.get_num_threads())],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    info = {"fingerprint": digits.fingerprint}
    resumed = tiny_mlp()
    res = fit(resumed, digits.x_train, digits.y_train, rec, seed=1,
              options=FitOptions(checkpoint_dir=tmp_path / "ck", resume=True, data_info=info))  # fmt: skip
    assert res.resumed_from == 2
    full = tiny_mlp()
    fit(full, digits.x_train, digits.y_train, rec, seed=1, options=FitOptions(data_info=info))
    assert same_weights(weights_of(full), weights_of(resumed))


def test_resume_refuses_a_different_recipe(digits: Dataset, tmp_path: Path) -> None:
    from robustops.errors import SpecError

    rec = Recipe.model_validate({"epochs": 1, "batch_size": 256})
    fit(
        tiny_mlp(), digits.x_train, digits.y_train, rec, options=FitOptions(checkpoint_dir=tmp_path)
    )
    other = Recipe.model_validate({"epochs": 2, "batch_size": 128})
    with pytest.raises(SpecError) as info:
        resume = FitOptions(checkpoint_dir=tmp_path, resume=True)
        fit(tiny_mlp(), digits.x_train, digits.y_train, other, options=resume)
    assert {p for p, _ in info.value.errors} == {"train.epochs", "train.batch_size"}


def test_guard_restores_last_good_weights_and_lowers_the_step(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripted validation figures: epoch 2 shows the catastrophic-overfitting signature."""
    figures = iter(
        [
            trainer_mod._Validation(0.9, 0.5, 0.5, 0.60, 0.50),
            trainer_mod._Validation(0.9, 0.1, 0.1, 0.80, 0.05),  # PGD collapses, FGSM rises
            trainer_mod._Validation(0.9, 0.5, 0.5, 0.60, 0.52),
        ]
    )
    monkeypatch.setattr(trainer_mod._Trainer, "validate", lambda self, x, y, f: next(figures))
    rec = Recipe.model_validate(
        {
            "epochs": 3,
            "batch_size": 128,
            "lr": 0.01,
            "objective": {"name": "fast"},
            "threats": LINF,
            "validation": {"holdout": 100},
            "guard": {"samples": 50, "step_factor": 0.5},
            "keep_best": False,
        }
    )
    snaps: list[dict[str, torch.Tensor]] = []
    model = tiny_mlp()
    res = fit(model, digits.x_train, digits.y_train, rec,
              hooks=FitHooks(on_epoch=lambda m: snaps.append(weights_of(model))))  # fmt: skip
    assert [h.guard_restored for h in res.history] == [False, True, False]
    assert [h.step_scale for h in res.history] == [1.0, 0.5, 0.5]
    assert res.restores == 1
    assert same_weights(snaps[0], snaps[1])  # epoch 2 ended on epoch 1's weights
    assert not same_weights(snaps[1], snaps[2])


def test_early_stopping_keeps_the_best_epoch(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    robust = iter([0.3, 0.5, 0.4, 0.45, 0.2, 0.9])
    monkeypatch.setattr(
        trainer_mod._Trainer,
        "validate",
        lambda self, x, y, f: trainer_mod._Validation(0.9, (r := next(robust)), r),
    )
    rec = Recipe.model_validate(
        {
            "epochs": 6,
            "batch_size": 128,
            "threats": LINF,
            "validation": {"holdout": 100},
            "early_stopping": {"patience": 2},
        }
    )
    snaps: list[dict[str, torch.Tensor]] = []
    model = tiny_mlp()
    res = fit(model, digits.x_train, digits.y_train, rec,
              options=FitOptions(checkpoint_dir=tmp_path),
              hooks=FitHooks(on_epoch=lambda m: snaps.append(weights_of(model))))  # fmt: skip
    assert res.stopped_early and len(res.history) == 4
    assert res.best_epoch == 2 and res.best_robust_accuracy == 0.5 and res.final == "best"
    assert same_weights(weights_of(model), snaps[1])
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 2


def test_real_validation_figures(digits: Dataset) -> None:
    rec = Recipe.model_validate(
        {
            "epochs": 2,
            "batch_size": 128,
            "lr": 0.01,
            "objective": {"name": "fast"},
            "threats": LINF,
            "curriculum": {"kind": "linear", "ramp_epochs": 1},
            "validation": {"holdout": 150, "pgd_steps": 3},
            "guard": {"samples": 60, "pgd_steps": 3},
        }
    )
    res = fit(tiny_mlp(), digits.x_train, digits.y_train, rec)
    last = res.history[-1]
    assert last.val_clean_accuracy is not None and last.val_robust_accuracy is not None
    assert 0 <= last.val_robust_accuracy <= last.val_clean_accuracy <= 1
    assert last.guard_fgsm_accuracy is not None and last.guard_pgd_accuracy is not None
    assert res.history[0].epsilon_factor < 1.0 and last.epsilon == pytest.approx(0.1)


def test_conv_model_trains_channels_last_and_comes_back_contiguous(digits: Dataset) -> None:
    from robustops.models import small_cnn

    rec = Recipe.model_validate(
        {
            "epochs": 1,
            "batch_size": 128,
            "objective": {"name": "pgd-at", "steps": 2},
            "threats": LINF,
        }
    )
    model = small_cnn(input_size=8, width=4, hidden=16)
    fit(model, digits.x_train, digits.y_train, rec)
    assert all(p.is_contiguous() for p in model.parameters())
    contiguous = small_cnn(input_size=8, width=4, hidden=16)
    fit(contiguous, digits.x_train, digits.y_train,
        rec.model_copy(update={"memory_format": "contiguous"}))  # fmt: skip
    for (k, a), (_, b) in zip(
        model.state_dict().items(), contiguous.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=k)  # same maths, other layout


class _RightOnlyWhenPerturbed(torch.nn.Module):
    """Class 0 on inputs exactly on the {0, 1} lattice (every clean input here), class 1 off it:
    wrong on every clean sample, right on every perturbed one."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = ((x == 0) | (x == 1)).flatten(1).all(1).float()
        return torch.stack([on, 1 - on], dim=1) + 0 * (self.w + x.flatten(1).sum(1, keepdim=True))


def test_a_sample_wrong_when_clean_is_never_counted_robust() -> None:
    """Holdout robust accuracy used to count a sample whose PGD iterate happened to be classified
    correctly although its clean prediction was wrong (robust above clean accuracy)."""
    x = torch.randint(0, 2, (120, 1, 4, 4), generator=torch.Generator().manual_seed(0)).float()
    y = torch.ones(120, dtype=torch.int64)
    rec = Recipe.model_validate(
        {
            "epochs": 1,
            "batch_size": 40,
            "objective": {"name": "pgd-at", "steps": 2},
            "threats": LINF,
            "validation": {"holdout": 60, "pgd_steps": 2},
        }
    )
    last = fit(_RightOnlyWhenPerturbed(), x, y, rec).history[-1]
    assert last.val_clean_accuracy == 0.0
    assert last.val_robust_accuracy == 0.0
