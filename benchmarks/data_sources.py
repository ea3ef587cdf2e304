"""Bring-your-own data: how fast the folder and Parquet sources feed the suite compared with the
same data already in memory (first run and cached run), and the peak memory of evaluating
100 000 images from an array source.

Run from the repository root::

    python benchmarks/data_sources.py [--threads 2] [--repeats 7] [--big 100000] [--out benchmarks/results/data_sources.json]

* **Throughput.** The embedded MNIST subset (5 000 images) is written as an image folder
  (``robustops.data.export``). The breast cancer table is written as Parquet, tiled 100× to
  56 900 rows so that reading it takes measurable time. Each repeat runs, back to back:
  the suite (FGSM on the whole test split) on the tensors already in memory, then for each
  source and each way of loading it, ``load_source`` followed by the same suite on what it
  returned. The ways of loading: ``off`` (no cache: read, fingerprint, decode, split),
  ``first run`` (an empty cache folder: the same plus writing the entry) and ``cached`` (the
  entry written by an earlier run: read and fingerprint the files, map the entry, split).
  ``ratio = t_suite / (t_load + t_suite)``, the share of the in-memory throughput kept end to
  end (the suite after the load runs on tensors in memory), is taken per repeat and the
  median over repeats reported, with the median times. The machine is shared, so the same
  ratio is also given against the in-memory run of that repeat
  (``ratio_vs_in_memory_run = t_in_memory / (t_load + t_suite)``, noisier: two suite runs)
  and on CPU time (``ratio_cpu``, the least sensitive to the neighbours' load).
* **Memory.** ``--big`` random images ``(1, 28, 28)`` in a ``.npy`` pair (an ``arrays``
  source). A child process loads them through the spec's loader and evaluates all of them
  (FGSM, a narrow reference CNN, batch 500). Its peak RSS comes from ``getrusage`` and is compared
  with 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustops._util import environment
from robustops.attacks import build_attack
from robustops.data import load_breast_cancer
from robustops.data.export import write_breast_cancer_parquet, write_mnist_folder
from robustops.data.loaders import load_source
from robustops.data.sources import ArraysSource, ImageFolderSource, ParquetSource
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import mlp, small_cnn
from robustops.threats import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
THREAT = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
OPTS = SuiteOptions(latency_calls=0, calibration=False, n_examples=0, batch_size=500)


def _suite_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Wall and CPU seconds of the suite (FGSM on all of ``x``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    run_suite(model, x, y, [SuiteThreat(THREAT, [build_attack("fgsm", THREAT)])], OPTS)
    return time.perf_counter() - t0, time.process_time() - c0


WAYS = {"off": "off", "first run": "miss", "cached": "hit"}
"""Ways of loading, and the cache status each must report."""


def _rows(
    name: str, source: Any, model: torch.nn.Module, tmp: Path, repeats: int
) -> list[dict[str, Any]]:
    """Per way of loading: median load and suite times and the median per-repeat ratios."""
    warm = tmp / f"cache-{name}"
    ref = load_source(source, name="ref", cache=warm)  # writes the entry the cached runs use
    samples: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for r in range(repeats):
        mem, _ = _suite_s(model, ref.x_test, ref.y_test)
        for way, want in WAYS.items():
            cache: Any = {"off": False, "first run": tmp / f"cold-{name}-{r}", "cached": warm}[way]
            report: dict[str, Any] = {}
            t0, c0 = time.perf_counter(), time.process_time()
            data = load_source(source, name="bench", cache=cache, report=report)
            load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
            if report["cache"] != want or data.fingerprint != ref.fingerprint:
                raise SystemExit(f"{name} {way}: cache {report['cache']}, expected {want}")
            if not torch.equal(data.x_test, ref.x_test):
                raise SystemExit(f"{name} {way}: the tensors differ from the reference load")
            suite_s, suite_cpu = _suite_s(model, data.x_test, data.y_test)
            samples[way].append(
                {
                    "load_s": load_s,
                    "suite_s": suite_s,
                    "in_memory_s": mem,
                    "ratio": suite_s / (load_s + suite_s),
                    "ratio_vs_in_memory_run": mem / (load_s + suite_s),
                    "ratio_cpu": suite_cpu / (load_cpu + suite_cpu),
                }
            )
    rows = []
    for way, got in samples.items():
        row: dict[str, Any] = {
            "source": name,
            "load": way,
            "n_test": int(ref.x_test.shape[0]),
            "n_total": int(ref.x_train.shape[0] + ref.x_test.shape[0]),
        }
        for k in got[0]:
            row[k] = statistics.median(g[k] for g in got)
        row["ratios"] = [g["ratio"] for g in got]
        rows.append(row)
    return rows


def throughput(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    folder = write_mnist_folder(tmp / "mnist")
    cnn = small_cnn(seed=0).eval()
    images = ImageFolderSource(kind="image-folder", path=folder, size=(28, 28))
    rows = _rows("image-folder (5 000 PNG)", images, cnn, tmp, repeats)
    import pandas as pd

    one = pd.read_parquet(write_breast_cancer_parquet(tmp / "bc.parquet"))
    big = tmp / "bc100.parquet"
    pd.concat([one] * 100, ignore_index=True).to_parquet(big)
    table = ParquetSource(
        kind="parquet",
        path=big,
        label="diagnosis",
        schema="breast_cancer",
        classes=("malignant", "benign"),
    )
    net = mlp(input_dim=load_breast_cancer().x_test.shape[1], hidden=(64,), num_classes=2, seed=0)
    rows += _rows("parquet (56 900 rows)", table, net.eval(), tmp, repeats)
    return rows


def _child(x_path: str, y_path: str) -> None:
    """Load the arrays through the spec's loader, evaluate every image, print the peak RSS."""
    src = ArraysSource(kind="arrays", x=Path(x_path), y=Path(y_path))
    data = load_source(src, name="big", test_fraction=0.5, cache=False)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    seconds, _ = _suite_s(small_cnn(width=8, hidden=32, seed=0).eval(), x, y)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": int(x.shape[0]), "suite_s": seconds, "peak_rss_mib": peak_kib / 1024}))


def memory(tmp: Path, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x_path, y_path = tmp / "x.npy", tmp / "y.npy"
    xs = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(n, 1, 28, 28))
    for s in range(0, n, 10_000):  # written in chunks: the parent never holds them all either
        xs[s : s + 10_000] = rng.random((min(10_000, n - s), 1, 28, 28), dtype=np.float32)
    xs.flush()
    del xs
    np.save(y_path, np.arange(n, dtype=np.int64) % 10)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(x_path), str(y_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["limit_mib"] = 2048
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_sources.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()
        rows = throughput(Path(tmp), args.repeats)
        load_after = os.getloadavg()
        mem = memory(Path(tmp), args.big)
    for r in rows:
        print({k: v for k, v in r.items() if k != "ratios"})
    print(mem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "throughput": rows,
                "memory": mem,
                "load_average": {"before": load_before, "after": load_after},
                "environment": environment(),
                "args": vars(args),
            },
            indent=2,
            default=str,
        )
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
