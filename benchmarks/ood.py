"""OOD detection and conformal abstention on the MNIST CNN: AUROC of MSP, energy and (relative)
Mahalanobis against offline-built OOD sets, and the false-abstain rate on held-out clean digits.

Run from the repository root::

    python benchmarks/ood.py [--weights artifacts/mnist_small_cnn.safetensors] [--n-ood 1000]
                             [--splits 1000] [--threads 2] [--out benchmarks/results/ood.json]
    python benchmarks/ood.py --table-only     # reprint the tables of --out

The model is the reference CNN of ``configs/mnist.yaml`` (``small_cnn``, width 32, hidden 128,
5 epochs on the 4000 training digits of the embedded MNIST subset). Its weights are read from
``--weights`` when their content hash is :data:`MODEL_SHA256` (what ``robustops train --spec
configs/mnist.yaml`` trains); otherwise the recipe is trained here (``robustops``' trainer, 2–4
min on 2 busy cores) into ``--train-out``, and the JSON records the hashes actually used.

Data (nothing is downloaded):

* in-distribution: the 1000 MNIST test digits, split into a *calibration* half (the first 500:
  conformal thresholds and the calibration temperature) and an *evaluation* half (the other
  500: the AUROC's negatives and the false-abstain rate). The Mahalanobis statistics are fitted
  on the 4000 training digits, never on either half.
* OOD sets, ``--n-ood`` images each, 28×28 in [0, 1] (see :func:`ood_sets` for what each
  stands for): ``digits`` (scikit-learn's 8×8 digits upscaled), ``uniform`` and ``gaussian``
  noise, ``inverted`` digits, ``rotated-90`` digits, ``fashion-like`` silhouettes and
  ``scribbles``.

Scores: MSP (T = 1), energy (T = 1), Mahalanobis and relative Mahalanobis on the input of the
last linear layer (the 128 penultimate features, Ledoit–Wolf shrinkage), all through
:class:`robustops.defenses.OODDetector`; thresholds through
:meth:`robustops.defenses.Abstainer.calibrate` at α = 0.01 and 0.05. The false-abstain rate is
reported on the fixed split, with its Wilson 95% interval, and averaged over ``--splits``
random re-splits of the 1000 test digits into 500 + 500 (scores computed once). Last, the
relative-Mahalanobis abstainer at α = 0.05 with a minimum calibrated confidence of none, 0.5 and
0.9: the abstentions each rule adds on clean digits and the accuracy on the answered ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustops._util import environment, file_sha256
from robustops.data import Dataset, load_mnist_subset
from robustops.defenses import Abstainer, OODDetector, conformal_threshold, ood_auroc
from robustops.evaluation.metrics import wilson_interval

ROOT = Path(__file__).resolve().parent.parent
MODEL_SHA256 = "a89c3b5bbddccd3af3b94f7149be1316af5da04f3a58f2359bf6fe17be1d8b67"
"""Content hash (:func:`robustops.models.model_sha256`: names, dtypes, shapes and values of the
state dict) of the CNN that ``robustops train --spec configs/mnist.yaml`` trains on this
project's machine. The recipe is deterministic: two trainings gave these same weights in files
whose bytes differ (``artifacts/mnist_small_cnn.safetensors``, file sha256 ``e64dd435…``, and one
trained by this script, ``861d1132…``), so the content is what is checked, not the file."""
SCORES = ("msp", "energy", "mahalanobis", "relative-mahalanobis")
ALPHAS = (0.01, 0.05)
N_CAL = 500


# -- OOD sets -------------------------------------------------------------------------------------


def _grid() -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(28, 28)`` each: rows ``yy``, columns ``xx``."""
    r = torch.arange(28, dtype=torch.float32)
    return torch.meshgrid(r, r, indexing="ij")


