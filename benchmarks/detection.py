"""Attack-in-progress detection: Square campaigns against benign clients, in process.

Run from the repository root::

    python benchmarks/detection.py [--campaigns 50] [--benign 1000] [--budget 200]
                                   [--weights artifacts/mnist_small_cnn.safetensors]
                                   [--out benchmarks/results/detection.json] [--table-only]

One :class:`~robustops.defenses.QueryDetector` with its default configuration and policy
(quantization step 0.2, windows of 20 values, the top 50 hashes, threshold 25; cosine ≥ 0.98;
history 128 queries; flag at 5 matches, throttle at 12, block at 30), secret = seed 0, sees every query of every client under that
client's own key. Its embedding is the model's last convolutional feature map
(``model.features``, 64 × 7 × 7), reduced to 256 dimensions by a fixed Gaussian random projection
(seed 0); see the docstring of :func:`embedder` for why not the penultimate layer.

* **Model**: the reference ``small_cnn`` (seed 0) trained 3 epochs on the embedded MNIST subset
  (or ``--weights``). Campaign images: the first test images it classifies correctly.
* **Attack campaigns** (one key each): robustops' ``Square`` through a wrapper that records every
  row the attack sends to the model (its final verification pass included), L∞ ε = 0.3 and
  L2 ε = 2.0, ``--campaigns`` images each, seed = image index. Two regimes:

  - ``full``: ``early_stop=False`` and ``--budget`` queries: the attacker keeps searching for the
    highest margin (the usual evaluation of stateful detectors: the whole campaign is seen);
  - ``early-stop``: the library default, 1000 queries, stopping at the first adversarial query:
    reported as the share of campaigns that *succeeded before their first flag* (and block).

* **Benign clients** (``--benign``, one key each): 3–8 distinct test digits each, every digit
  followed by 0–3 natural near-duplicates drawn from: a shift by −2..2 pixels on each axis,
  Gaussian noise σ ∈ [0.02, 0.05], a brightness change ±0.1, a contrast change ×[0.8, 1.2]
  around 0.5, a re-scan (3 × 3 binomial blur plus noise σ = 0.02). A sensitivity run raises the
  near-duplicates per digit to 0–``k`` for ``k`` up to 8.
* **Adaptive attacker**: Square L∞ (``full`` regime) whose every query is first transformed at
  random (shift −2..2 px, noise σ = 0.05), so no two queries are near-duplicates in pixel space;
  on one key and spread round-robin over 8 keys. Its success is measured on the untransformed
  final candidate.
* **Latency**: wall and thread CPU time of each ``observe`` call (embedding precomputed and
  passed in) over all benign queries and over 800 queries of one key with full buffers; the
  embedding function on one input, separately. **Constant work**: two keys with full buffers,
  probed alternately, one with near-duplicates of the 128 queries it holds, the other with new
  digits: the CPU time of both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import write_results
from robustops.attacks import Square
from robustops.data import load_mnist_subset
from robustops.defenses import ACTIONS, DetectorConfig, QueryDetector
from robustops.models import SmallCNN, load_weights, small_cnn
from robustops.threats import ThreatModel
from robustops.training import StandardConfig, train_standard

ROOT = Path(__file__).resolve().parent.parent
FLAG = ACTIONS.index("flag")
BLOCK = ACTIONS.index("block")


# -- model and embedding -----------------------------------------------------------------------


def trained_model(weights: Path | None) -> SmallCNN:
    torch.manual_seed(0)
    model = small_cnn(seed=0)
    if weights is not None:
        load_weights(model, weights)
    else:
        ds = load_mnist_subset()
        train_standard(
            model, ds.x_train, ds.y_train, StandardConfig(epochs=3, batch_size=64, seed=0)
        )
    return model.eval()


def embedder(model: SmallCNN, dim: int = 256, seed: int = 0) -> Callable[[Tensor], np.ndarray]:
    """Batch ``(n, 1, 28, 28)`` → embeddings ``(n, dim)`` float32: the last convolutional feature
    map, flattened (3136 values), times a fixed Gaussian projection to ``dim``.

    Not the penultimate layer: its features collapse onto the class (two *different* test digits
    of one class have median cosine 0.93 there, and 10% of such pairs exceed 0.977, as close as a
    1-pixel shift of one digit), so it cannot tell an attack's near-duplicates from a client
    sending several digits of one class. On the convolutional map different digits of one class
    have median cosine 0.74 (99.9th percentile 0.978) while noise, blur, brightness and contrast
    keep a digit above 0.98, and consecutive Square queries mostly above 0.99."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(64 * 7 * 7, dim, generator=gen) / dim**0.5

    def embed(x: Tensor) -> np.ndarray:
        with torch.no_grad():
            feats = model.features(x.reshape(-1, 1, 28, 28).float()).flatten(1)
            out: np.ndarray = (feats @ proj).numpy()
        return out

    return embed


