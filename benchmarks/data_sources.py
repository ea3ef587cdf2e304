"""Bring-your-own data: how fast the folder and Parquet sources feed the suite compared with the
same data already in memory (first run and cached run; against FGSM alone and against each
example spec's own suite), and the peak memory of evaluating 100 000 images from an array
source.

Run from the repository root::

    python benchmarks/data_sources.py [--threads 2] [--repeats 7] [--spec-repeats 5] [--big 100000] [--out benchmarks/results/data_sources.json]

* **Throughput.** The embedded MNIST subset (5 000 images) is written as an image folder
  (``robustops.data.export``). The breast cancer table is written as Parquet, tiled 100× to
  56 900 rows so that reading it takes measurable time. Each repeat runs, back to back:
  the suite on the tensors already in memory, then for each source and each way of loading
  it, ``load_source`` followed by the same suite on what it returned. The ways of loading:
  ``off`` (no cache: read, fingerprint, decode, split), ``first run`` (an empty cache folder:
  the same plus writing the entry) and ``cached`` (the entry written by an earlier run: read
  and fingerprint the files, map the entry, split). Every way must return the reference's
  fingerprint and test tensors, and the suite the reference's figures (checked each repeat).
  ``ratio = t_suite / (t_load + t_suite)``, the share of the in-memory throughput kept end to
  end (the suite after the load runs on tensors in memory), is taken per repeat and the
  median over repeats reported, with the median times. The machine is shared, so the same
  ratio is also given against the in-memory run of that repeat
  (``ratio_vs_in_memory_run = t_in_memory / (t_load + t_suite)``, noisier: two suite runs)
  and on CPU time (``ratio_cpu``, the least sensitive to the neighbours' load). Two suites:

  - ``fgsm`` (``--repeats``): FGSM on the whole test split of an untrained model, a
    deliberately small suite (the strict test of the loaders);
  - ``spec`` (``--spec-repeats``): the suite ``robustops evaluate`` runs for
    ``configs/mnist_folder.yaml`` and ``configs/breast_cancer_parquet.yaml`` (their threats,
    ``n_samples``, batch size, calibration and temperature fit as configured:
    ``robustops.runner.evaluate_loaded``) on the same folder and table, with the model the
    spec's ``train`` section trains (the table's on the untiled 569 rows), loaded the way
    ``robustops evaluate`` loads it (``load_for_evaluation``). The loads are
    ``load_source`` with the spec's ``data`` settings, as ``load_spec_dataset`` calls it.
* **Memory.** ``--big`` random images ``(1, 28, 28)`` in a ``.npy`` pair (an ``arrays``
  source). A child process loads them through the spec's loader and evaluates all of them
  (FGSM, a narrow reference CNN, batch 500, ``--threads`` torch threads). Its peak RSS comes
  from ``getrusage`` and is compared with 2 GiB.

The data cache of the spec runs (training, ``load_for_evaluation``) goes to a temporary folder
(``ROBUSTOPS_DATA_CACHE_DIR``), never the user's.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from common import ROOT, write_results
from robustops.attacks import build_attack
from robustops.config import PipelineSpec, load_spec
from robustops.data import Dataset, load_breast_cancer
from robustops.data.export import write_breast_cancer_parquet, write_mnist_folder
from robustops.data.loaders import load_source
from robustops.data.sources import ArraysSource, ImageFolderSource, ParquetSource
from robustops.evaluation import SuiteOptions, SuiteResult, SuiteThreat, run_suite
from robustops.models import mlp, small_cnn
from robustops.runner import evaluate_loaded, load_for_evaluation, train_spec
from robustops.threats import ThreatModel

THREAT = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
OPTS = SuiteOptions(latency_calls=0, calibration=False, n_examples=0, batch_size=500)


def _timed(f: Callable[[], Any]) -> tuple[Any, float, float]:
    """``f()``, its wall and its CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _figures(result: SuiteResult) -> tuple[Any, ...]:
    """What a suite found, per sample (the check that every way of loading gives the same)."""
    return (result.clean_accuracy, *(tuple(t.robust) for t in result.threats))


def _fgsm(model: torch.nn.Module) -> Suite:
    """The small suite: FGSM on all of the test split."""

    def run(data: Dataset) -> tuple[Any, ...]:
        threats = [SuiteThreat(THREAT, [build_attack("fgsm", THREAT)])]
        return _figures(run_suite(model, data.x_test, data.y_test, threats, OPTS))

    return run


