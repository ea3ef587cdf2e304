"""Calibration clean vs under attack, before and after temperature scaling, for the shipped
standard, PGD-AT and TRADES recipes.

Run from the repository root::

    python benchmarks/calibration.py [--n-eval 500] [--retrain] [--threads 2]
                                     [--out benchmarks/results/calibration.json]

For each of ``configs/mnist_{standard,pgdat,trades}.yaml`` the model is trained with the
shipped recipe (``robustops train``; the weights under ``artifacts/`` are reused when present
unless ``--retrain``), then:

* temperatures are fitted on the test samples *after* the ``--n-eval`` evaluated ones (never
  on evaluated samples), once on clean inputs only and once on clean + adversarial inputs
  (PGD-10 at the evaluated budget, the spec default);
* the suite attacks the first ``--n-eval`` test samples under L∞ ε=0.3 with PGD-40 then
  APGD-CE-50 on the samples still robust, and reports ECE (15 equal-width bins), adaptive ECE,
  Brier and NLL on clean inputs and on each sample's worst-case attacked input, at T=1 and at
  each fitted temperature.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import model_benchmark_main
from robustops.attacks import build_attack
from robustops.config import load_spec
from robustops.defenses import fit_temperature_on
from robustops.evaluation import SuiteThreat, run_suite
from robustops.evaluation.metrics import CalibrationMetrics
from robustops.models import build_model
from robustops.runner import load_spec_dataset, train_spec
from robustops.threats import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "standard": "mnist_standard.yaml",
    "pgd-at": "mnist_pgdat.yaml",
    "trades": "mnist_trades.yaml",
}
EPS = 0.3


def _row(m: CalibrationMetrics) -> dict[str, float]:
    return {
        "accuracy": m.accuracy,
        "confidence": m.mean_confidence,
        "ece": m.ece,
        "adaptive_ece": m.adaptive_ece,
        "brier": m.brier,
        "nll": m.nll,
    }


def run(name: str, n_eval: int, retrain: bool) -> dict[str, Any]:
    spec = load_spec(ROOT / "configs" / CONFIGS[name])
    assert spec.train is not None and spec.model.weights is not None
    t0 = time.perf_counter()
    if retrain or not spec.model.weights.is_file():
        train_spec(spec)
    train_s = time.perf_counter() - t0
    data = load_spec_dataset(spec)
    model = build_model(spec.model.factory, spec.model.kwargs, spec.model.weights, device="cpu")
    model.eval()
    threat = ThreatModel(name=f"linf-{EPS}", norm="linf", epsilon=EPS)
    held_x, held_y = data.x_test[n_eval:], data.y_test[n_eval:]
    fits = {
        "clean": fit_temperature_on(model, held_x, held_y, fit_on="clean"),
        "mix": fit_temperature_on(
            model, held_x, held_y, fit_on="mix", attack=build_attack("pgd", threat, steps=10)
        ),
    }
    suite = SuiteThreat(
        threat,
        [build_attack("pgd", threat, steps=40), build_attack("apgd-ce", threat, steps=50)],
    )
    rows: dict[str, Any] = {}
    robust = None
    for label, fit in fits.items():
        res = run_suite(model, data.x_test[:n_eval], data.y_test[:n_eval], [suite], temperature=fit)
        cal, t = res.calibration, res.threats[0]
        assert cal is not None and t.calibration is not None
        assert cal.clean_scaled is not None and t.calibration.attacked_scaled is not None
        robust = t.robust_accuracy
        rows.setdefault("T=1", {"clean": _row(cal.clean), "attacked": _row(t.calibration.attacked)})
        rows[f"T fitted on {label}"] = {
            "temperature": fit.temperature,
            "clean": _row(cal.clean_scaled),
            "attacked": _row(t.calibration.attacked_scaled),
        }
    return {
        "model": name,
        "config": f"configs/{CONFIGS[name]}",
        "weights": str(spec.model.weights),
        "train_wall_time_s": train_s,
        "robust_accuracy": robust,
        "n_eval": n_eval,
        "n_held_out": int(held_x.shape[0]),
        "fits": {k: v.model_dump() for k, v in fits.items()},
        "rows": rows,
    }


def _print_table(results: list[dict[str, Any]]) -> None:
    print(
        "| model | robust acc. | temperature | ECE clean | ECE attacked | NLL clean | NLL attacked |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        for label, row in r["rows"].items():
            t = (
                f"{row['temperature']:.2f} ({label.removeprefix('T fitted on ')})"
                if "temperature" in row
                else "1 (none)"
            )
            print(
                f"| {r['model']} | {r['robust_accuracy']:.1%} | {t} | {row['clean']['ece']:.3f} | "
                f"{row['attacked']['ece']:.3f} | {row['clean']['nll']:.3f} | "
                f"{row['attacked']['nll']:.3f} |"
            )


def main() -> None:
    model_benchmark_main(
        __doc__ or "", "benchmarks/results/calibration.json", CONFIGS, run, _print_table
    )


if __name__ == "__main__":
    main()
