"""Side-by-side adversarial training: our recipes against ART's ``AdversarialTrainerMadryPGD``.

Run from the repository root::

    python benchmarks/training.py [--epochs 6] [--n-eval 300] [--threads 1]
                                  [--out benchmarks/results/training.json]

Everything happens in one process, on the embedded MNIST subset (the 4000-image training split,
the first ``--n-eval`` test images) and the reference ``small_cnn`` (``--width``/``--hidden``,
built from seed 0 for every method):

* ``standard``, ``pgd-at``, ``trades``, ``fast`` and ``pgd-at+awp`` are the recipes shipped in
  ``configs/mnist_{standard,pgdat,trades,fast,awp}.yaml``, read from those files, with the epochs
  set to ``--epochs`` and without their validation holdout and early stopping (so every method
  sees the same 4000 images for the same epochs; ``fast`` keeps its overfitting guard, whose
  256-image holdout it pays for in data and time);
* ``pgd-at (no curriculum)`` is ``pgd-at`` with the epsilon ramp removed: the same procedure as
  ART's trainer, for an implementation-to-implementation comparison;
* ``art-madry-pgd`` is ART's ``AdversarialTrainerMadryPGD`` on a ``PyTorchClassifier`` with the
  same model, Adam learning rate, batch size, epochs, ε, PGD steps, step size and one random
  start (its attack batch size set to the training batch size instead of ART's default 32).

Each trained model is then evaluated by our suite under L∞ ε=0.3 with APGD-CE, APGD-DLR and
Square run one after another on the still-robust samples (``--apgd-steps``, ``--square-queries``):
not by the attack the model was trained with. Times cover the training call only: wall time and
the process's CPU time (``--threads`` intra-op threads, 1 by default). Methods run one after
another, so load from other processes skews wall times; CPU time much less so, which is why the
targets are checked on it. The load average is recorded before and after each method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robustops.attacks import build_attack
from robustops.data import Dataset, load_mnist_subset
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import small_cnn
from robustops.threats import ThreatModel
from robustops.training import Recipe, fit

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "standard": "mnist_standard.yaml",
    "pgd-at": "mnist_pgdat.yaml",
    "trades": "mnist_trades.yaml",
    "fast": "mnist_fast.yaml",
    "pgd-at+awp": "mnist_awp.yaml",
}
METHODS = [*CONFIGS, "pgd-at (no curriculum)", "art-madry-pgd"]
EPS = 0.3


def _recipe(name: str, epochs: int) -> Recipe:
    """The shipped recipe for ``name`` at ``epochs`` epochs, without holdout-driven extras
    (except the fast recipe's guard)."""
    base = "pgd-at" if name == "pgd-at (no curriculum)" else name
    spec = yaml.safe_load((ROOT / "configs" / CONFIGS[base]).read_text())["train"]
    for key in ("out", "checkpoint_dir", "metrics", "keep_checkpoints"):
        spec.pop(key, None)
    spec["epochs"] = epochs
    spec.pop("early_stopping", None)
    if spec.get("guard") is None:
        spec.pop("validation", None)
    else:
        spec["validation"] = {
            "holdout": spec["guard"].get("samples", 256),
            "pgd_steps": spec["guard"].get("pgd_steps", 10),
        }
    if name == "pgd-at (no curriculum)":
        spec.pop("curriculum", None)
    return Recipe.model_validate(spec)


class _Clock:
    """Wall time and this process's CPU time (user + system, all threads) of a block, in
    seconds. On a shared machine CPU time is the steadier figure: other processes slow the
    wall clock down but hardly change the work done here."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> _Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def _model(args: argparse.Namespace) -> torch.nn.Module:
    return small_cnn(width=args.width, hidden=args.hidden, seed=0)


def _train_ours(
    name: str, data: Dataset, args: argparse.Namespace
) -> tuple[Any, float, dict[str, Any]]:
    recipe = _recipe(name, args.epochs)
    model = _model(args)
    with _Clock() as clock:
        result = fit(model, data.x_train, data.y_train, recipe, seed=0)
    info = {
        "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
        "guard_restores": result.restores,
        "final_train_loss": result.history[-1].loss,
    }
    return model, clock, info


def _train_art(data: Dataset, args: argparse.Namespace) -> tuple[Any, _Clock, dict[str, Any]]:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    pgd = _recipe("pgd-at", args.epochs)
    steps = pgd.objective.resolved_steps()
    step_size = pgd.objective.step_size or 2.5 * EPS / steps
    model = _model(args)
    classifier = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=pgd.lr),
        input_shape=tuple(data.x_train.shape[1:]),
        nb_classes=data.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        classifier,
        nb_epochs=args.epochs,
        batch_size=pgd.batch_size,
        eps=EPS,
        eps_step=step_size,
        max_iter=steps,
        num_random_init=1,
    )
    trainer.attack.set_params(batch_size=pgd.batch_size)
    x = data.x_train.numpy()
    y = np.eye(data.num_classes, dtype=np.float32)[data.y_train.numpy()]
    np.random.seed(0)
    with _Clock() as clock:
        trainer.fit(x, y)
    info = {
        "art_version": metadata.version("adversarial-robustness-toolbox"),
        "eps": EPS,
        "eps_step": step_size,
        "max_iter": steps,
        "batch_size": pgd.batch_size,
        "lr": pgd.lr,
    }
    return model.eval(), clock, info


def _evaluate(model: torch.nn.Module, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    threat = ThreatModel(name=f"linf-{EPS}", norm="linf", epsilon=EPS)
    attacks = [
        build_attack("apgd-ce", threat, steps=args.apgd_steps, seed=0),
        build_attack("apgd-dlr", threat, steps=args.apgd_steps, seed=0),
        build_attack("square", threat, queries=args.square_queries, seed=0),
    ]
    n = args.n_eval
    t0 = time.perf_counter()
    res = run_suite(model.eval(), data.x_test[:n], data.y_test[:n], [SuiteThreat(threat, attacks)], SuiteOptions(batch_size=250, seed=0))  # fmt: skip
    t = res.threats[0]
    return {
        "clean_accuracy": res.clean_accuracy,
        "robust_accuracy": t.robust_accuracy,
        "broken_by": {a.name: a.n_broken for a in t.attacks},
        "eval_time_s": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--apgd-steps", type=int, default=50)
    parser.add_argument("--square-queries", type=int, default=500)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist_subset()
    rows: list[dict[str, Any]] = []
    for name in args.methods:
        load_before = os.getloadavg()[0]
        if name == "art-madry-pgd":
            model, clock, info = _train_art(data, args)
        else:
            model, clock, info = _train_ours(name, data, args)
        load_after = os.getloadavg()[0]
        figures = _evaluate(model, data, args)
        row = {
            "method": name,
            "train_time_s": clock.wall,
            "train_cpu_s": clock.cpu,
            **figures,
            "load_avg_1min": [load_before, load_after],
            **info,
        }
        rows.append(row)
        print(
            f"{name:24s} clean {row['clean_accuracy']:.3f} robust {row['robust_accuracy']:.3f} "
            f"train {clock.wall:6.1f}s (cpu {clock.cpu:6.1f}s) eval {row['eval_time_s']:5.1f}s load {load_before:.1f}->{load_after:.1f}",
            flush=True,
        )
    by = {r["method"]: r for r in rows}
    targets: dict[str, Any] = {}
    if "fast" in by and "pgd-at" in by:
        f, p = by["fast"], by["pgd-at"]
        targets["fast: robust gap to pgd-at (points)"] = 100 * (
            p["robust_accuracy"] - f["robust_accuracy"]
        )
        for clock in ("cpu", "time"):
            ratio = f[f"train_{clock}_s"] / p[f"train_{clock}_s"]
            targets[f"fast: {clock} ratio to pgd-at"] = ratio
        targets["fast: met (gap <= 2 points, cpu ratio <= 0.3)"] = (
            targets["fast: robust gap to pgd-at (points)"] <= 2.0
            and targets["fast: cpu ratio to pgd-at"] <= 0.3
        )
    if "art-madry-pgd" in by:
        a = by["art-madry-pgd"]
        for ours in ("pgd-at", "pgd-at (no curriculum)"):
            if ours not in by:
                continue
            p = by[ours]
            targets[f"{ours}: robust minus art (points)"] = 100 * (
                p["robust_accuracy"] - a["robust_accuracy"]
            )
            for clock in ("cpu", "time"):
                targets[f"{ours}: {clock} ratio to art"] = (
                    p[f"train_{clock}_s"] / a[f"train_{clock}_s"]
                )
            targets[f"{ours}: met (robust >= art, cpu ratio <= 0.5)"] = (
                p["robust_accuracy"] >= a["robust_accuracy"]
                and targets[f"{ours}: cpu ratio to art"] <= 0.5
            )
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "rows": rows,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(targets, indent=2))
    print(
        "\n| method | clean acc. | robust acc. (APGD-CE → APGD-DLR → Square) "
        "| train CPU time (s) | train wall time (s) | load avg. (1 min) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        load = r["load_avg_1min"]
        print(
            f"| {r['method']} | {r['clean_accuracy']:.1%} | {r['robust_accuracy']:.1%} | "
            f"{r['train_cpu_s']:.0f} | {r['train_time_s']:.0f} | {load[0]:.1f} → {load[1]:.1f} |"
        )


if __name__ == "__main__":
    main()
