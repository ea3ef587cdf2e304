"""Randomized smoothing: certification throughput and certified accuracy on MNIST.

Run from the repository root::

    python benchmarks/certification.py [--threads 1] [--cert-threads 2] [--repeats 5]
                                       [--epochs 12] [--n-cert 500] [--n 10000]
                                       [--out benchmarks/results/certification.json]

Everything happens in one process, on the embedded MNIST subset (4000 training / 1000 test
images) and the reference ``small_cnn`` (``--width``/``--hidden``, 16/64 as in
``configs/mnist_*.yaml``, built from seed 0):

1. **Training.** One model per ``--sigmas`` entry, trained with the recipe objective
   ``gaussian`` (cross-entropy on ``x + sigma * N(0, I)``, Cohen et al. 2019) for ``--epochs``
   epochs (Adam, lr 1e-3, cosine schedule, batch 64) on ``--cert-threads`` threads; weights go to
   ``artifacts/certification/`` (git-ignored).
2. **Throughput** (``--threads`` intra-op threads, 1 by default: steadier on a shared machine),
   on the model trained at the first sigma, at each ``--batch-sizes`` ``B``. Every method
   processes ``--batches`` × ``B`` samples; methods are timed ``--repeats`` times, interleaved
   round robin with a rotating order (so a change in machine load hits all alike), after one
   untimed warm-up each, and the median is reported:

   * ``forward``: plain ``model(x)`` over batches of ``B`` clean test images, the model as the
     trainer hands it back (default layout), under ``torch.inference_mode``: images per second.
     **The reference of the target.**
   * ``forward, noisy inputs``: the same on test images with Gaussian noise added beforehand
     (informational: in the default layout, max-pooling is slower on noisy inputs than on clean
     MNIST, whose activations are mostly exact zeros).
   * ``forward, channels-last``: the same clean batches with the model and the images converted
     to channels-last beforehand (conversion untimed).
   * ``certify``: ``SmoothedClassifier.certify`` (default ``memory_format="auto"``, i.e.
     channels-last on CPU) with ``batch_size=B`` on 4 inputs, ``n0 = 100``, ``n`` chosen so that
     ``4 * (n0 + n) = batches * B``: noisy samples per second, the whole call timed (noise,
     counting, layout switch, the statistics).
   * ``certify, contiguous``: the same with ``memory_format="contiguous"`` (the layout of
     ``forward``).
   * ``certify, packed``: 16 inputs with ``n0 + n = B / 2`` each, so every batch holds noisy
     copies of several inputs.

   Target: ``certify`` ≥ 0.9 × ``forward`` (samples/s vs images/s at the same batch size).
3. **Certified accuracy.** CERTIFY on the first ``--n-cert`` test images for every model
   (``--n0``, ``--n``, ``--alpha``, batch 1000, seed 0, ``--cert-threads`` threads): certified
   accuracy at radii 0, 0.5, 1.0, 1.5, the average certified radius (ACR) and the largest radius
   ``n`` and ``alpha`` can certify, ``sigma * Φ⁻¹(alpha ** (1 / n))``, printed next to the
   published anchor. Results go to ``--out``, a plot to ``artifacts/certification/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import cpu_model, environment
from robustops.data import Dataset, load_mnist_subset
from robustops.defenses.smoothing import (
    CertificationResult,
    SmoothedClassifier,
    certify_dataset,
    max_certifiable_radius,
    plot_certified_accuracy,
)
from robustops.models import save_weights, small_cnn
from robustops.training import Recipe, fit

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "certification"
TARGET = 0.9
"""``certify`` noisy samples/s divided by ``forward`` images/s, at least."""
RADII = (0.0, 0.5, 1.0, 1.5)
ANCHOR = {
    "source": "Cohen, Rosenfeld & Kolter 2019 (as cited by the task), LeNet-style CNN on full "
    "MNIST (60k training images), sigma=0.25, n0=100, n=100000, alpha=0.001",
    "sigma": 0.25,
    "radius": 0.5,
    "certified_accuracy": 0.968,
    "n": 100_000,
    "alpha": 0.001,
}
N_INPUTS = 4
PACKED_INPUTS = 16


def _loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# -- 1. training ------------------------------------------------------------------------------


def _train(
    data: Dataset, sigma: float, args: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any]]:
    recipe = Recipe(
        epochs=args.epochs,
        batch_size=64,
        lr=1e-3,
        objective={"name": "gaussian", "sigma": sigma},
        schedule={"kind": "cosine"},
    )
    model = small_cnn(width=args.width, hidden=args.hidden, seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(model, data.x_train, data.y_train, recipe, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        clean = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
        noisy_x = data.x_test + sigma * torch.randn(data.x_test.shape, generator=gen)
        noisy = float((model(noisy_x).argmax(1) == data.y_test).float().mean())
    path = ARTIFACTS / f"small_cnn_w{args.width}_gaussian_sigma{sigma:g}.safetensors"
    sha = save_weights(
        model,
        path,
        metadata={
            "factory": "robustops.models:small_cnn",
            "kwargs": {"width": args.width, "hidden": args.hidden},
            "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
            "data": "mnist_subset (4000 train, seed 0 split)",
        },
    )
    info = {
        "sigma": sigma,
        "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
        "train_time_s": wall,
        "train_cpu_s": cpu,
        "final_train_loss": result.history[-1].loss,
        "base_test_accuracy_clean": clean,
        "base_test_accuracy_noisy": noisy,
        "weights": str(path.relative_to(ROOT)),
        "weights_sha256": sha,
    }
    return model, info


# -- 2. throughput ----------------------------------------------------------------------------


def _throughput(
    model: nn.Module, data: Dataset, sigma: float, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    total = args.batches * batch
    x_all = data.x_test
    starts = [(i * batch) % x_all.shape[0] for i in range(args.batches)]
    clean = [x_all[s : s + batch].contiguous() for s in starts]
    if any(b.shape[0] != batch for b in clean):
        raise SystemExit(f"batch size {batch} must divide the {x_all.shape[0]} test images")
    gen = torch.Generator().manual_seed(2)
    noisy = [b + sigma * torch.randn(b.shape, generator=gen) for b in clean]
    clean_cl = [b.contiguous(memory_format=torch.channels_last) for b in clean]
    n0 = 100
    n = total // N_INPUTS - n0
    packed_n = batch // 2 - n0
    packed_inputs = total // (batch // 2)
    auto = SmoothedClassifier(model, 10, sigma)
    contig = SmoothedClassifier(model, 10, sigma, memory_format="contiguous")
    x_cert = x_all[:N_INPUTS]
    x_packed = x_all[:packed_inputs]

    def forward(batches: list[Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for b in batches:
                    model(b)

        return run

    def forward_cl() -> None:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        try:
            t0 = time.perf_counter()
            forward(clean_cl)()
            timings["_cl"] = time.perf_counter() - t0
        finally:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    methods: dict[str, tuple[Callable[[], None], int, str]] = {
        "forward": (forward(clean), total, "images/s"),
        "forward, noisy inputs": (forward(noisy), total, "images/s"),
        "forward, channels-last": (forward_cl, total, "images/s"),
        "certify": (
            lambda: auto.certify(x_cert, n0, n, args.alpha, batch_size=batch, generator=0),
            N_INPUTS * (n0 + n),
            "samples/s",
        ),
        "certify, contiguous": (
            lambda: contig.certify(x_cert, n0, n, args.alpha, batch_size=batch, generator=0),
            N_INPUTS * (n0 + n),
            "samples/s",
        ),
        "certify, packed": (
            lambda: auto.certify(x_packed, n0, packed_n, args.alpha, batch_size=batch),
            packed_inputs * (n0 + packed_n),
            "samples/s",
        ),
    }
    timings: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn, _, _ in methods.values():
        fn()  # warm-up
    names = list(methods)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            fn = methods[name][0]
            t0 = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t0
            # The channels-last forward times its batches only (not the layout switch).
            times[name].append(timings.pop("_cl") if name == "forward, channels-last" else elapsed)
    rows = []
    for name, (_, count, unit) in methods.items():
        med = statistics.median(times[name])
        rows.append(
            {
                "method": name,
                "samples": count,
                "unit": unit,
                "median_s": med,
                "min_s": min(times[name]),
                "max_s": max(times[name]),
                "per_second": count / med,
            }
        )
    by = {r["method"]: r["per_second"] for r in rows}
    ratios = {
        "certify / forward": by["certify"] / by["forward"],
        "certify, contiguous / forward": by["certify, contiguous"] / by["forward"],
        "certify, contiguous / forward, noisy inputs": by["certify, contiguous"]
        / by["forward, noisy inputs"],
        "certify / forward, channels-last": by["certify"] / by["forward, channels-last"],
        "certify, packed / forward": by["certify, packed"] / by["forward"],
    }
    return {
        "batch_size": batch,
        "settings": {
            "n0": n0,
            "n": n,
            "inputs": N_INPUTS,
            "packed": {"inputs": packed_inputs, "n0": n0, "n": packed_n},
        },
        "rows": rows,
        "ratios": ratios,
        "target_met": ratios["certify / forward"] >= TARGET,
        "load_avg": _loadavg(),
    }


# -- 3. certified accuracy --------------------------------------------------------------------


def _certify(
    model: nn.Module, data: Dataset, sigma: float, args: argparse.Namespace
) -> CertificationResult:
    return certify_dataset(
        model,
        data.x_test[: args.n_cert],
        data.y_test[: args.n_cert],
        num_classes=data.num_classes,
        sigma=sigma,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        batch_size=1000,
        seed=0,
        radii=(*RADII, 2.0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 500])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads for the throughput part")
    parser.add_argument(
        "--cert-threads", type=int, default=2, help="threads for training and certification"
    )
    parser.add_argument("--n-cert", type=int, default=500)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--skip-certify", action="store_true", help="training and throughput only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/certification.json")
    args = parser.parse_args()
    t_start = time.perf_counter()
    data = load_mnist_subset()

    torch.set_num_threads(args.cert_threads)
    models: dict[float, nn.Module] = {}
    training: list[dict[str, Any]] = []
    for sigma in args.sigmas:
        model, info = _train(data, sigma, args)
        models[sigma] = model
        training.append(info)
        print(
            f"trained sigma={sigma:g}: {info['train_time_s']:.0f}s, base test accuracy clean "
            f"{info['base_test_accuracy_clean']:.3f}, noisy {info['base_test_accuracy_noisy']:.3f}",
            flush=True,
        )

    torch.set_num_threads(args.threads)
    sigma0 = args.sigmas[0]
    throughput = []
    for batch in args.batch_sizes:
        res = _throughput(models[sigma0], data, sigma0, batch, args)
        throughput.append(res)
        print(
            f"throughput B={batch}: certify/forward {res['ratios']['certify / forward']:.2f}x",
            flush=True,
        )

    torch.set_num_threads(args.cert_threads)
    certs: list[CertificationResult] = []
    if not args.skip_certify:
        for sigma in args.sigmas:
            cert = _certify(models[sigma], data, sigma, args)
            certs.append(cert)
            print(
                f"certified sigma={sigma:g}: {cert.wall_time_s:.0f}s, "
                f"{cert.samples_per_second:.0f} samples/s",
                flush=True,
            )
    plot = None
    if certs:
        plot = plot_certified_accuracy(
            certs, ARTIFACTS / "certified_accuracy.png", title="SmallCNN, MNIST subset"
        )

    env = environment()
    env.update(
        {
            "cpu_model": cpu_model(),
            "cpu_count": str(os.cpu_count()),
            "torch_threads_throughput": str(args.threads),
            "torch_threads_certification": str(args.cert_threads),
        }
    )
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": env,
        "training": training,
        "throughput": throughput,
        "throughput_target": f"certify noisy samples/s >= {TARGET} x forward images/s",
        "anchor": ANCHOR,
        "anchor_max_certifiable_radius": max_certifiable_radius(
            ANCHOR["sigma"], ANCHOR["n"], ANCHOR["alpha"]
        ),
        "certification": [c.model_dump(mode="json") for c in certs],
        "plot": str(plot.relative_to(ROOT)) if plot else None,
        "total_time_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))

    print(f"\nCommand: {out['command']}")
    print(
        f"Machine: {env['cpu_model']}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"throughput on {args.threads} thread(s), training/certification on "
        f"{args.cert_threads}; load avg {_loadavg()}"
    )
    print(
        f"\n### Throughput (SmallCNN width {args.width}, hidden {args.hidden}, trained at "
        f"sigma={sigma0:g}; median of {args.repeats}; {args.threads} thread(s))\n"
    )
    print("| batch | method | samples | per second | median (s) | min–max (s) | vs forward |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for res in throughput:
        ref = next(r["per_second"] for r in res["rows"] if r["method"] == "forward")
        for r in res["rows"]:
            print(
                f"| {res['batch_size']} | {r['method']} | {r['samples']} | "
                f"{r['per_second']:,.0f} {r['unit']} | {r['median_s']:.3f} | "
                f"{r['min_s']:.3f}–{r['max_s']:.3f} | {r['per_second'] / ref:.2f}x |"
            )
    for res in throughput:
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in res["ratios"].items())
        met = "met" if res["target_met"] else "NOT met"
        print(f"\nB={res['batch_size']}: target certify/forward >= {TARGET}x {met}. {ratios}")

    if certs:
        print(
            f"\n### Certified accuracy (first {args.n_cert} test images, n0={args.n0}, "
            f"n={args.n}, alpha={args.alpha}; {args.epochs} epochs of gaussian training on "
            "4000 images)\n"
        )
        head = " | ".join(f"r = {r:g}" for r in RADII)
        print(f"| model | {head} | ACR | max certifiable radius | abstain | time (s) |")
        print("| --- |" + " ---: |" * (len(RADII) + 4))
        for c in certs:
            accs = " | ".join(f"{c.certified_accuracy_at(r):.1%}" for r in RADII)
            print(
                f"| ours, SmallCNN, σ={c.sigma:g} | {accs} | {c.average_certified_radius:.3f} | "
                f"{c.max_certifiable_radius:.3f} | {c.abstain_rate:.1%} | {c.wall_time_s:.0f} |"
            )
        cap = out["anchor_max_certifiable_radius"]
        cells = " | ".join(
            f"{ANCHOR['certified_accuracy']:.1%}" if r == ANCHOR["radius"] else "–" for r in RADII
        )
        print(
            f"| anchor: Cohen et al. 2019, LeNet-style, full MNIST, σ={ANCHOR['sigma']:g}, "
            f"n={ANCHOR['n']:,} | {cells} | – | {cap:.3f} | – | – |"
        )
        print(
            f"\nThe largest certifiable radius is sigma * Φ⁻¹(alpha ** (1/n)): with n={args.n:,} "
            f"and alpha={args.alpha:g}, "
            + ", ".join(
                f"{max_certifiable_radius(s, args.n, args.alpha):.3f} at σ={s:g}"
                for s in args.sigmas
            )
            + f"; the anchor's n={ANCHOR['n']:,} allows {cap:.3f} at σ={ANCHOR['sigma']:g}. "
            "Certified accuracy beyond the cap is 0 by construction."
        )
    print(f"\nResults: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if plot:
        print(f"Plot: {plot.relative_to(ROOT)}")
    print(f"Total time: {out['total_time_s']:.0f}s")


if __name__ == "__main__":
    main()
