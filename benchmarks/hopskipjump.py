"""HopSkipJump side by side with ART's: success at ε, closest adversarial at a query budget, and
wall time, in one process, on the same models, samples and per-sample query budget.

Run from the repository root::

    python benchmarks/hopskipjump.py [--models mlp,cnn] [--norms l2,linf] [--n 50]
                                     [--budget 1000] [--repeats 3] [--threads 1]
                                     [--out benchmarks/results/hopskipjump.json]
    python benchmarks/hopskipjump.py --table-only     # reprint the table of --out

Set-up:

* models, trained here with fixed seeds on the embedded MNIST subset: ``mlp`` (784-128-10, 3
  epochs) and ``cnn`` (``small_cnn(width=16, hidden=64)``, 2 epochs: the attack tests' CNN);
* samples: the first ``--n`` test images the model classifies correctly; untargeted;
* ε: L2 2.0, L∞ 0.1; ``--budget`` queries per sample for both implementations.

ART has no query budget, so its model is wrapped (``Budgeted``): the wrapper counts the rows ART
asks about per sample (ART's clean prediction in ``generate`` is free), answers a batch that
crosses the budget for the rows within it only and then stops ART, and keeps the distance of the
closest adversarial point ART has queried. That distance is ART's figure. It is generous to ART:
its own output is its last iterate, never closer than the closest point it queried. ART runs
sample by sample (its ``generate`` loops over samples anyway), with ``max_iter`` unbounded so
that the budget, not the iteration count, stops it, and its other defaults (100 initial and at
most 10 000 gradient samples, 100 noise draws). Its constants differ from the paper's: theta =
0.01/sqrt(d) (L2) or 0.01/d (L∞), which is our ``gamma = 0.01 d``; ours use the paper's
``gamma = 1``.

Two modes, each timed for the whole batch:

* ``eps``: stop a sample at the first adversarial point within ε (our ``early_stop=True``; ART
  stopped by the wrapper at its first such query). Figure: success rate, mean queries.
* ``minimal``: the whole budget, shrinking the perturbation (our ``early_stop=False`` with ε
  out of reach, so nothing is projected). Figure: median distance of the closest adversarial
  point, over the samples where one was found.

Each method runs ``--repeats`` times, the methods interleaved (round robin, rotating the order)
so that a change in machine load hits both alike; repeat ``r`` uses seed ``r`` (ours: the attack
seed; ART: numpy's global seed for its gradient directions; its noise starts are never seeded).
Medians over the repeats are reported, with the range of the success rates. The ``floor`` is
the forward passes ours made in the same repeat (recorded in an extra, untimed run), replayed
alone: ``ours / floor`` is what the attack costs beyond querying the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robustops._util import environment
from robustops.attacks import HopSkipJump
from robustops.data import load_mnist_subset
from robustops.models import mlp, small_cnn
from robustops.threats import ThreatModel
from robustops.training import StandardConfig, train_standard

ROOT = Path(__file__).resolve().parent.parent
EPS = {"l2": 2.0, "linf": 0.1}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _model(name: str) -> tuple[nn.Module, Tensor, Tensor, float]:
    """The trained model, the test images and labels, and its test accuracy."""
    ds = load_mnist_subset()
    if name == "mlp":
        net: nn.Module = mlp(hidden=(128,), seed=0)
        epochs = 3
    else:
        net = small_cnn(width=16, hidden=64, seed=0)
        epochs = 2
    train_standard(net, ds.x_train, ds.y_train, StandardConfig(epochs=epochs, seed=0))
    net.eval()
    with torch.no_grad():
        ok = net(ds.x_test).argmax(1) == ds.y_test
    return net, ds.x_test[ok], ds.y_test[ok], float(ok.float().mean())


class _Stop(Exception):
    """Raised inside ART's loop when its sample's budget is spent."""


class Budgeted(nn.Module):
    """ART's model for one sample at a time: counts, caps and records its queries (see the
    module's docstring)."""

    def __init__(self, model: nn.Module, budget: int, norm: str, stop_at: float) -> None:
        super().__init__()
        self.model, self.budget, self.norm, self.stop_at = model, budget, norm, stop_at

    def reset(self, x0: Tensor, label: int) -> None:
        self.x0, self.label, self.used, self.free, self.best = x0, label, 0, 1, float("inf")

    def forward(self, batch: Tensor) -> Tensor:
        batch = batch.float()  # ART's initial blend search hands float64 arrays over
        if self.free:
            self.free -= 1
            out: Tensor = self.model(batch)
            return out
        k = min(self.budget - self.used, batch.shape[0])
        if k <= 0:
            raise _Stop
        logits: Tensor = self.model(batch)
        adv = logits[:k].argmax(1) != self.label
        delta = (batch[:k] - self.x0).flatten(1)
        dist = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        if bool(adv.any()):
            self.best = min(self.best, float(dist[adv].min()))
        self.used += k
        if self.best <= self.stop_at or k < batch.shape[0]:
            raise _Stop
        return logits


