"""Constrained against unconstrained attacks on a tabular model (breast cancer, MLP).

Run from the repository root::

    python benchmarks/tabular.py [--epochs 30] [--steps 50] [--restarts 2]
                                 [--linf 0.05,0.1,0.2] [--l2 0.2,0.4,0.8]
                                 [--out benchmarks/results/tabular.json] [--threads 1]

Everything happens in one process, on one model and the whole test split:

* the model of ``configs/tabular.yaml`` (``mlp`` 32-64-64-2, seed 0) is trained ``--epochs``
  epochs on the 455 training rows of the embedded ``breast_cancer`` table (Adam, lr 3e-3,
  batch 32);
* the 114 test rows are attacked at each epsilon (scaled units: every column is min-max
  scaled to [0, 1] with the schema's fixed ranges).

Attacks, per norm and epsilon (robust accuracy = share of the 114 rows classified correctly
and not broken):

* ``pgd``: unconstrained PGD (``--steps`` steps, ``--restarts`` random restarts), which ignores
  the schema;
* ``pgd → project``: the unconstrained adversarial rows mapped onto the schema afterwards
  (``FeatureSchema.project``), the naive way to "make them feasible";
* ``tabular-pgd``: constrained PGD with the ``breast_cancer`` schema (same steps and restarts);
* ``tabular-noise`` (1000 draws) and ``feature-masking`` (k = 5): the black-box attacks;
* ``schema worst case``: a row counts as broken if any of the three schema-respecting attacks
  broke it (the suite's per-sample worst case).

For the unconstrained PGD the script also reports the share of its successful adversarial rows
that break the schema, and which constraints they break (a row can break several).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import environment
from robustops.attacks import PGD, Attack
from robustops.attacks.tabular import FeatureMasking, TabularNoise, TabularPGD
from robustops.data import load_dataset
from robustops.models import mlp
from robustops.tabular import BREAST_CANCER_SCHEMA
from robustops.tabular.constraints import violation_masks
from robustops.threats import ThreatModel
from robustops.training.standard import StandardConfig, accuracy, train_standard

SCHEMA = BREAST_CANCER_SCHEMA
CONSTRAINED = ("tabular-pgd", "tabular-noise", "feature-masking")


def _train(epochs: int, seed: int) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    data = load_dataset("breast_cancer", seed=seed)
    model = mlp(input_dim=SCHEMA.dim, hidden=(64, 64), num_classes=2, seed=seed)
    t0 = time.perf_counter()
    config = StandardConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed)
    train_standard(model, data.x_train, data.y_train, config)
    model.eval()
    info = {
        "data": data.describe(),
        "model": "mlp(input_dim=32, hidden=(64, 64), num_classes=2)",
        "epochs": epochs,
        "batch_size": 32,
        "lr": 3e-3,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - t0, 3),
        "train_accuracy": accuracy(model, data.x_train, data.y_train),
        "test_accuracy": accuracy(model, data.x_test, data.y_test),
    }
    return model, data.x_test, data.y_test, info


def _violations(adv: Tensor, x: Tensor) -> dict[str, int]:
    """Rows of ``adv`` breaking each kind of constraint (against the original rows ``x``)."""
    masks = violation_masks(adv.double(), x.double(), SCHEMA.constraints(torch.float64))
    groups = {
        "immutable changed": ("immutable", "group_immutable"),
        "monotone reversed": ("increase", "decrease"),
        "off the integer grid": ("grid",),
        "one-hot broken": ("one_hot",),
        "out of range": ("range", "nonfinite"),
    }
    return {
        label: int(torch.stack([masks[k].any(1) for k in keys]).any(0).sum())
        for label, keys in groups.items()
    }


def _bench_eps(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, steps: int, restarts: int
) -> dict[str, Any]:
    threat = ThreatModel(name=f"{norm}-{eps:g}", norm=norm, epsilon=eps)  # type: ignore[arg-type]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    attacks: dict[str, Attack] = {
        "pgd": PGD(threat, steps=steps, restarts=restarts),
        "tabular-pgd": TabularPGD(threat, schema=SCHEMA, steps=steps, restarts=restarts),
        "tabular-noise": TabularNoise(threat, schema=SCHEMA, draws=1000),
        "feature-masking": FeatureMasking(threat, schema=SCHEMA, k=5),
    }
    rows: dict[str, Any] = {}
    broken: dict[str, Tensor] = {}
    advs: dict[str, Tensor] = {}
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        res = attack(model, x, y)
        seconds = time.perf_counter() - t0
        hit = res.success & correct
        broken[name] = hit
        advs[name] = res.adversarial
        feasible = SCHEMA.is_feasible(res.adversarial, x, threat)
        rows[name] = {
            "robust_accuracy": float((correct & ~hit).float().mean()),
            "broken": int(hit.sum()),
            "mean_queries": float(res.queries.float().mean()),
            "seconds": round(seconds, 4),
            "feasible_rows": float(feasible.float().mean()),
        }
    projected = SCHEMA.project(advs["pgd"], x, threat)
    with torch.no_grad():
        still = (model(projected).argmax(1) != y) & correct
    rows["pgd → project"] = {
        "robust_accuracy": float((correct & ~still).float().mean()),
        "broken": int(still.sum()),
        "mean_queries": rows["pgd"]["mean_queries"],
        "seconds": None,
        "feasible_rows": float(SCHEMA.is_feasible(projected, x, threat).float().mean()),
    }
    worst = torch.stack([broken[n] for n in CONSTRAINED]).any(0)
    rows["schema worst case"] = {
        "robust_accuracy": float((correct & ~worst).float().mean()),
        "broken": int(worst.sum()),
        "mean_queries": None,
        "seconds": None,
        "feasible_rows": 1.0,
    }
    unc = broken["pgd"]
    unc_adv = advs["pgd"][unc]
    infeasible = ~SCHEMA.is_feasible(unc_adv, x[unc])
    return {
        "norm": norm,
        "epsilon": eps,
        "clean_accuracy": float(correct.float().mean()),
        "attacks": rows,
        "unconstrained": {
            "successes": int(unc.sum()),
            "violating_schema": int(infeasible.sum()),
            "violating_share": float(infeasible.float().mean()) if unc.any() else 0.0,
            "by_constraint": _violations(unc_adv, x[unc]),
        },
        "constrained_but_not_unconstrained": int((broken["tabular-pgd"] & ~unc).sum()),
    }


ORDER = (
    "pgd",
    "pgd → project",
    "tabular-pgd",
    "tabular-noise",
    "feature-masking",
    "schema worst case",
)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "| norm | ε | clean | pgd (unconstrained) | pgd → project | tabular-pgd | tabular-noise "
        "| feature-masking | schema worst case | unconstrained adv. violating schema |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        cells = " | ".join(f"{100 * r['attacks'][n]['robust_accuracy']:.1f}%" for n in ORDER)
        u = r["unconstrained"]
        lines.append(
            f"| {r['norm']} | {r['epsilon']:g} | {100 * r['clean_accuracy']:.1f}% | {cells} | "
            f"{u['violating_schema']}/{u['successes']} ({100 * u['violating_share']:.0f}%) |"
        )
    kinds = list(report["results"][0]["unconstrained"]["by_constraint"])
    lines += [
        "",
        "| norm | ε | unconstrained successes | " + " | ".join(kinds) + " |",
        "| --- | ---: | ---: |" + " ---: |" * len(kinds),
    ]
    for r in report["results"]:
        u = r["unconstrained"]
        cells = " | ".join(str(u["by_constraint"][k]) for k in kinds)
        lines.append(f"| {r['norm']} | {r['epsilon']:g} | {u['successes']} | {cells} |")
    lines += [
        "",
        "| norm | ε | "
        + " | ".join(f"{n} s" for n in ORDER[:1] + ORDER[2:5])
        + " | "
        + " | ".join(f"{n} queries" for n in ORDER[:1] + ORDER[2:5])
        + " |",
        "| --- | ---: |" + " ---: |" * 8,
    ]
    for r in report["results"]:
        a = r["attacks"]
        names = ORDER[:1] + ORDER[2:5]
        secs = " | ".join(f"{a[n]['seconds']:.3f}" for n in names)
        qs = " | ".join(f"{a[n]['mean_queries']:.1f}" for n in names)
        lines.append(f"| {r['norm']} | {r['epsilon']:g} | {secs} | {qs} |")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the MLP")
    parser.add_argument("--seed", type=int, default=0, help="model, split and training seed")
    parser.add_argument("--steps", type=int, default=50, help="PGD steps (both PGDs)")
    parser.add_argument("--restarts", type=int, default=2, help="PGD restarts (both PGDs)")
    parser.add_argument("--linf", default="0.05,0.1,0.2", help="L∞ epsilons (scaled units)")
    parser.add_argument("--l2", default="0.2,0.4,0.8", help="L2 epsilons ('' for none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tabular.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, x, y, info = _train(args.epochs, args.seed)
    print(
        f"model trained: train accuracy {info['train_accuracy']:.3f}, "
        f"test accuracy {info['test_accuracy']:.3f}",
        file=sys.stderr,
    )
    grid = [("linf", e) for e in _floats(args.linf)] + [("l2", e) for e in _floats(args.l2)]
    results = []
    for norm, eps in grid:
        results.append(_bench_eps(model, x, y, norm, eps, args.steps, args.restarts))
        print(f"  {norm} {eps:g} done", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "benchmark": "tabular",
        "command": " ".join(["python", *sys.argv]),
        "config": {
            "schema": SCHEMA.name,
            "steps": args.steps,
            "restarts": args.restarts,
            "tabular_noise_draws": 1000,
            "feature_masking_k": 5,
            "n_test_rows": int(x.shape[0]),
        },
        "environment": {**environment(), "cpu_count": os.cpu_count()},
        "model": info,
        "results": results,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nbreast_cancer, MLP 32-64-64-2 ({args.epochs} epochs, test accuracy "
        f"{100 * info['test_accuracy']:.1f}%), {x.shape[0]} test rows; robust accuracy; "
        f"PGD {args.steps} steps × {args.restarts} restarts; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print(_markdown(report))
    print(f"\nwrote {args.out} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
