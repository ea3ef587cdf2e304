"""Robust accuracy of the standard and PGD-AT MNIST models under the threat kinds beyond norm
balls: a 6×6 patch (the occlusion sweep beside the adversarial patch), rotation ≤ 30° with
translation ≤ 3 px (grid search and the first-order attack), and the seven common corruptions
at severities 1–5.

Run from the repository root::

    python benchmarks/threat_kinds.py [--n-eval 500] [--retrain] [--threads 2]
                                      [--out benchmarks/results/threat_kinds.json]

Each model is trained with its shipped recipe (``configs/mnist_{standard,pgdat}.yaml``; the
weights under ``artifacts/`` are reused when present unless ``--retrain``), then evaluated by
the suite on the first ``--n-eval`` test samples, seed 0:

* ``patch-6``: each attack alone on every correct sample (occlusion: grey and black squares at
  every position; patch: the white-box adversarial patch), then both in the suite's order for
  the worst case;
* ``spatial-30-3``: spatial-grid (31 × 5 × 5) and spatial-pgd alone, then both (worst case);
* ``corruption-s``, s = 1..5: the seven corruptions, each on every sample (accuracy under that
  corruption: a sample counts when it is classified correctly both clean and corrupted), the
  threat's robust accuracy being the worst case over the seven.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import model_benchmark_main
from robustops.attacks import build_attack
from robustops.config import load_spec
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.format import percent
from robustops.models import build_model
from robustops.runner import load_spec_dataset, train_spec
from robustops.threats import CORRUPTION_SEVERITIES, ThreatModel

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"standard": "mnist_standard.yaml", "pgd-at": "mnist_pgdat.yaml"}
CORRUPTIONS = ("gaussian-noise", "shot-noise", "blur", "jpeg", "brightness", "contrast", "elastic")
PATCH = ThreatModel(name="patch-6", norm="patch", epsilon=6)
SPATIAL = ThreatModel(name="spatial-30-3", norm="spatial", epsilon=30, translation=3)


def _threats() -> list[SuiteThreat]:
    """Each attack alone (``<threat>/<attack>``), the worst case of each threat, the corruptions."""
    out = []
    for threat, names in (
        (PATCH, ("occlusion", "patch")),
        (SPATIAL, ("spatial-grid", "spatial-pgd")),
    ):
        for name in names:
            alone = threat.model_copy(update={"name": f"{threat.name}/{name}"})
            out.append(SuiteThreat(alone, [build_attack(name, alone)]))
        out.append(SuiteThreat(threat, [build_attack(n, threat) for n in names]))
    for s in range(1, CORRUPTION_SEVERITIES + 1):
        t = ThreatModel(name=f"corruption-{s}", norm="corruption", epsilon=s)
        out.append(SuiteThreat(t, [build_attack(n, t) for n in CORRUPTIONS]))
    return out


def run(name: str, n_eval: int, retrain: bool) -> dict[str, Any]:
    spec = load_spec(ROOT / "configs" / CONFIGS[name])
    assert spec.train is not None and spec.model.weights is not None
    if retrain or not spec.model.weights.is_file():
        train_spec(spec)
    data = load_spec_dataset(spec)
    model = build_model(spec.model.factory, spec.model.kwargs, spec.model.weights, device="cpu")
    t0 = time.perf_counter()
    result = run_suite(
        model.eval(),
        data.x_test[:n_eval],
        data.y_test[:n_eval],
        _threats(),
        SuiteOptions(latency_calls=0, calibration=False, n_examples=0),
    )
    rows = []
    for t in result.threats:
        for a in t.attacks:
            rows.append(
                {
                    "threat": t.name,
                    "attack": a.name,
                    "n_attacked": a.n_attacked,
                    "n_broken": a.n_broken,
                    "mean_queries": a.mean_queries,
                    "wall_time_s": a.wall_time_s,
                }
            )
    return {
        "model": name,
        "weights": str(spec.model.weights),
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": {t.name: t.robust_accuracy for t in result.threats},
        # corruptions: accuracy under each one alone (every sample attacked by each)
        "corruption_accuracy": {
            f"{a.name}/{t.threat.epsilon:g}": (
                result.clean_accuracy * result.n_samples - a.n_broken
            )
            / result.n_samples
            for t in result.threats
            if t.independent
            for a in t.attacks
        },
        "attacks": rows,
        "eval_s": time.perf_counter() - t0,
    }


def _print_table(results: list[dict[str, Any]]) -> None:
    names = [r["model"] for r in results]
    print("| threat | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print("| clean | " + " | ".join(percent(r["clean_accuracy"]) for r in results) + " |")
    for key in results[0]["robust_accuracy"]:
        cells = [percent(r["robust_accuracy"][key]) for r in results]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print()
    print("| corruption | severity | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key in results[0]["corruption_accuracy"]:
        corruption, severity = key.split("/")
        cells = [percent(r["corruption_accuracy"][key]) for r in results]
        print(f"| {corruption} | {severity} | " + " | ".join(cells) + " |")


def main() -> None:
    model_benchmark_main(
        __doc__ or "", "benchmarks/results/threat_kinds.json", CONFIGS, run, _print_table
    )


if __name__ == "__main__":
    main()