def _suite_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Wall and CPU seconds of FGSM on all of ``x`` (the memory child)."""
    _, wall, cpu = _timed(
        lambda: run_suite(model, x, y, [SuiteThreat(THREAT, [build_attack("fgsm", THREAT)])], OPTS)
    )
    return wall, cpu


WAYS = {"off": "off", "first run": "miss", "cached": "hit"}
"""Ways of loading, and the cache status each must report."""

Suite = Callable[[Dataset], tuple[Any, ...]]
Loader = Callable[[Any, dict[str, Any] | None], Dataset]


def _rows(
    name: str, suite_name: str, load: Loader, suite: Suite, tmp: Path, repeats: int
) -> list[dict[str, Any]]:
    """Per way of loading: median load and suite times, the median per-repeat ratios and every
    repeat's figures."""
    tag = f"{suite_name}-{name.split()[0]}"
    warm = tmp / f"cache-{tag}"
    ref = load(warm, None)  # writes the entry the cached runs use
    samples: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for r in range(repeats):
        want, mem, _ = _timed(lambda: suite(ref))
        for way, status in WAYS.items():
            cache: Any = {"off": False, "first run": tmp / f"cold-{tag}-{r}", "cached": warm}[way]
            report: dict[str, Any] = {}
            data, load_s, load_cpu = _timed(lambda cache=cache, report=report: load(cache, report))
            if report["cache"] != status or data.fingerprint != ref.fingerprint:
                raise SystemExit(f"{name} {way}: cache {report['cache']}, expected {status}")
            if not torch.equal(data.x_test, ref.x_test) or not torch.equal(data.y_test, ref.y_test):
                raise SystemExit(f"{name} {way}: the tensors differ from the reference load")
            got, suite_s, suite_cpu = _timed(lambda data=data: suite(data))
            if got != want:
                raise SystemExit(f"{name} {way}: the suite's figures differ from in memory")
            samples[way].append(
                {
                    "load_s": load_s,
                    "suite_s": suite_s,
                    "in_memory_s": mem,
                    "ratio": suite_s / (load_s + suite_s),
                    "ratio_vs_in_memory_run": mem / (load_s + suite_s),
                    "ratio_cpu": suite_cpu / (load_cpu + suite_cpu),
                    "load_cpu_s": load_cpu,
                    "suite_cpu_s": suite_cpu,
                }
            )
        print(f"  {suite_name} {name}: repeat {r + 1}/{repeats} done", flush=True)
    rows = []
    for way, got_samples in samples.items():
        row: dict[str, Any] = {
            "suite": suite_name,
            "source": name,
            "load": way,
            "n_test": int(ref.x_test.shape[0]),
            "n_total": int(ref.x_train.shape[0] + ref.x_test.shape[0]),
        }
        for k in got_samples[0]:
            row[k] = statistics.median(g[k] for g in got_samples)
        row["ratios"] = [g["ratio"] for g in got_samples]
        row["repeats"] = got_samples
        rows.append(row)
    return rows


def _sources(tmp: Path) -> dict[str, tuple[Any, Path]]:
    """The two sources (and the files behind them): the MNIST folder and the tiled table."""
    import pandas as pd

    folder = write_mnist_folder(tmp / "mnist")
    one = pd.read_parquet(write_breast_cancer_parquet(tmp / "bc.parquet"))
    big = tmp / "bc100.parquet"
    pd.concat([one] * 100, ignore_index=True).to_parquet(big)
    images = ImageFolderSource(kind="image-folder", path=folder, size=(28, 28))
    table = ParquetSource(
        kind="parquet",
        path=big,
        label="diagnosis",
        schema="breast_cancer",
        classes=["malignant", "benign"],
    )
    return {FOLDER: (images, folder), TABLE: (table, big)}


FOLDER, TABLE = "image-folder (5 000 PNG)", "parquet (56 900 rows)"
SPECS = {FOLDER: "configs/mnist_folder.yaml", TABLE: "configs/breast_cancer_parquet.yaml"}


