"""Side-by-side PGD speed: our PGD against the gradient floor, torchattacks and ART.

Run from the repository root::

    python benchmarks/attack_speed.py [--repeats 5] [--batch 256] [--steps 40]
                                      [--out benchmarks/results/attack_speed.json]
                                      [--norms linf,l2] [--threads N]

Everything happens in one process, on one model and one batch:

* the reference ``small_cnn`` is built with a fixed seed and trained ``--epochs`` epochs on the
  embedded MNIST subset;
* the batch is the first ``--batch`` test images;
* each method is timed ``--repeats`` times after a short warm-up; the repeats are interleaved
  (round robin, rotating the order) so that a change in machine load hits every method alike,
  and the median is reported.

Methods, per norm (L∞ ε=0.3 step 0.01; L2 ε=2.0 step 0.1; ``--steps`` iterations, 1 random start):

* ``floor``: ``steps`` × (forward, loss, ``torch.autograd.grad`` w.r.t. the input only, parameters
  frozen) on the clean batch, and nothing else; no attack can do less work per iteration.
* ``floor_iterates``: the same loop, but iteration ``i`` runs on the ``i``-th iterate of a plain
  PGD trajectory (precomputed, untimed). On CPU the model's cost depends on the data (max-pooling
  on clean MNIST, mostly exact zeros, is markedly faster than on noisy inputs) and every attack
  iterates on perturbed inputs; this row shows how much of an attack's excess over ``floor`` is
  that effect rather than the attack's own overhead. Informational: the targets use ``floor``.
* ``ours``: ``robustops`` PGD with ``early_stop=False`` (the apples-to-apples comparison); the
  timing covers the whole call, input checks and the final verification forward pass included.
* ``ours_es``: the same with ``early_stop=True`` (our default).
* ``torchattacks``: ``torchattacks.PGD`` / ``PGDL2`` with ``random_start=True``.
* ``art``: ART's ``ProjectedGradientDescent`` on a ``PyTorchClassifier`` (numpy in and out; the
  conversion of the batch to numpy is done once, outside the timing).

Success rate is re-measured the same way for every method: the share of the batch whose
adversarial input the model labels differently from the true label. The largest perturbation
norm (in float32) is reported next to the budget.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustops._util import cpu_model
from robustops.attacks import PGD
from robustops.attacks.base import frozen_parameters, perturbation_norm, project, random_start
from robustops.attacks.pgd import ascent_direction
from robustops.data.embedded import load_mnist_subset
from robustops.models.reference import small_cnn
from robustops.threats import ThreatModel
from robustops.training.standard import StandardConfig, accuracy, train_standard

NORMS: dict[str, dict[str, float]] = {
    "linf": {"eps": 0.3, "step": 0.01},
    "l2": {"eps": 2.0, "step": 0.1},
}
TARGETS = {"floor": 1.10, "torchattacks": 0.9, "art": 0.5}
"""Targets for ``ours`` (no early stop): its median time divided by the reference's, at most."""

Runner = Callable[[int], Tensor | None]
"""Runs one method with a given number of steps; returns the adversarial batch (or None)."""


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": np.__version__,
        "torchattacks": _version("torchattacks"),
        "adversarial-robustness-toolbox": _version("adversarial-robustness-toolbox"),
        "robustops": _version("robustops"),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _train_model(epochs: int, seed: int) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    data = load_mnist_subset(seed=seed)
    model = small_cnn(seed=seed)
    history = train_standard(
        model,
        data.x_train,
        data.y_train,
        StandardConfig(epochs=epochs, seed=seed),
        validation=(data.x_test, data.y_test),
    )
    model.eval()
    info = {
        "data": data.describe(),
        "epochs": epochs,
        "seed": seed,
        "test_accuracy": history[-1].test_accuracy,
    }
    return model, data.x_test, data.y_test, info


def _threat(norm: str) -> ThreatModel:
    cfg = NORMS[norm]
    return ThreatModel(name=f"{norm}-{cfg['eps']}", norm=norm, epsilon=cfg["eps"])  # type: ignore[arg-type]


def _iterates(model: nn.Module, x: Tensor, y: Tensor, norm: str, steps: int) -> list[Tensor]:
    """The inputs a plain PGD visits: random start, then ``steps - 1`` projected steps."""
    threat = _threat(norm)
    adv = random_start(x, threat, torch.Generator().manual_seed(0))
    out = []
    with frozen_parameters(model):
        for _ in range(steps):
            out.append(adv)
            xr = adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
            step = NORMS[norm]["step"] * ascent_direction(grad, norm)
            adv = project(adv + step, x, threat)
    return out


def _floor(model: nn.Module, inputs: list[Tensor], y: Tensor) -> Runner:
    """``steps`` × (forward, loss, input gradient); iteration ``i`` on ``inputs[i % len]``."""

    def run(steps: int) -> None:
        with frozen_parameters(model):
            for i in range(steps):
                xr = inputs[i % len(inputs)].detach().requires_grad_(True)
                loss = F.cross_entropy(model(xr), y, reduction="sum")
                torch.autograd.grad(loss, xr)

    return run