def run_art(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, budget: int, stop_at: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """ART's HopSkipJump per sample within ``budget``: closest adversarial distance queried
    (inf: none) and queries used, per sample."""
    from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
    from art.estimators.classification import PyTorchClassifier

    budgeted = Budgeted(model, budget, norm, stop_at)
    classifier = PyTorchClassifier(
        budgeted,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = ArtHopSkipJump(
        classifier, norm=2 if norm == "l2" else np.inf, max_iter=10**6, verbose=False
    )
    np.random.seed(seed)
    best, used = [], []
    for i in range(x.shape[0]):
        budgeted.reset(x[i : i + 1], int(y[i]))
        with contextlib.suppress(_Stop):
            attack.generate(x[i : i + 1].numpy(), y=np.array([int(y[i])]))
        best.append(budgeted.best)
        used.append(budgeted.used)
    return np.array(best), np.array(used)


def run_ours(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, budget: int, mode: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ours: the distance of each sample's output if adversarial (inf otherwise), queries."""
    eps = EPS[norm] if mode == "eps" else (1e9 if norm == "l2" else 1.0)
    threat = ThreatModel(
        name="t", norm=norm, epsilon=eps, knowledge="decision-based", query_budget=budget
    )  # type: ignore[arg-type]
    res = HopSkipJump(threat, early_stop=mode == "eps", seed=seed)(model, x, y)
    dist = torch.where(res.success, res.perturbation, torch.full_like(res.perturbation, np.inf))
    return dist.numpy(), res.queries.numpy()


class _Recorder(nn.Module):
    """Keeps every batch the attack sends to ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[Tensor] = []

    def forward(self, batch: Tensor) -> Tensor:
        self.batches.append(batch.clone())
        out: Tensor = self.model(batch)
        return out


def floor_runner(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, budget: int, mode: str, seed: int
) -> Callable[[], None]:
    """The forward passes our attack makes (recorded in an untimed run with the same seed),
    replayed as they were batched: the time no implementation of these queries can beat on this
    model, and what ours spends beyond it is the attack's own overhead."""
    recorder = _Recorder(model)
    run_ours(recorder, x, y, norm, budget, mode, seed)
    batches = recorder.batches

    def run() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    return run


def _figures(dist: np.ndarray, used: np.ndarray, eps: float, mode: str) -> dict[str, float]:
    found = np.isfinite(dist)
    return {
        "success": float((dist <= eps).mean()) if mode == "eps" else float(found.mean()),
        # only in the minimal mode: in the eps mode ours projects a failed sample onto the ball
        "median_distance": float(np.median(dist[found]))
        if mode == "minimal" and found.any()
        else float("nan"),
        "mean_queries": float(used.mean()),
        "max_queries": int(used.max()),
    }


def bench(name: str, norms: list[str], n: int, budget: int, repeats: int) -> list[dict[str, Any]]:
    net, x_all, y_all, acc = _model(name)
    x, y = x_all[:n], y_all[:n]
    rows = []
    for norm in norms:
        for mode in ("eps", "minimal"):
            eps = EPS[norm]
            stop_at = eps if mode == "eps" else -1.0
            methods = {
                "ours": lambda s, norm=norm, mode=mode: run_ours(net, x, y, norm, budget, mode, s),
                "art": lambda s, norm=norm, stop_at=stop_at: run_art(
                    net, x, y, norm, budget, stop_at, s
                ),
            }
            runs: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in methods}
            floor: list[float] = []
            order = [*methods, "floor"]
            for r in range(repeats):
                replay = floor_runner(net, x, y, norm, budget, mode, r)
                for key in order[r % 3 :] + order[: r % 3]:
                    t0 = time.perf_counter()
                    if key == "floor":
                        replay()
                        floor.append(time.perf_counter() - t0)
                        continue
                    dist, used = methods[key](r)
                    wall = time.perf_counter() - t0
                    assert int(used.max()) <= budget, (key, int(used.max()))
                    runs[key].append((wall, _figures(dist, used, eps, mode)))
                del replay
            for key, results in runs.items():
                walls = [w for w, _ in results]
                figs = [f for _, f in results]
                row = {
                    "model": name,
                    "test_accuracy": acc,
                    "norm": norm,
                    "eps": eps,
                    "mode": mode,
                    "method": key,
                    "wall_s_median": statistics.median(walls),
                    "wall_s": walls,
                    "floor_s_median": statistics.median(floor),
                    "floor_s": floor,
                    "success_median": statistics.median(f["success"] for f in figs),
                    "success_range": [
                        min(f["success"] for f in figs),
                        max(f["success"] for f in figs),
                    ],
                    "median_distance": None
                    if mode == "eps"
                    else statistics.median(f["median_distance"] for f in figs),
                    "mean_queries": statistics.median(f["mean_queries"] for f in figs),
                    "max_queries": max(f["max_queries"] for f in figs),
                    "loadavg_after": _loadavg(),
                }
                rows.append(row)
                print(
                    json.dumps({k: v for k, v in row.items() if k not in ("wall_s", "floor_s")}),
                    flush=True,
                )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| model | norm, ε | mode | method | success (range) | median distance | mean queries "
        "| wall s (median) | ART / ours | ours / floor |"
    )
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    walls = {(r["model"], r["norm"], r["mode"], r["method"]): r["wall_s_median"] for r in rows}
    for r in rows:
        lo, hi = r["success_range"]
        speed = overhead = ""
        dist = "—" if r["median_distance"] is None else f"{r['median_distance']:.3f}"
        if r["method"] == "ours":
            art = walls.get((r["model"], r["norm"], r["mode"], "art"))
            speed = f"{art / r['wall_s_median']:.1f}×" if art else ""
            overhead = f"{r['wall_s_median'] / r['floor_s_median']:.2f}"
        print(
            f"| {r['model']} | {r['norm']} {r['eps']:g} | {r['mode']} | {r['method']} "
            f"| {r['success_median']:.2f} ({lo:.2f}–{hi:.2f}) | {dist} "
            f"| {r['mean_queries']:.0f} | {r['wall_s_median']:.1f} | {speed} | {overhead} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--norms", default="l2,linf")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hopskipjump.json")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(args.out.read_text())["results"])
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = _loadavg()
    rows = []
    for name in args.models.split(","):
        rows += bench(name, args.norms.split(","), args.n, args.budget, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "results": rows,
                "environment": environment(),
                "args": vars(args),
                "loadavg_before": load_before,
                "loadavg_after": _loadavg(),
                "total_s": time.perf_counter() - t0,
            },
            indent=2,
            default=str,
        )
    )
    print_table(rows)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
