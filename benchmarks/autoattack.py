"""The default MNIST suite against torchattacks' AutoAttack (standard), on the shipped models.

For each shipped model (standard, PGD-AT, TRADES; train them first with ``robustops train
--spec configs/mnist_<name>.yaml``) and each threat of the default MNIST spec asked for, on the
samples the suite evaluates (the first ``n`` test samples of the model spec's split, as
``robustops evaluate`` picks them):

* ``suite``: :func:`robustops.evaluation.run_suite` with that threat's attack list from
  ``configs/mnist.yaml`` (built by the spec, seeded as the spec seeds it); calibration and the
  latency probe off, so the timing covers the clean pass and the attacks;
* ``autoattack``: ``torchattacks.AutoAttack(model, norm, eps, version="standard",
  n_classes=10, seed=0)`` in the same process, in batches of the spec's batch size; a sample is
  robust when it is classified correctly and the model still labels AutoAttack's output
  correctly (the output is checked to lie in the epsilon ball and the bounds).

Reported per (model, threat): clean accuracy, both robust accuracies, per-sample agreement
(samples only AutoAttack breaks, samples only the suite breaks), wall and process CPU time of
each, the ratio suite time / AutoAttack time, the load average before and after. One run each
(no repeats: AutoAttack takes minutes on the robust models).

    python benchmarks/autoattack.py                       # L∞ ε = 0.3, n = 500
    python benchmarks/autoattack.py --threats linf-0.3,l2-2.0 --n-samples 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import environment, file_sha256
from robustops.attacks import perturbation_norm
from robustops.config import PipelineSpec, load_spec
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import build_model
from robustops.runner import load_spec_dataset
from robustops.threats import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
SUITE_SPEC = ROOT / "configs" / "mnist.yaml"
MODELS = {
    "standard": ROOT / "configs" / "mnist_standard.yaml",
    "pgd-at": ROOT / "configs" / "mnist_pgdat.yaml",
    "trades": ROOT / "configs" / "mnist_trades.yaml",
}
AA_NORM = {"linf": "Linf", "l2": "L2"}
# AutoAttack's output may sit a rounding error outside the ball (torchattacks clamps x ± eps in
# float32); anything beyond this is reported as a violation and not counted as a break.
BALL_SLACK = 1e-5


@dataclass
class Timed:
    """Wall-clock and process CPU seconds of one call."""

    wall_s: float
    cpu_s: float


def _timed(fn: Callable[[], Any]) -> tuple[Any, Timed]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, Timed(time.perf_counter() - w, time.process_time() - c)


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _samples(spec: PipelineSpec, n_samples: int | None) -> tuple[Tensor, Tensor]:
    """The inputs ``(n, 1, 28, 28)`` and labels ``(n,)`` the suite evaluates for ``spec``: the
    first ``n`` of the spec's test split (``evaluation.n_samples`` unless overridden)."""
    assert spec.evaluation is not None
    data = load_spec_dataset(spec)
    x, y = data.x_test, data.y_test  # type: ignore[union-attr]
    n = n_samples if n_samples is not None else spec.evaluation.n_samples
    n = x.shape[0] if n is None else min(n, x.shape[0])
    return x[:n], y[:n]


def _suite(
    model: nn.Module, x: Tensor, y: Tensor, st: SuiteThreat, batch_size: int, seed: int
) -> tuple[Tensor, dict[str, Any], Timed]:
    """Per-sample robust flags ``(n,)`` of the suite, its figures, and its time."""
    result, clock = _timed(
        lambda: run_suite(
            model,
            x,
            y,
            [st],
            SuiteOptions(
                batch_size=batch_size, seed=seed, device="cpu", calibration=False, latency_calls=0
            ),
        )
    )
    tr = result.threats[0]
    figures = {
        "attacks": [
            {
                "name": a.name,
                "params": a.params,
                "n_attacked": a.n_attacked,
                "n_broken": a.n_broken,
                "wall_time_s": a.wall_time_s,
            }
            for a in tr.attacks
        ],
        "threat_wall_time_s": tr.wall_time_s,
        "total_queries": tr.total_queries,
    }
    return torch.tensor(tr.robust), figures, clock


def _autoattack(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, batch_size: int, seed: int
) -> tuple[Tensor, Tensor, dict[str, Any], Timed]:
    """Per-sample clean-correct and robust flags ``(n,)`` under torchattacks' AutoAttack."""
    import torchattacks

    attack = torchattacks.AutoAttack(
        model,
        norm=AA_NORM[threat.norm],
        eps=threat.epsilon,
        version="standard",
        n_classes=10,
        seed=seed,
    )

    def run() -> Tensor:
        with torch.random.fork_rng(devices=[]):  # torchattacks re-seeds the global generator
            return torch.cat(
                [
                    attack(x[i : i + batch_size], y[i : i + batch_size])
                    for i in range(0, len(x), batch_size)
                ]
            )

    adv, clock = _timed(run)
    adv = adv.detach()
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
        adv_pred = model(adv).argmax(1)
    size = perturbation_norm(adv - x, threat.norm)
    low, high = threat.bounds
    inside = (size <= threat.epsilon + BALL_SLACK) & (adv.flatten(1).amin(1) >= low)
    inside &= adv.flatten(1).amax(1) <= high
    correct = clean_pred == y
    robust = correct & ((adv_pred == y) | ~inside)
    figures = {
        "max_perturbation": float(size.max()),
        "outside_ball": int((~inside).sum()),
    }
    return correct, robust, figures, clock