def _ours(model: nn.Module, x: Tensor, y: Tensor, norm: str, early_stop: bool) -> Runner:
    cfg = NORMS[norm]
    threat = _threat(norm)

    def run(steps: int) -> Tensor:
        attack = PGD(
            threat,
            steps=steps,
            step_size=cfg["step"],
            restarts=1,
            random_start=True,
            early_stop=early_stop,
            seed=0,
        )
        return attack(model, x, y).adversarial

    return run


def _torchattacks(model: nn.Module, x: Tensor, y: Tensor, norm: str) -> Runner:
    import torchattacks

    cfg = NORMS[norm]
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2

    def run(steps: int) -> Tensor:
        torch.manual_seed(0)  # torchattacks draws its random start from the global generator
        attack = cls(model, eps=cfg["eps"], alpha=cfg["step"], steps=steps, random_start=True)
        out: Tensor = attack(x, y)
        return out

    return run


def _art(model: nn.Module, x: Tensor, y: Tensor, norm: str) -> Runner:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    cfg = NORMS[norm]
    x_np, y_np = x.numpy().copy(), y.numpy().copy()
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )

    def run(steps: int) -> Tensor:
        np.random.seed(0)  # ART draws its random start from numpy's global generator
        attack = ProjectedGradientDescent(
            classifier,
            norm=np.inf if norm == "linf" else 2,
            eps=cfg["eps"],
            eps_step=cfg["step"],
            max_iter=steps,
            num_random_init=1,
            batch_size=x.shape[0],
            verbose=False,
        )
        return torch.from_numpy(attack.generate(x=x_np, y=y_np))

    return run


