"""Scaling of the sharded suite: wall time on the MNIST spec with 1 and 2 local workers, the
per-sample identity of the two runs checked in the same run, and a projection to 8 and 64
workers from the measured per-shard cost and merge cost.

    PYTHONPATH=src python benchmarks/sharding.py --spec configs/mnist.yaml --tier quick \\
        --n-samples 200 --out benchmarks/results/sharding.json

Efficiency is ``t1 / (2 · t2)``, with the single-process run on one torch thread (one core) and
each of the two workers on one thread: the speed-up from one core to two. (The single process
on two threads already uses both cores through intra-op parallelism, which no sharding on the
same two cores can beat; ``--single-threads 2`` measures that instead.) The projection assumes perfectly balanced shards on as many
cores as workers: ``t_k = startup + (t1 - startup_1) / k + merge(k)``, with ``startup`` the
measured cost of spawning a worker and rebuilding the model (the slowest shard's wall time minus
its share of the attack time is not separable here, so it is bounded by the 2-worker overhead
``t2 - t1 / 2``) and ``merge(k)`` the measured merge time (linear in the samples, not in k).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from robustops.config import load_spec
from robustops.evaluation import SuiteResult
from robustops.evaluation.sharding import ScaleOut
from robustops.runner import evaluate_spec


def _same_per_sample(a: SuiteResult, b: SuiteResult) -> bool:
    return a.samples == b.samples and all(
        (x.robust, x.broken_by, x.queries, x.targets)
        == (y.robust, y.broken_by, y.queries, y.targets)
        for x, y in zip(a.threats, b.threats, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="configs/mnist.yaml")
    parser.add_argument("--tier", default="quick")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/sharding.json")
    parser.add_argument("--single-threads", type=int, default=1)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    if args.tier:
        spec = spec.with_tier(args.tier)
    assert spec.evaluation is not None
    spec = spec.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"n_samples": args.n_samples})}
    )
    load = os.getloadavg()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.single_threads)
    t = time.perf_counter()
    one = evaluate_spec(spec)
    t_one_total = time.perf_counter() - t
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as shards:
        t = time.perf_counter()
        two = evaluate_spec(spec, scale=ScaleOut(workers=2, shard_dir=shards))
        t_two_total = time.perf_counter() - t
    assert two.topology is not None
    t1, t2 = one.wall_time_s, two.wall_time_s
    shard_s = [s.wall_time_s for s in two.topology.shards]
    merge_s = two.topology.merge_time_s
    overhead = max(t2 - max(shard_s) - merge_s, 0.0)  # spawn, model rebuild, transfer
    projection = {str(k): round(overhead + t1 / k + merge_s, 3) for k in (8, 64)}
    report = {
        "spec": args.spec,
        "tier": args.tier,
        "n_samples": one.n_samples,
        "cpu_count": os.cpu_count(),
        "single_process_threads": args.single_threads,
        "load_average_before": [round(x, 2) for x in load],
        "t1_suite_s": round(t1, 3),
        "t2_suite_s": round(t2, 3),
        "efficiency": round(t1 / (2 * t2), 3),
        "t1_total_s": round(t_one_total, 3),
        "t2_total_s": round(t_two_total, 3),
        "shard_wall_s": [round(s, 3) for s in shard_s],
        "merge_s": round(merge_s, 4),
        "worker_overhead_s": round(overhead, 3),
        "projected_suite_s": projection,
        "projected_efficiency": {k: round(t1 / (int(k) * v), 3) for k, v in projection.items()},
        "identical_per_sample": _same_per_sample(one, two),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