def throughput(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    """The FGSM-only series."""
    sources = _sources(tmp)
    n_features = load_breast_cancer().x_test.shape[1]
    models = {
        FOLDER: small_cnn(seed=0).eval(),
        TABLE: mlp(input_dim=n_features, hidden=(64,), num_classes=2, seed=0).eval(),
    }
    rows = []
    for name, (source, _) in sources.items():

        def load(cache: Any, report: dict[str, Any] | None, source: Any = source) -> Dataset:
            d = load_source(source, name="bench", cache=cache, report=report)
            assert isinstance(d, Dataset)
            return d

        rows += _rows(name, "fgsm", load, _fgsm(models[name]), tmp, repeats)
    return rows


def _spec_at(config: str, data: Path, weights: Path, tmp: Path) -> PipelineSpec:
    """The example spec with its data at ``data`` and its weights at ``weights``."""
    raw = yaml.safe_load((ROOT / config).read_text())
    raw["data"]["source"]["path"] = str(data)
    raw["model"]["weights"] = str(weights)
    raw["train"]["out"] = str(weights)
    out = tmp / f"{Path(config).stem}-{data.stem}.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(out)


def _spec_rows(
    name: str, data: Path, train_on: Path, tmp: Path, repeats: int
) -> list[dict[str, Any]]:
    """One example spec: train its model, then time its loads and its suite."""
    config = SPECS[name]
    weights = tmp / f"{Path(config).stem}.safetensors"
    _, train_s, _ = _timed(lambda: train_spec(_spec_at(config, train_on, weights, tmp)))
    print(f"  trained {config} in {train_s:.0f} s", flush=True)
    spec = _spec_at(config, data, weights, tmp)
    _, model, device, n = load_for_evaluation(spec)  # the model as robustops evaluate loads it
    d = spec.data
    source = d.source
    assert source is not None

    def load(cache: Any, report: dict[str, Any] | None) -> Dataset:
        out = load_source(  # as load_spec_dataset calls it, with the cache chosen
            source,
            name=d.label,
            test_fraction=d.test_fraction,
            seed=d.split_seed,
            cache=cache,
            report=report,
        )
        assert isinstance(out, Dataset)
        return out

    def suite(loaded: Dataset) -> tuple[Any, ...]:
        return _figures(evaluate_loaded(spec, loaded, model, device, n))

    return [{**r, "spec": config} for r in _rows(name, "spec", load, suite, tmp, repeats)]


def spec_throughput(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    """The series against each example spec's own suite."""
    sources = _sources(tmp / "spec-data")
    return _spec_rows(FOLDER, sources[FOLDER][1], sources[FOLDER][1], tmp, repeats) + _spec_rows(
        TABLE, sources[TABLE][1], tmp / "spec-data" / "bc.parquet", tmp, repeats
    )


def print_table(results: dict[str, Any]) -> None:
    print("suite | source | load | load (s) | suite (s) | ratio (per repeat)")
    for r in results["throughput"]:
        per = ", ".join(f"{v:.3f}" for v in r["ratios"])
        print(
            f"{r['suite']} | {r['source']} | {r['load']} | {r['load_s']:.3f} | "
            f"{r['suite_s']:.3f} | {r['ratio']:.3f} ({per})"
        )
    print("memory:", results["memory"])
    print("load average:", results["load_average"])


def _child(x_path: str, y_path: str) -> None:
    """Load the arrays through the spec's loader, evaluate every image, print the peak RSS."""
    src = ArraysSource(kind="arrays", x=Path(x_path), y=Path(y_path))
    data = load_source(src, name="big", test_fraction=0.5, cache=False)
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    seconds, _ = _suite_s(small_cnn(width=8, hidden=32, seed=0).eval(), x, y)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": int(x.shape[0]), "suite_s": seconds, "peak_rss_mib": peak_kib / 1024}))


def memory(tmp: Path, n: int, threads: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x_path, y_path = tmp / "x.npy", tmp / "y.npy"
    xs = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(n, 1, 28, 28))
    for s in range(0, n, 10_000):  # written in chunks: the parent never holds them all either
        xs[s : s + 10_000] = rng.random((min(10_000, n - s), 1, 28, 28), dtype=np.float32)
    xs.flush()
    del xs
    np.save(y_path, np.arange(n, dtype=np.int64) % 10)
    out = subprocess.run(
        [sys.executable, __file__, "--threads", str(threads), "--child", str(x_path), str(y_path)],
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
    ap.add_argument("--repeats", type=int, default=7, help="repeats of the FGSM-only series")
    ap.add_argument(
        "--spec-repeats", type=int, default=5, help="repeats of the specs' suites (0: skip)"
    )
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_sources.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ROBUSTOPS_DATA_CACHE_DIR"] = str(Path(tmp) / "env-cache")
        load_before = os.getloadavg()
        rows = throughput(Path(tmp), args.repeats)
        load_mid = os.getloadavg()
        if args.spec_repeats:
            rows += spec_throughput(Path(tmp), args.spec_repeats)
        load_after = os.getloadavg()
        mem = memory(Path(tmp), args.big, args.threads)
    results = {
        "throughput": rows,
        "memory": mem,
        "load_average": {"before": load_before, "after_fgsm": load_mid, "after": load_after},
    }
    write_results(args, results, print_table)


if __name__ == "__main__":
    main()