def _blur(img: Tensor) -> Tensor:
    """A 3×3 binomial blur of ``(N, 1, 28, 28)``: MNIST's anti-aliased stroke edges."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k2 = (k[:, None] * k[None, :]) / 16
    return F.conv2d(img, k2.view(1, 1, 3, 3), padding=1)


def sklearn_digits(n: int) -> Tensor:
    """scikit-learn's 8×8 digits (4-bit, 1797 images), bilinearly upscaled to 20×20 and centred
    in 28×28 like MNIST's 20×20 digit box: the same ten classes from another scanner, at a
    quarter of the resolution (blurry, thick, blocky strokes) — a *near* shift."""
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(np.asarray(load_digits().data, dtype=np.float32) / 16.0)
    up = F.interpolate(raw.view(-1, 1, 8, 8), size=(20, 20), mode="bilinear", align_corners=False)
    out = F.pad(up, (4, 4, 4, 4)).clamp(0, 1)
    idx = torch.arange(n) % out.shape[0]
    return out[idx].contiguous()


def scribbles(n: int, gen: torch.Generator) -> Tensor:
    """Two to four random quadratic Bézier strokes inside the digit box, drawn with MNIST's
    stroke width and blur: handwriting-like ink that is not a digit (a signature, a doodle, a
    letter) — the stroke statistics of the training data without its classes."""
    yy, xx = _grid()
    out = torch.zeros(n, 1, 28, 28)
    t = torch.linspace(0, 1, 40)[:, None]
    for i in range(n):
        img = torch.zeros(28, 28)
        for _ in range(int(torch.randint(2, 5, (1,), generator=gen))):
            p = 5 + 18 * torch.rand(3, 2, generator=gen)
            pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]  # (40, 2)
            d = torch.cdist(torch.stack([yy, xx], -1).view(-1, 2), pts).amin(1).view(28, 28)
            img = torch.maximum(img, (1.8 - d).clamp(0, 1))
        out[i, 0] = img
    return _blur(out).clamp(0, 1)


def fashion_like(n: int, gen: torch.Generator) -> Tensor:
    """Filled, textured garment silhouettes in the style of Fashion-MNIST (which cannot be
    downloaded here): a T-shirt (body and sleeves), trousers (two legs), a dress (trapezoid), a
    bag (box and handle) or a shoe (sole and upper), each with a random grey level and a flat,
    striped or checked texture. Stands for a different object domain behind the same camera:
    centred, filled and textured objects instead of thin strokes."""
    yy, xx = _grid()
    out = torch.zeros(n, 1, 28, 28)

    def box(y0: float, y1: float, x0: float, x1: float) -> Tensor:
        return ((yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)).float()

    for i in range(n):
        u = torch.rand(8, generator=gen).tolist()
        kind = int(torch.randint(0, 5, (1,), generator=gen))
        w, h = 8 + 6 * u[0], 14 + 8 * u[1]
        top, cx = 14 - h / 2, 13.5 + 2 * (u[2] - 0.5)
        if kind == 0:  # T-shirt
            mask = box(top, top + h, cx - w / 2, cx + w / 2)
            mask = torch.maximum(mask, box(top, top + 6 + 4 * u[3], cx - w / 2 - 5, cx + w / 2 + 5))
        elif kind == 1:  # trousers
            gap = 1 + 2 * u[3]
            mask = torch.maximum(
                box(top, top + h, cx - w / 2, cx - gap / 2),
                box(top, top + h, cx + gap / 2, cx + w / 2),
            )
            mask = torch.maximum(mask, box(top, top + 4, cx - w / 2, cx + w / 2))
        elif kind == 2:  # dress: narrow at the top, wide at the bottom
            half = (w / 4) + (yy - top) / h * (w / 2 + 3)
            mask = ((yy >= top) & (yy <= top + h) & ((xx - cx).abs() <= half)).float()
        elif kind == 3:  # bag: box and a handle ring
            mask = box(top + 6, top + h, cx - w / 2 - 2, cx + w / 2 + 2)
            ring = ((yy - (top + 6)) ** 2 + (xx - cx) ** 2).sqrt()
            handle = ((ring - (w / 3)).abs() <= 1.0) & (yy <= top + 6)
            mask = torch.maximum(mask, handle.float())
        else:  # shoe: a low sole and an upper on one side
            base = 20 + 3 * u[3]
            mask = torch.maximum(
                box(base - 4, base, 3, 25),
                box(base - 10 - 4 * u[4], base, 3 + 8 * u[5], 15 + 4 * u[5]),
            )
        grey = 0.35 + 0.65 * u[6]
        texture_kind = int(torch.randint(0, 3, (1,), generator=gen))
        period = 2 + 3 * u[7]
        if texture_kind == 0:
            texture = torch.ones(28, 28)
        elif texture_kind == 1:
            texture = 0.65 + 0.35 * torch.sin(2 * math.pi * yy / period)
        else:
            texture = 0.65 + 0.35 * torch.sign(
                torch.sin(2 * math.pi * yy / period) * torch.sin(2 * math.pi * xx / period)
            )
        out[i, 0] = mask * grey * texture
    return _blur(out).clamp(0, 1)


def ood_sets(data: Dataset, n: int, seed: int = 0) -> dict[str, Tensor]:
    """The OOD sets, ``n`` images ``(n, 1, 28, 28)`` in [0, 1] each, all built offline:

    * ``digits`` — :func:`sklearn_digits`: same classes, another scanner (near shift).
    * ``uniform`` — i.i.d. U[0, 1] pixels: garbage input, a broken upload or a decoding error.
    * ``gaussian`` — i.i.d. N(m, s²) pixels with MNIST's pixel mean and std, clipped: sensor
      noise with the data's first two moments.
    * ``inverted`` — ``1 − x`` of training digits: a polarity flip (dark ink on white paper,
      a scanner setting), the classic far-OOD case for logit scores.
    * ``rotated-90`` — training digits rotated a quarter turn: the data's own strokes, wrong
      orientation (a sideways scan); some digits (0, 8, 1 as a bar) stay plausible by nature.
    * ``fashion-like`` — :func:`fashion_like`: another object domain (Fashion-MNIST style).
    * ``scribbles`` — :func:`scribbles`: handwriting that is not a digit.

    The training digits used here (a random draw) are never scored as in-distribution.
    """
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(data.x_train.shape[0], generator=gen)
    train = data.x_train[pick[torch.arange(n) % pick.shape[0]]]
    mean, std = float(data.x_train.mean()), float(data.x_train.std())
    return {
        "digits": sklearn_digits(n),
        "uniform": torch.rand(n, 1, 28, 28, generator=gen),
        "gaussian": (mean + std * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1),
        "inverted": 1.0 - train,
        "rotated-90": torch.rot90(train, 1, (2, 3)).contiguous(),
        "fashion-like": fashion_like(n, gen),
        "scribbles": scribbles(n, gen),
    }


# -- model ----------------------------------------------------------------------------------------


def load_model(weights: Path, train_out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The CNN of ``configs/mnist.yaml``: ``weights`` when their content hash is
    :data:`MODEL_SHA256`, else trained here with the recipe into ``train_out``."""
    from robustops.config import load_spec
    from robustops.models import build_model, model_sha256
    from robustops.runner import train_spec

    spec = load_spec(ROOT / "configs" / "mnist.yaml")
    assert spec.model.factory is not None and spec.train is not None
    info: dict[str, Any] = {"config": "configs/mnist.yaml", "recorded_model_sha256": MODEL_SHA256}
    model = None
    if weights.is_file():
        model = build_model(spec.model.factory, spec.model.kwargs, weights, device="cpu")
        if model_sha256(model) != MODEL_SHA256:
            print(f"{weights}: not the recorded weights (content hash {model_sha256(model)})")
            model = None
    if model is not None:
        info |= {"weights": str(weights), "trained_here": False, "train_wall_time_s": 0.0}
        path = weights
    else:
        print(f"{weights}: missing or not the recorded weights; training {info['config']}")
        t0 = time.perf_counter()
        spec = spec.model_copy(
            update={
                "train": spec.train.model_copy(update={"out": train_out}),
                "model": spec.model.model_copy(update={"weights": train_out}),
            }
        )
        train_spec(spec)
        info |= {
            "weights": str(train_out),
            "trained_here": True,
            "train_wall_time_s": time.perf_counter() - t0,
        }
        path = train_out
        model = build_model(spec.model.factory, spec.model.kwargs, path, device="cpu")
    info["file_sha256"] = file_sha256(path)
    info["model_sha256"] = model_sha256(model)
    info["matches_recorded"] = info["model_sha256"] == MODEL_SHA256
    return model.eval(), info