def _time(fn: Runner, steps: int) -> tuple[float, float, Tensor | None]:
    """Wall and process-CPU seconds of one run, and its output."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(steps)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _ratios(stat: dict[str, float]) -> dict[str, float]:
    pairs = [
        ("ours", "floor"),
        ("ours", "floor_iterates"),
        ("floor_iterates", "floor"),
        ("ours", "torchattacks"),
        ("ours", "art"),
        ("ours_es", "floor"),
        ("ours_es", "torchattacks"),
        ("ours_es", "art"),
        ("torchattacks", "floor"),
        ("art", "floor"),
    ]
    return {f"{a}/{b}": stat[a] / stat[b] for a, b in pairs}


def _bench_norm(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, steps: int, repeats: int
) -> dict[str, Any]:
    runners: dict[str, Runner] = {
        "floor": _floor(model, [x], y),
        "floor_iterates": _floor(model, _iterates(model, x, y, norm, steps), y),
        "ours": _ours(model, x, y, norm, early_stop=False),
        "ours_es": _ours(model, x, y, norm, early_stop=True),
        "torchattacks": _torchattacks(model, x, y, norm),
        "art": _art(model, x, y, norm),
    }
    for fn in runners.values():  # warm-up: kernels, allocator, lazy imports
        fn(min(steps, 3))
    walls: dict[str, list[float]] = {name: [] for name in runners}
    cpus: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, Tensor | None] = {}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu, out = _time(runners[name], steps)
            walls[name].append(wall)
            cpus[name].append(cpu)
            outputs[name] = out
        print(f"  {norm} repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    eps = NORMS[norm]["eps"]
    result: dict[str, Any] = {"epsilon": eps, "step_size": NORMS[norm]["step"], "methods": {}}
    for name in names:
        entry: dict[str, Any] = {
            "wall_s": [round(t, 4) for t in walls[name]],
            "cpu_s": [round(t, 4) for t in cpus[name]],
            "median_s": statistics.median(walls[name]),
            "min_s": min(walls[name]),
            "cpu_median_s": statistics.median(cpus[name]),
        }
        entry["ms_per_step"] = 1000 * entry["median_s"] / steps
        adv = outputs[name]
        if adv is not None:
            with torch.no_grad():
                pred = model(adv).argmax(dim=1)
            size = perturbation_norm(adv - x, norm)
            entry["success_rate"] = float((pred != y).float().mean())
            entry["max_perturbation"] = float(size.max())
            # Compared in the inputs' dtype (float32), the library's exactness guarantee.
            entry["within_epsilon"] = bool((size <= eps).all())
            entry["within_bounds"] = bool(adv.min() >= 0.0) and bool(adv.max() <= 1.0)
        result["methods"][name] = entry
    methods = result["methods"]
    med = {name: methods[name]["median_s"] for name in names}
    result["ratios"] = _ratios(med)
    result["ratios_of_minima"] = _ratios({name: methods[name]["min_s"] for name in names})
    result["ratios_cpu"] = _ratios({name: methods[name]["cpu_median_s"] for name in names})
    floor_walls = walls["floor"]
    result["floor_spread"] = max(floor_walls) / min(floor_walls)
    result["targets"] = {
        f"ours/{ref}": {
            "ratio": med["ours"] / med[ref],
            "target": limit,
            "met": med["ours"] / med[ref] <= limit,
        }
        for ref, limit in TARGETS.items()
    }
    return result


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "| norm | method | median s | min s | CPU s | ms/step | × floor | × floor (CPU) "
        "| success | max ‖δ‖ (ε) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for norm, res in report["results"].items():
        floor = res["methods"]["floor"]
        for name, m in res["methods"].items():
            success = f"{100 * m['success_rate']:.1f}%" if "success_rate" in m else "—"
            pert = (
                f"{m['max_perturbation']:.8g} ({res['epsilon']:g}"
                f"{'' if m['within_epsilon'] else ', exceeded'})"
                if "max_perturbation" in m
                else "—"
            )
            lines.append(
                f"| {norm} | {name} | {m['median_s']:.3f} | {m['min_s']:.3f} | "
                f"{m['cpu_median_s']:.3f} | {m['ms_per_step']:.1f} | "
                f"{m['median_s'] / floor['median_s']:.3f} | "
                f"{m['cpu_median_s'] / floor['cpu_median_s']:.3f} | {success} | {pert} |"
            )
    lines += [
        "",
        "| norm | target (ours, no early stop) | ratio (median wall) | limit | met "
        "| ratio (min wall) | ratio (CPU) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for norm, res in report["results"].items():
        for key, t in res["targets"].items():
            met = "yes" if t["met"] else "**no**"
            lines.append(
                f"| {norm} | {key} | {t['ratio']:.3f} | ≤ {t['target']} | {met} | "
                f"{res['ratios_of_minima'][key]:.3f} | {res['ratios_cpu'][key]:.3f} |"
            )
    keys = [
        "ours/floor_iterates",
        "floor_iterates/floor",
        "torchattacks/floor",
        "art/floor",
        "ours_es/torchattacks",
        "ours_es/art",
    ]
    lines += ["", "| norm | statistic | " + " | ".join(keys) + " |"]
    lines.append("| --- | --- |" + " ---: |" * len(keys))
    for norm, res in report["results"].items():
        for label, field in (("median wall", "ratios"), ("CPU", "ratios_cpu")):
            cells = " | ".join(f"{res[field][k]:.3f}" for k in keys)
            lines.append(f"| {norm} | {label} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per method (≥ 1)")
    parser.add_argument("--batch", type=int, default=256, help="batch size")
    parser.add_argument("--steps", type=int, default=40, help="PGD iterations k")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the model")
    parser.add_argument("--seed", type=int, default=0, help="model, split and training seed")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--norms", default="linf", help="comma-separated, linf and/or l2 (l2 doubles the run time)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_speed.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.steps < 1:
        parser.error("--repeats, --batch and --steps must be >= 1")
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    if not norms or any(n not in NORMS for n in norms):
        parser.error(f"--norms must name some of {sorted(NORMS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    load_before = _loadavg()
    model, x_test, y_test, model_info = _train_model(args.epochs, args.seed)
    x, y = x_test[: args.batch].contiguous(), y_test[: args.batch].contiguous()
    model_info["batch_clean_accuracy"] = accuracy(model, x, y)
    print(
        f"model trained: test accuracy {model_info['test_accuracy']:.3f}, "
        f"batch {x.shape[0]} clean accuracy {model_info['batch_clean_accuracy']:.3f}",
        file=sys.stderr,
    )
    results = {norm: _bench_norm(model, x, y, norm, args.steps, args.repeats) for norm in norms}
    report: dict[str, Any] = {
        "benchmark": "attack_speed",
        "command": " ".join(["python", *sys.argv]),
        "config": {
            "repeats": args.repeats,
            "batch": int(x.shape[0]),
            "steps": args.steps,
            "restarts": 1,
            "random_start": True,
            "norms": {n: NORMS[n] for n in norms},
            "statistic": "median of the repeats, after a warm-up; repeats interleaved",
        },
        "environment": _environment(),
        "load_average": {"before": load_before, "after": _loadavg()},
        "model": model_info,
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    env = report["environment"]
    print(
        f"\ntorch {env['torch']}, {env['torch_threads']} threads, {env['cpu_model']}; "
        f"batch {x.shape[0]}, k={args.steps}, median of {args.repeats}; "
        f"load average before/after {load_before} / {report['load_average']['after']}\n"
    )
    print(_markdown(report))
    cores = os.cpu_count() or 1
    busy = [n for n, r in results.items() if r["floor_spread"] > 1.15]
    load = report["load_average"]["after"]
    if busy or (load is not None and load[0] > cores):
        spreads = ", ".join(f"{n} {r['floor_spread']:.2f}" for n, r in results.items())
        print(
            f"\nWARNING: the machine was busy (load {load}, {cores} CPUs; floor max/min "
            f"{spreads}): wall-time ratios are unreliable; prefer the CPU-time ratios "
            "with --threads 1."
        )
    print(f"\nwrote {args.out} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
