"""What the guard's detector costs per request, in process, on the MNIST CNN of configs/mnist.yaml:
``GuardDetector.observe`` for one image (the model's forward pass is run before and not counted),
in four set-ups:

* ``fingerprints``: embeddings and shared state off (the guard before them), one process;
* ``embeddings``: + the tapped embedding (projection 3136 → 256), per-key and cross-key scans;
* ``shared-1``: + the SQLite shared state, one process;
* ``shared-2``: the same, two processes on one state file at once (2 workers), each timed.

Every process sends ``--requests`` requests: 40 keys, each a near-duplicate stream of one test
digit (noise σ 0.03), interleaved. Run from the repository root::

    python benchmarks/guard_detection_cost.py [--requests 2000] [--weights PATH]
        [--redis-url redis://127.0.0.1:6379/0 [--only-redis]]   # also the redis backend
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path, weights: Path, detection: dict[str, Any], backend: str) -> Any:
    """The served model and its guard; ``backend`` ``redis://...`` means the redis backend."""
    from robustops.serve import ServeTarget, guard_for, prepare_state, served_model

    spec = yaml.safe_load((ROOT / "configs/mnist.yaml").read_text())
    spec["model"]["weights"] = str(weights.resolve())
    spec["train"]["out"] = str(folder / "unused.safetensors")
    spec["serve"] = {
        "state_dir": str(folder / "state"),
        "keys": str(folder / "keys.db"),
        "state": (
            {"backend": "redis", "redis_url": backend}
            if backend.startswith("redis://")
            else {"backend": backend}
        ),
        "detection": detection,
    }
    path = folder / "spec.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(spec))
    served = served_model(ServeTarget(str(path)))
    prepare_state(served.config, 1)
    return served, guard_for(served)


def timed(folder: Path, weights: Path, detection: dict[str, Any], backend: str, n: int,
          seed: int, barrier: Any = None, out: Any = None) -> dict[str, float]:  # fmt: skip
    from robustops.serving.validation import Batch

    torch.set_num_threads(1)
    served, guard = build(folder, weights, detection, backend)
    det = guard.detector
    rng = np.random.default_rng(seed)
    x = served.data.x_test
    batches = []
    for i in range(n):
        k = i % 40
        img = (x[seed * 40 + k] + 0.03 * torch.from_numpy(rng.standard_normal(x.shape[1:]))).clamp(
            0, 1
        )
        batches.append((f"w{seed}-k{k}", Batch(img[None].float(), img[None].float(), 1)))
    if barrier is not None:
        barrier.wait()
    wall, cpu = [], []
    for key, b in batches:
        served.model.outputs(b.inputs)  # the guard's forward pass (fills the tap)
        t0, c0 = time.perf_counter(), time.thread_time()
        det.observe(key, b, None)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    res = {
        "median_us": statistics.median(wall) * 1e6,
        "p99_us": float(np.percentile(wall, 99)) * 1e6,
        "cpu_median_us": statistics.median(cpu) * 1e6,
        "cpu_p99_us": float(np.percentile(cpu, 99)) * 1e6,
    }
    if out is not None:
        out.put(res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--weights", type=Path, default=ROOT / "artifacts/mnist_small_cnn.safetensors")
    ap.add_argument("--redis-url", default=None, help="also measure the redis backend")
    ap.add_argument("--only-redis", action="store_true", help="skip the other set-ups")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/guard_detection_cost.json"
    )
    args = ap.parse_args()
    results: dict[str, Any] = {}
    setups = [
        ("fingerprints", {"embedding": "off", "shared": False}, "memory"),
        ("embeddings", {}, "memory"),
        ("shared-1", {}, "sqlite"),
    ]
    if args.only_redis:
        setups = []
    if args.redis_url:
        setups.append(("redis-1", {}, args.redis_url))
    for name, detection, backend in setups:
        folder = Path(tempfile.mkdtemp(prefix=f"detcost-{name}-"))
        results[name] = timed(folder, args.weights, detection, backend, args.requests, 0)
        print(name, json.dumps(results[name]), flush=True)
    pairs = [] if args.only_redis else [("shared-2", "sqlite")]
    if args.redis_url:
        pairs.append(("redis-2", args.redis_url))
    for name, backend in pairs:
        folder = Path(tempfile.mkdtemp(prefix=f"detcost-{name}-"))
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(2), ctx.Queue()
        build(folder, args.weights, {}, backend)  # the spec, secret and state, made once
        procs = [
            ctx.Process(
                target=timed,
                args=(folder, args.weights, {}, backend, args.requests, s, barrier, queue),
            )
            for s in (1, 2)
        ]
        for p in procs:
            p.start()
        results[name] = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "args": vars(args)}, indent=2, default=str))


if __name__ == "__main__":
    main()