class Recording(nn.Module):
    """Forwards to ``model`` (optionally through ``transform``) and keeps every row it was sent
    (after the transform): the queries a remote attacker's client would emit."""

    def __init__(self, model: nn.Module, transform: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.model, self.transform = model, transform
        self.rows: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        if self.transform is not None:
            x = self.transform(x)
        self.rows.extend(x.detach().clone())
        out: Tensor = self.model(x)
        return out


# -- natural near-duplicates -------------------------------------------------------------------


def shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """``x`` ``(..., H, W)`` moved by whole pixels, zero-filled (not wrapped)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def blur(x: Tensor) -> Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    return F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k[None, None], padding=1).reshape(x.shape)


def near_duplicate(x: Tensor, rng: np.random.Generator) -> tuple[str, Tensor]:
    """One natural variant of the image ``x`` ``(1, 28, 28)`` in [0, 1], and its kind."""
    kind = str(rng.choice(["shift", "noise", "brightness", "contrast", "rescan"]))
    if kind == "shift":
        dx, dy = 0, 0
        while dx == 0 and dy == 0:
            dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        out = shift(x, dx, dy)
    elif kind == "noise":
        sigma = rng.uniform(0.02, 0.05)
        out = x + sigma * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    elif kind == "brightness":
        out = x + rng.uniform(-0.1, 0.1)
    elif kind == "contrast":
        out = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5
    else:
        out = blur(x) + 0.02 * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return kind, out.clamp(0, 1)


def benign_client(
    x_test: Tensor, rng: np.random.Generator, max_dups: int = 3
) -> tuple[list[Tensor], list[str]]:
    """One honest client's queries: 3–8 distinct test digits, each followed by 0–``max_dups``
    near-duplicates of it; returns the queries and their kinds (``"digit"`` or the variant)."""
    queries, kinds = [], []
    for i in rng.choice(len(x_test), size=int(rng.integers(3, 9)), replace=False):
        queries.append(x_test[int(i)])
        kinds.append("digit")
        for _ in range(int(rng.integers(0, max_dups + 1))):
            kind, dup = near_duplicate(x_test[int(i)], rng)
            queries.append(dup)
            kinds.append(kind)
    return queries, kinds


# -- runs --------------------------------------------------------------------------------------


def feed(
    det: QueryDetector, keys: list[str], queries: list[Tensor], embs: np.ndarray, t0: float
) -> list[Any]:
    """Send ``queries[i]`` as key ``keys[i % len(keys)]`` at time ``t0 + i`` ms; decisions."""
    return [
        det.observe(keys[i % len(keys)], q.numpy(), embedding=embs[i], now=t0 + i * 1e-3)
        for i, q in enumerate(queries)
    ]


def first_at(decisions: list[Any], severity: int) -> int | None:
    """1-based index of the first decision at ``severity`` or above, else None."""
    return next((i + 1 for i, d in enumerate(decisions) if d.severity >= severity), None)


def campaign(
    model: nn.Module,
    embed: Callable[[Tensor], np.ndarray],
    det: QueryDetector,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    queries: int,
    early_stop: bool,
    seed: int,
    keys: list[str],
    transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    rec = Recording(model, transform)
    res = Square(threat, queries=queries, early_stop=early_stop, seed=seed)(rec, x, y)
    embs = embed(torch.stack(rec.rows))
    decisions = feed(det, keys, rec.rows, embs, t0=1e6 * seed)
    with torch.no_grad():
        fooled = bool(model(res.adversarial).argmax(1)[0] != y[0])
    return {
        "queries_sent": len(rec.rows),
        "attack_queries": int(res.queries[0]),
        "success": bool(res.success[0]),
        "fooled_untransformed": fooled,
        "first_flag": first_at(decisions, FLAG),
        "first_block": first_at(decisions, BLOCK),
        "max_matches": max(d.matches for d in decisions),
    }


def summarise_campaigns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    flags = [r["first_flag"] for r in rows if r["first_flag"] is not None]
    blocks = [r["first_block"] for r in rows if r["first_block"] is not None]
    success = [r for r in rows if r["success"]]

    def before(r: dict[str, Any], key: str) -> bool:
        return r[key] is None or r["attack_queries"] < r[key]

    return {
        "campaigns": n,
        "flagged": len(flags) / n,
        "median_queries_to_flag": statistics.median(flags) if flags else None,
        "max_queries_to_flag": max(flags) if flags else None,
        "blocked": len(blocks) / n,
        "median_queries_to_block": statistics.median(blocks) if blocks else None,
        "attack_success": len(success) / n,
        "fooled_untransformed": sum(r["fooled_untransformed"] for r in rows) / n,
        "median_attack_queries": statistics.median(r["attack_queries"] for r in rows),
        "success_before_flag": sum(before(r, "first_flag") for r in success) / n,
        "success_before_block": sum(before(r, "first_block") for r in success) / n,
    }


def random_transform(rng: np.random.Generator, max_shift: int, sigma: float) -> Callable:
    def t(x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
            noise = torch.from_numpy(rng.standard_normal(x.shape[1:]).astype(np.float32))
            out[i] = (shift(x[i], dx, dy) + sigma * noise).clamp(0, 1)
        return out

    return t


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ds = load_mnist_subset()
    t = time.perf_counter()
    model = trained_model(args.weights)
    train_s = time.perf_counter() - t
    with torch.no_grad():
        ok = model(ds.x_test).argmax(1) == ds.y_test
    accuracy = float(ok.float().mean())
    idx = ok.nonzero().squeeze(1)[: args.campaigns]
    embed = embedder(model)
    out: dict[str, Any] = {"model": {"test_accuracy": accuracy, "train_seconds": train_s}}
    config = DetectorConfig(
        quantization_step=args.step, window=args.window, embedding_threshold=args.tau
    )
    out["config"] = repr(config)

    # attack campaigns
    threats = {
        "linf": ThreatModel(name="linf", norm="linf", epsilon=0.3, knowledge="score-based"),
        "l2": ThreatModel(name="l2", norm="l2", epsilon=2.0, knowledge="score-based"),
    }
    out["campaigns"] = {}
    for regime, queries, early in (("full", args.budget, False), ("early-stop", 1000, True)):
        for norm, threat in threats.items():
            det = QueryDetector(config, secret=0, embedding_dim=256)
            rows = []
            t = time.perf_counter()
            for j, i in enumerate(idx.tolist()):
                x, y = ds.x_test[i : i + 1], ds.y_test[i : i + 1]
                rows.append(
                    campaign(
                        model, embed, det, x, y, threat,
                        queries=queries, early_stop=early, seed=j, keys=[f"{norm}-{j}"],
                    )
                )  # fmt: skip
            summary = summarise_campaigns(rows)
            summary["seconds"] = time.perf_counter() - t
            out["campaigns"][f"square-{norm}-{regime}"] = {"summary": summary, "rows": rows}
            print(f"square-{norm}-{regime}", json.dumps(summary), flush=True)

    # adaptive attacker: random shift + noise on every query, one key or spread over 8
    for n_keys in (1, 8):
        det = QueryDetector(config, secret=0, embedding_dim=256)
        rows = []
        for j, i in enumerate(idx.tolist()):
            rng = np.random.default_rng(1000 + j)
            x, y = ds.x_test[i : i + 1], ds.y_test[i : i + 1]
            keys = [f"adaptive-{j}-{k}" for k in range(n_keys)]
            rows.append(
                campaign(
                    model, embed, det, x, y, threats["linf"], queries=args.budget,
                    early_stop=False, seed=j, keys=keys, transform=random_transform(rng, 2, 0.05),
                )
            )  # fmt: skip
        summary = summarise_campaigns(rows)
        out["campaigns"][f"adaptive-linf-{n_keys}keys"] = {"summary": summary, "rows": rows}
        print(f"adaptive-linf-{n_keys}keys", json.dumps(summary), flush=True)

    # benign clients
    x_test = ds.x_test
    benign: dict[str, Any] = {}
    for max_dups in [3, *args.sensitivity]:
        n_clients = args.benign if max_dups == 3 else args.benign // 4
        det = QueryDetector(config, secret=0, embedding_dim=256)
        rng = np.random.default_rng(max_dups)
        flagged, logged, n_queries, latencies, cpu, worst = 0, 0, 0, [], [], []
        for c in range(n_clients):
            queries, _ = benign_client(x_test, rng, max_dups)
            embs = embed(torch.stack(queries))
            decisions = []
            for i, q in enumerate(queries):
                arr = q.numpy()
                t, tc = time.perf_counter(), time.thread_time()
                decisions.append(det.observe(f"benign-{c}", arr, embedding=embs[i], now=c + i))
                cpu.append(time.thread_time() - tc)
                latencies.append(time.perf_counter() - t)
            n_queries += len(queries)
            flagged += any(d.severity >= FLAG for d in decisions)
            logged += any(d.severity >= 1 for d in decisions)
            worst.append(max(d.matches for d in decisions))
        row = {
            "clients": n_clients,
            "queries": n_queries,
            "flagged": flagged / n_clients,
            "flagged_clients": flagged,
            "logged": logged / n_clients,
            "max_matches_hist": np.bincount(worst).tolist(),
        }
        if max_dups == 3:
            row["latency_us"] = percentiles(latencies)
            row["cpu_us"] = percentiles(cpu)
            row["memory_bytes"] = det.memory_bytes()
            row["keys_held"] = len(det)
        benign[f"dups-0-{max_dups}"] = row
        print(f"benign dups 0-{max_dups}", json.dumps(row), flush=True)
    out["benign"] = benign

    # steady state: one key whose buffers are full (history = 128), attack queries
    det = QueryDetector(config, secret=0, embedding_dim=256)
    rec = Recording(model)
    Square(threats["linf"], queries=1000, early_stop=False, seed=0)(
        rec, ds.x_test[:1], ds.y_test[:1]
    )
    embs = embed(torch.stack(rec.rows))
    wall, cpu = [], []
    for i, q in enumerate(rec.rows):
        arr = q.numpy()
        t, tc = time.perf_counter(), time.thread_time()
        det.observe("steady", arr, embedding=embs[i], now=float(i))
        cpu.append(time.thread_time() - tc)
        wall.append(time.perf_counter() - t)
    out["steady_state"] = {
        "queries": len(wall) - 200,
        "latency_us": percentiles(wall[200:]),
        "cpu_us": percentiles(cpu[200:]),
    }
    # constant work: two keys with full buffers; one query matching all 128 held queries, the
    # other none, interleaved, the same number of times
    det = QueryDetector(config, secret=0, embedding_dim=256)
    rng = np.random.default_rng(7)
    digit = x_test[0]
    alike = [near_duplicate(digit, rng)[1] for _ in range(1000)]
    others = list(x_test[1:1000])
    feed(det, ["alike"], alike[:128], embed(torch.stack(alike[:128])), 0.0)
    feed(det, ["others"], others[:128], embed(torch.stack(others[:128])), 0.0)
    probes = {"alike": alike[128:], "others": others[128:]}
    probe_embs = {k: embed(torch.stack(v)) for k, v in probes.items()}
    cpu_by: dict[str, list[float]] = {"alike": [], "others": []}
    matches_by: dict[str, list[int]] = {"alike": [], "others": []}
    for i in range(len(probes["others"])):
        for key in ("alike", "others") if i % 2 else ("others", "alike"):
            arr = probes[key][i].numpy()
            tc = time.thread_time()
            d = det.observe(key, arr, embedding=probe_embs[key][i], now=1.0 + i)
            cpu_by[key].append(time.thread_time() - tc)
            matches_by[key].append(d.matches)
    out["constant_work"] = {
        key: {"median_matches": float(np.median(matches_by[key])), "cpu_us": percentiles(v)}
        for key, v in cpu_by.items()
    }
    # embedding cost, one input at a time
    times = []
    for i in range(500):
        t = time.perf_counter()
        embed(x_test[i : i + 1])
        times.append(time.perf_counter() - t)
    out["embedding_us"] = percentiles(times)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    return {
        "median": float(np.median(us)),
        "p99": float(np.percentile(us, 99)),
        "max": float(us.max()),
    }


def print_table(out: dict[str, Any]) -> None:
    print("\n| campaign | n | flagged | median q. to flag | blocked | median q. to block | "
          "attack success | success before flag |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c in out["campaigns"].items():
        s = c["summary"]
        print(
            f"| {name} | {s['campaigns']} | {s['flagged']:.0%} | {s['median_queries_to_flag']} | "
            f"{s['blocked']:.0%} | {s['median_queries_to_block']} | {s['attack_success']:.0%} | "
            f"{s['success_before_flag']:.0%} |"
        )
    print("\n| benign near-duplicates per digit | clients | queries | flagged | logged |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, b in out["benign"].items():
        print(
            f"| {name} | {b['clients']} | {b['queries']} | {b['flagged']:.2%} "
            f"({b['flagged_clients']}) | {b['logged']:.1%} |"
        )
    b = out["benign"]["dups-0-3"]
    print("\n| observe() latency, µs | median | p99 | max |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in (
        ("benign stream, wall", b["latency_us"]),
        ("benign stream, thread CPU", b["cpu_us"]),
        ("full buffer (128 held), wall", out["steady_state"]["latency_us"]),
        ("full buffer (128 held), thread CPU", out["steady_state"]["cpu_us"]),
        ("embedding function (not included above), wall", out["embedding_us"]),
    ):
        print(f"| {name} | {row['median']:.0f} | {row['p99']:.0f} | {row['max']:.0f} |")
    print(f"\nmemory of {b['keys_held']} benign keys: {b['memory_bytes'] / 1e6:.1f} MB")
    for row in out["constant_work"].values():
        c = row["cpu_us"]
        print(
            f"full buffer, probes matching {row['median_matches']:.0f} held queries (median): "
            f"thread CPU median {c['median']:.0f} µs, p99 {c['p99']:.0f} µs"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--campaigns", type=int, default=50)
    ap.add_argument("--benign", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--sensitivity", type=int, nargs="*", default=[4, 6, 8])
    ap.add_argument("--step", type=float, default=DetectorConfig.quantization_step)
    ap.add_argument("--window", type=int, default=DetectorConfig.window)
    ap.add_argument("--tau", type=float, default=DetectorConfig.embedding_threshold)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detection.json")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(args.out.read_text())["results"])
        return
    out = run(args)
    write_results(args, out, print_table)


if __name__ == "__main__":
    main()
