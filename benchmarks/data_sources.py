"""Bring-your-own data: how fast the folder and Parquet sources feed the suite compared with the
same data already in memory, and the peak memory of evaluating 100 000 images from an array
source.

Run from the repository root::

    python benchmarks/data_sources.py [--threads 2] [--big 100000] [--out benchmarks/results/data_sources.json]

* **Throughput.** The embedded MNIST subset (5 000 images) is written as an image folder
  (``robustops.data.export``). The breast cancer table is written as Parquet, tiled 100× to
  56 900 rows so that reading it takes measurable time. For each source, end to end (load,
  fingerprint, split, then the suite on the whole test split with FGSM) is compared with the
  suite alone on the same tensors in memory: ``ratio = t_suite / (t_load + t_suite)``, the
  share of the in-memory throughput kept. Each timing is the median of 3.
* **Memory.** ``--big`` random images ``(1, 28, 28)`` in a ``.npy`` pair (an ``arrays``
  source). A child process loads them through the spec's loader and evaluates all of them
  (FGSM, a narrow reference CNN, batch 500). Its peak RSS comes from ``getrusage`` and is compared
  with 2 GiB.
"""

from __future__ import annotations

import argparse
import json
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
from robustops.data import load_breast_cancer, load_mnist_subset
from robustops.data.export import write_breast_cancer_parquet, write_mnist_folder
from robustops.data.loaders import load_source
from robustops.data.sources import ArraysSource, ImageFolderSource, ParquetSource
from robustops.evaluation import SuiteOptions, SuiteThreat, run_suite
from robustops.models import mlp, small_cnn
from robustops.threats import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
THREAT = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
OPTS = SuiteOptions(latency_calls=0, calibration=False, n_examples=0, batch_size=500)


def _suite_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    run_suite(model, x, y, [SuiteThreat(THREAT, [build_attack("fgsm", THREAT)])], OPTS)
    return time.perf_counter() - t0


def _compare(name: str, load: Any, model: torch.nn.Module, repeats: int = 3) -> dict[str, Any]:
    """Median times of ``load()`` and of the suite on its test split, and the kept share."""
    loads, suites = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = load()
        loads.append(time.perf_counter() - t0)
        suites.append(_suite_s(model, data.x_test, data.y_test))
    t_load, t_suite = statistics.median(loads), statistics.median(suites)
    return {
        "source": name,
        "n_test": int(data.x_test.shape[0]),
        "n_total": int(data.x_train.shape[0] + data.x_test.shape[0]),
        "load_s": t_load,
        "suite_s": t_suite,
        "ratio": t_suite / (t_load + t_suite),
    }


def throughput(tmp: Path) -> list[dict[str, Any]]:
    folder = write_mnist_folder(tmp / "mnist")
    cnn = small_cnn(seed=0).eval()
    images = ImageFolderSource(kind="image-folder", path=folder, size=(28, 28))
    rows = [_compare("image-folder (5 000 PNG)", lambda: load_source(images, name="f"), cnn)]
    mem = load_mnist_subset()
    rows.append(
        {"source": "in memory (MNIST subset)", "suite_s": _suite_s(cnn, mem.x_test, mem.y_test)}
    )
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
    rows.append(_compare("parquet (56 900 rows)", lambda: load_source(table, name="p"), net.eval()))
    return rows


def _child(x_path: str, y_path: str) -> None:
    """Load the arrays through the spec's loader, evaluate every image, print the peak RSS."""
    src = ArraysSource(kind="arrays", x=Path(x_path), y=Path(y_path))
    data = load_source(src, name="big", test_fraction=0.5)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    seconds = _suite_s(small_cnn(width=8, hidden=32, seed=0).eval(), x, y)
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
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_sources.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = throughput(Path(tmp))
        mem = memory(Path(tmp), args.big)
    for r in rows:
        print(r)
    print(mem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"throughput": rows, "memory": mem, "environment": environment(), "args": vars(args)},
            indent=2,
            default=str,
        )
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