# -- the measurement ------------------------------------------------------------------------------


def _resplit_rates(scores: Tensor, alpha: float, splits: int) -> dict[str, float]:
    """False-abstain rate over ``splits`` random 500 + 500 splits of the 1000 test scores."""
    gen = torch.Generator().manual_seed(12345)
    rates = []
    for _ in range(splits):
        perm = torch.randperm(scores.shape[0], generator=gen)
        th = conformal_threshold(scores[perm[:N_CAL]], alpha)
        rates.append(float((scores[perm[N_CAL:]] > th.threshold).double().mean()))
    r = np.asarray(rates)
    return {
        "mean": float(r.mean()),
        "std": float(r.std()),
        "share_above_alpha": float((r > alpha).mean()),
        "p95": float(np.quantile(r, 0.95)),
    }


def run(model: torch.nn.Module, data: Dataset, n_ood: int, splits: int) -> dict[str, Any]:
    cal_x, cal_y = data.x_test[:N_CAL], data.y_test[:N_CAL]
    ev_x, ev_y = data.x_test[N_CAL:], data.y_test[N_CAL:]
    t0 = time.perf_counter()
    sets = ood_sets(data, n_ood)
    build_s = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(1) == data.y_test).double().mean())
    per_score: dict[str, Any] = {}
    for name in SCORES:
        t0 = time.perf_counter()
        det = OODDetector(model, name).fit(data.x_train, data.y_train)  # type: ignore[arg-type]
        fit_s = time.perf_counter() - t0
        base = Abstainer.calibrate(det, cal_x, cal_y, alpha=ALPHAS[0])
        t0 = time.perf_counter()
        ev = base.decide_batch(ev_x)
        score_s = (time.perf_counter() - t0) / ev_x.shape[0]
        ood_scores = {k: det.score(v) for k, v in sets.items()}
        all_scores = det.score(data.x_test)
        row: dict[str, Any] = {
            "fit_s": fit_s,
            "score_ms_per_image": 1000 * score_s,
            "auroc": {k: ood_auroc(ev.ood_scores, s) for k, s in ood_scores.items()},
            "alphas": {},
        }
        for alpha in ALPHAS:
            ab = base.with_alpha(alpha)
            b = ab.decide_batch(ev_x)
            k = int(b.out_of_distribution.sum())
            lo, hi = wilson_interval(k, ev_x.shape[0])
            row["alphas"][str(alpha)] = {
                "threshold": ab.threshold.threshold,
                "rank": ab.threshold.rank,
                "bound": ab.threshold.expected_false_abstain,
                "false_abstain": k / ev_x.shape[0],
                "false_abstain_ci95": [lo, hi],
                "false_abstain_resplits": _resplit_rates(all_scores, alpha, splits),
                "caught": {
                    s: float((v > ab.threshold.threshold).double().mean())
                    for s, v in ood_scores.items()
                },
            }
        per_score[name] = row
    # A confidence rule on top of the OOD rule, on the relative-Mahalanobis abstainer at α = 0.05:
    # what it adds to the false-abstain rate, and what it buys in accuracy on what is answered.
    det = OODDetector(model, "relative-mahalanobis").fit(data.x_train, data.y_train)
    conf_rows = {}
    for m in (None, 0.5, 0.9):
        ab = Abstainer.calibrate(det, cal_x, cal_y, alpha=0.05, min_confidence=m)
        b = ab.decide_batch(ev_x)
        answered = ~b.abstain
        conf_rows[str(m)] = {
            "abstain_ood": float(b.out_of_distribution.double().mean()),
            "abstain_low_confidence": float(b.low_confidence.double().mean()),
            "abstain_total": float(b.abstain.double().mean()),
            "accuracy_when_answering": float(
                (b.predictions[answered] == ev_y[answered]).double().mean()
            ),
        }
    with torch.no_grad():
        ev_acc = float((model(ev_x).argmax(1) == ev_y).double().mean())
    return {
        "test_accuracy": acc,
        "evaluation_accuracy": ev_acc,
        "n_calibration": N_CAL,
        "n_evaluation": int(ev_x.shape[0]),
        "n_ood": n_ood,
        "splits": splits,
        "ood_build_s": build_s,
        "temperature": ab.temperature,
        "scores": per_score,
        "min_confidence": conf_rows,
    }