def run(
    name: str, spec_path: Path, threats: list[SuiteThreat], args: argparse.Namespace, seed: int
) -> list[dict[str, Any]]:
    spec = load_spec(spec_path)
    assert spec.evaluation is not None and spec.model.weights is not None
    if not spec.model.weights.is_file():
        sys.exit(f"{spec.model.weights} missing: run robustops train --spec {spec_path}")
    model = build_model(spec.model.factory, spec.model.kwargs, spec.model.weights, device="cpu")
    model.eval()
    x, y = _samples(spec, args.n_samples)
    batch = spec.evaluation.batch_size
    rows = []
    for st in threats:
        load_before = _loadavg()
        suite_robust, suite_fig, suite_t = _suite(model, x, y, st, batch, seed)
        correct, aa_robust, aa_fig, aa_t = _autoattack(model, x, y, st.threat, batch, args.aa_seed)
        n = len(y)
        row = {
            "model": name,
            "spec": str(spec_path.relative_to(ROOT)),
            "weights_sha256": file_sha256(spec.model.weights),
            "threat": st.threat.name,
            "n_samples": n,
            "clean_accuracy": float(correct.float().mean()),
            "suite_robust_accuracy": float(suite_robust.float().mean()),
            "aa_robust_accuracy": float(aa_robust.float().mean()),
            "difference_points": 100 * float((suite_robust.float() - aa_robust.float()).mean()),
            "only_aa_breaks": int((suite_robust & ~aa_robust).sum()),
            "only_suite_breaks": int((aa_robust & ~suite_robust).sum()),
            "only_aa_breaks_indices": (suite_robust & ~aa_robust).nonzero().squeeze(1).tolist(),
            "suite": {"wall_s": suite_t.wall_s, "cpu_s": suite_t.cpu_s, **suite_fig},
            "autoattack": {"wall_s": aa_t.wall_s, "cpu_s": aa_t.cpu_s, **aa_fig},
            "ratio_wall": suite_t.wall_s / aa_t.wall_s,
            "ratio_cpu": suite_t.cpu_s / aa_t.cpu_s,
            "load_average": {"before": load_before, "after": _loadavg()},
        }
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['threat']} | {r['clean_accuracy']:.1%} | "
        f"{r['suite_robust_accuracy']:.1%} | {r['aa_robust_accuracy']:.1%} | "
        f"{r['difference_points']:+.1f} | {r['only_aa_breaks']} | {r['only_suite_breaks']} | "
        f"{r['suite']['wall_s']:.1f} | {r['autoattack']['wall_s']:.1f} | {r['ratio_wall']:.2f} |"
    )


HEADER = (
    "| model | threat | clean | suite robust | AA robust | difference (points) | only AA breaks "
    "| only suite breaks | suite wall (s) | AA wall (s) | suite / AA |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    ap.add_argument("--threats", default="linf-0.3", help="threats of configs/mnist.yaml")
    ap.add_argument("--n-samples", type=int, default=None, help="default: each spec's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aa-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/autoattack.json")
    ap.add_argument(
        "--append",
        action="store_true",
        help="add the rows to --out (replacing those of the same model and threat), e.g. to "
        "give each model its own --n-samples",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite_spec = load_spec(SUITE_SPEC)
    wanted = args.threats.split(",")
    threats = [st for st in suite_spec.build_threats() if st.threat.name in wanted]
    missing = set(wanted) - {st.threat.name for st in threats}
    if missing:
        sys.exit(f"no threat {sorted(missing)} in {SUITE_SPEC}")
    started, load_start = time.perf_counter(), _loadavg()
    print(HEADER, flush=True)
    rows = []
    for name in args.models.split(","):
        rows.extend(run(name, MODELS[name], threats, args, suite_spec.seed))
    report = {
        "command": " ".join(["python", "benchmarks/autoattack.py", *(argv or sys.argv[1:])]),
        "suite_spec": str(SUITE_SPEC.relative_to(ROOT)),
        "suite_attacks": {
            st.threat.name: [{"name": a.name, **a.params()} for a in st.attacks] for st in threats
        },
        "torch_threads": torch.get_num_threads(),
        "environment": {**environment(), "torchattacks": metadata.version("torchattacks")},
        "load_average": {"start": load_start, "end": _loadavg()},
        "total_wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        ours = {(r["model"], r["threat"]) for r in rows}
        kept = [r for r in old["rows"] if (r["model"], r["threat"]) not in ours]
        report["rows"] = kept + rows
        report["runs"] = [*old.get("runs", [old["command"]]), report["command"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"total {report['total_wall_s']:.0f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