def _print_tables(res: dict[str, Any]) -> None:
    scores = res["scores"]
    sets = list(scores["msp"]["auroc"])
    print(f"| OOD set | {' | '.join(SCORES)} |")
    print(f"| --- | {' | '.join('---:' for _ in SCORES)} |")
    for s in sets:
        print(f"| {s} | " + " | ".join(f"{scores[n]['auroc'][s]:.3f}" for n in SCORES) + " |")
    mean = {n: float(np.mean(list(scores[n]["auroc"].values()))) for n in SCORES}
    print("| mean | " + " | ".join(f"{mean[n]:.3f}" for n in SCORES) + " |")
    print()
    print(
        "| score | α | bound 1 − k/(n+1) | false abstain (fixed split, 95% CI) | "
        f"mean over {res['splits']} re-splits (sd) | re-splits above α | "
        "OOD caught (mean over sets) |"
    )
    print("| --- | ---: | ---: | --- | --- | ---: | ---: |")
    for n in SCORES:
        for a, r in scores[n]["alphas"].items():
            lo, hi = r["false_abstain_ci95"]
            rs = r["false_abstain_resplits"]
            caught = float(np.mean(list(r["caught"].values())))
            print(
                f"| {n} | {a} | {r['bound']:.4f} | {r['false_abstain']:.1%} ({lo:.1%}–{hi:.1%}) | "
                f"{rs['mean']:.2%} ({rs['std']:.2%}) | {rs['share_above_alpha']:.0%} | "
                f"{caught:.1%} |"
            )
    print()
    print("| score | α | " + " | ".join(sets) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in sets) + " |")
    for n in SCORES:
        for a, r in scores[n]["alphas"].items():
            print(f"| {n} | {a} | " + " | ".join(f"{r['caught'][s]:.1%}" for s in sets) + " |")
    print()
    print(
        f"Model: test accuracy {res['test_accuracy']:.1%} (evaluation half "
        f"{res['evaluation_accuracy']:.1%}); calibration temperature {res['temperature']:.3f}."
    )
    print(
        "| min confidence | abstain: OOD | abstain: low confidence | abstain: total | "
        "accuracy when answering |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for m, r in res["min_confidence"].items():
        print(
            f"| {'none' if m == 'None' else m} | {r['abstain_ood']:.1%} | {r['abstain_low_confidence']:.1%} | "
            f"{r['abstain_total']:.1%} | {r['accuracy_when_answering']:.1%} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument(
        "--weights", type=Path, default=ROOT / "artifacts" / "mnist_small_cnn.safetensors"
    )
    ap.add_argument(
        "--train-out",
        type=Path,
        default=ROOT / "artifacts" / "ood_mnist_small_cnn.safetensors",
        help="where to train the model when --weights is missing or differs",
    )
    ap.add_argument("--n-ood", type=int, default=1000, help="images per OOD set")
    ap.add_argument("--splits", type=int, default=1000, help="random calibration re-splits")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ood.json")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --out")
    args = ap.parse_args(argv)
    if args.table_only:
        _print_tables(json.loads(args.out.read_text(encoding="utf-8"))["results"])
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, info = load_model(args.weights, args.train_out)
    data = load_mnist_subset()
    res = run(model, data, args.n_ood, args.splits)
    res["model"] = info
    res["wall_time_s"] = time.perf_counter() - t0
    report = {
        "results": res,
        "environment": {**environment(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_tables(res)
    print(f"written to {args.out} ({res['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
