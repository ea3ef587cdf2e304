"""Attack-in-progress detection through HTTP: Square and HopSkipJump campaigns, benign clients and
an adaptive attacker against a live ``robustops serve`` of the MNIST model.

Run from the repository root::

    python benchmarks/guard_detection.py [--campaigns 50] [--benign 1000] [--adaptive 25]
                                         [--out benchmarks/results/guard_detection.json]
    python benchmarks/guard_detection.py --table-only

Set-up: ``configs/mnist.yaml``'s model with ``--weights``, plus a ``serve:`` section (keys and
state in a temporary folder, rate limits of 100 000/s so they never interfere, detection and
abstention at their defaults, **one worker**: with W workers each worker's detector sees about
1/W of a key's queries). The server runs as a ``robustops serve`` subprocess on a free loopback
port; every campaign and every benign client gets its own API key.

* **Campaigns** (one key each, one query per request so the flag is known per query): Square
  L∞ ε = 0.3 and L2 ε = 2.0 through ``RemoteClassifier(output="top1")`` (budget 500), and
  HopSkipJump L2 ε = 2.0 and L∞ ε = 0.3 through ``RemoteClassifier(output="labels")`` (budget
  1000), each on the first ``--campaigns`` test digits the model classifies correctly. Two
  regimes: ``full`` (``early_stop=False``: the attacker keeps going) and ``early-stop`` (the
  library default: it stops at its first adversarial query). A campaign ends at its budget or at
  the first 429/403 (the detector's throttle or block: rate limits are out of reach), which this
  attacker does not wait out. *First flag* = the 1-based index of the first query answered with
  ``"flagged": true`` or refused with 429/403. *Success before flag* = some query answered before
  the first flag lies in the threat's ε-ball (1e-4 slack) and was answered with a label other
  than the true one (an abstention is not counted as a success here; ``abstained`` is reported).
* **Benign clients** (``--benign``, one key each): ``detection.benign_client`` (3–8 test digits,
  each followed by 0–3 natural near-duplicates: shift ±2 px, noise σ 0.02–0.05, brightness ±0.1,
  contrast ×0.8–1.2, re-scan = blur + noise), one query per request. Flagged = any answer
  flagged or refused.
* **Adaptive attacker**: Square L∞ ε = 0.3, ``full``, budget 300, every query first shifted by a
  random −2..2 px and given Gaussian noise σ 0.05 (``detection.random_transform``), spread
  round-robin over 1 or 8 keys; a key that is refused (429/403) is dropped and replaced by a new
  one, the refused query re-sent on it (``keys_burned`` counts them). Success = the attack's
  final *untransformed* candidate is misclassified by the model (checked locally on the same
  weights), and also "some transformed query answered with a wrong label".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from common import write_results
from detection import benign_client, random_transform, trained_model
from robustops.attacks import HopSkipJump, Square
from robustops.data import load_mnist_subset
from robustops.models.remote import RemoteClassifier, RemoteError, _refusal
from robustops.serving.keys import KeyStore
from robustops.threats import ThreatModel

ROOT = Path(__file__).resolve().parent.parent


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``robustops serve`` on a free loopback port, from a copy of configs/mnist.yaml."""

    def __init__(
        self, folder: Path, weights: Path, workers: int = 1, detection: str = "default"
    ) -> None:
        spec = yaml.safe_load((ROOT / "configs/mnist.yaml").read_text())
        spec["model"]["weights"] = str(weights.resolve())
        spec["train"]["out"] = str(folder / "unused.safetensors")
        spec["serve"] = {
            "workers": workers,
            "keys": str(folder / "keys.db"),
            "state_dir": str(folder / "state"),
            "limits": {"rate_per_second": 100000, "burst": 100000},
            "request_log": str(folder / "requests"),
        }
        if detection == "fingerprints":  # the guard before embeddings and shared state
            spec["serve"]["detection"] = {"embedding": "off", "shared": False}
        self.spec_path = folder / "spec.yaml"
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.keys = KeyStore(folder / "keys.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "server.log", "wb")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "robustops", "serve", "--spec", str(self.spec_path)]
        cmd += ["--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        self.started = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {folder / 'server.log'}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.25)
        self.startup_seconds = time.perf_counter() - self.started
        self._n = 0

    def key(self, prefix: str) -> str:
        self._n += 1
        return self.keys.add(f"{prefix}-{self._n}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# -- recording client --------------------------------------------------------------------------


class Refused(RemoteError):
    """A 429 or 403: the detector's throttle or block (rate limits are set out of reach)."""


@dataclass
class Query:
    row: Tensor
    label: int | None  # None: abstained, or refused
    flagged: bool  # flagged, or refused
    status: int
    key: str


class Probe(RemoteClassifier):
    """A RemoteClassifier that records every query it sends (row, answer, flag, status) into a
    shared log, and raises :class:`Refused` at once on 429/403 instead of waiting."""

    def __init__(self, url: str, api_key: str, log: list[Query], **kw: Any) -> None:
        super().__init__(url, api_key, max_batch=1, **kw)
        self.log, self.key_name = log, api_key[:12]

    def _predict(self, chunk: Tensor) -> list[tuple[int | None, float]] | None:
        body = json.dumps({"inputs": chunk.tolist()}, separators=(",", ":")).encode()
        status, _, data = self._send("POST", "/v1/predict", body)
        self.requests += 1
        if status == 200:
            out = self._parse(data, len(chunk))
            flagged = bool(json.loads(data).get("flagged"))
            for row, (label, _) in zip(chunk, out, strict=True):
                self.log.append(Query(row.clone(), label, flagged, status, self.key_name))
            return out
        if status in (429, 403):
            self.log.append(Query(chunk[0].clone(), None, True, status, self.key_name))
            raise Refused(f"refused with {status}", status)
        raise _refusal(status, data)


class Spread(nn.Module):
    """The adaptive attacker's model: every row transformed, then sent on the next key in
    turn; a refused key is replaced by a fresh one and the row re-sent."""

    def __init__(self, make: Callable[[], Probe], n_keys: int, transform: Callable) -> None:
        super().__init__()
        self.make, self.transform = make, transform
        self.probes = [make() for _ in range(n_keys)]
        self.turn = self.burned = 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.transform(x)
        outs = []
        for row in x:
            while True:
                i = self.turn % len(self.probes)
                try:
                    outs.append(self.probes[i](row[None]))
                    break
                except Refused:
                    self.probes[i].close()
                    self.probes[i] = self.make()
                    self.burned += 1
            self.turn += 1
        return torch.cat(outs)


# -- campaigns ---------------------------------------------------------------------------------


def in_ball(row: Tensor, x0: Tensor, threat: ThreatModel) -> bool:
    d = (row - x0).flatten()
    norm = float(d.abs().max()) if threat.norm == "linf" else float(d.norm())
    return norm <= threat.epsilon + 1e-4


def summarise_log(log: list[Query], x0: Tensor, y: int, threat: ThreatModel) -> dict[str, Any]:
    first_flag = next((i + 1 for i, q in enumerate(log) if q.flagged), None)
    first_refusal = next((i + 1 for i, q in enumerate(log) if q.status != 200), None)
    wrong = [
        i + 1
        for i, q in enumerate(log)
        if q.status == 200 and q.label is not None and q.label != y and in_ball(q.row, x0, threat)
    ]
    first_success = wrong[0] if wrong else None
    return {
        "queries_sent": len(log),
        "first_flag": first_flag,
        "first_refusal": first_refusal,
        "refusal_status": log[first_refusal - 1].status if first_refusal else None,
        "first_success": first_success,
        "success": first_success is not None,
        "success_before_flag": first_success is not None
        and (first_flag is None or first_success < first_flag),
        "abstained": sum(q.status == 200 and q.label is None for q in log),
    }


def campaign(
    server: Server, attack: Any, output: str, x: Tensor, y: Tensor, budget: int
) -> dict[str, Any]:
    log: list[Query] = []
    probe = Probe(server.url, server.key("attack"), log, output=output, query_budget=budget)
    t = time.perf_counter()
    outcome = "budget"
    try:
        attack(probe, x, y)
        outcome = "finished"
    except Refused:
        outcome = "refused"
    except RemoteError as exc:  # the query budget, reached mid-call
        outcome = "budget" if "budget" in str(exc) else f"error: {exc}"
    finally:
        probe.close()
    row = summarise_log(log, x[0], int(y[0]), attack.threat)
    row.update(outcome=outcome, seconds=time.perf_counter() - t)
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    flags = [r["first_flag"] for r in rows if r["first_flag"] is not None]
    refusals = [r["first_refusal"] for r in rows if r["first_refusal"] is not None]
    return {
        "campaigns": n,
        "flagged": len(flags) / n,
        "median_queries_to_flag": statistics.median(flags) if flags else None,
        "max_queries_to_flag": max(flags) if flags else None,
        "refused": len(refusals) / n,
        "median_queries_to_refusal": statistics.median(refusals) if refusals else None,
        "success": sum(r["success"] for r in rows) / n,
        "success_before_flag": sum(r["success_before_flag"] for r in rows) / n,
        "median_queries_sent": statistics.median(r["queries_sent"] for r in rows),
        "abstentions": sum(r["abstained"] for r in rows),
        "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in {r["outcome"] for r in rows}},
        "seconds": sum(r["seconds"] for r in rows),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    ds = load_mnist_subset()
    model = trained_model(args.weights)
    with torch.no_grad():
        ok = model(ds.x_test).argmax(1) == ds.y_test
    idx = ok.nonzero().squeeze(1).tolist()
    out: dict[str, Any] = {"model": {"test_accuracy": float(ok.float().mean())}}
    folder = Path(tempfile.mkdtemp(prefix="guard-detection-"))
    server = Server(folder, args.weights, workers=args.workers, detection=args.detection)
    out["server"] = {"workers": args.workers, "startup_seconds": server.startup_seconds}
    try:
        # one benign digit first: the served labels agree with the local model
        probe = Probe(server.url, server.key("check"), [], output="labels")
        served = [a[0] for a in probe.answers(ds.x_test[:20])]
        local = model(ds.x_test[:20]).argmax(1).tolist()
        out["server"]["agree_first_20"] = sum(a == b for a, b in zip(served, local, strict=True))
        probe.close()

        linf = {"norm": "linf", "epsilon": 0.3}
        l2 = {"norm": "l2", "epsilon": 2.0}
        setups: list[tuple[str, Callable[[int, bool], Any], str, int]] = [
            (
                "square-linf",
                lambda s, e: Square(
                    _threat(linf, "score-based"), queries=500, early_stop=e, seed=s
                ),
                "top1",
                500,
            ),
            (
                "square-l2",
                lambda s, e: Square(_threat(l2, "score-based"), queries=500, early_stop=e, seed=s),
                "top1",
                500,
            ),
            (
                "hsj-l2",
                lambda s, e: HopSkipJump(
                    _threat(l2, "decision-based"), queries=1000, early_stop=e, seed=s
                ),
                "labels",
                1000,
            ),
            (
                "hsj-linf",
                lambda s, e: HopSkipJump(
                    _threat(linf, "decision-based"), queries=1000, early_stop=e, seed=s
                ),
                "labels",
                1000,
            ),
        ]
        out["campaigns"] = {}
        for regime, early in (("full", False), ("early-stop", True)):
            for name, make, output, budget in setups:
                rows = []
                for j, i in enumerate(idx[: args.campaigns]):
                    x, y = ds.x_test[i : i + 1], ds.y_test[i : i + 1]
                    rows.append(campaign(server, make(j, early), output, x, y, budget))
                s = summarise(rows)
                out["campaigns"][f"{name}-{regime}"] = {"summary": s, "rows": rows}
                print(f"{name}-{regime}", json.dumps(s), flush=True)

        # adaptive attacker
        threat = _threat(linf, "score-based")
        for n_keys in (1, 8):
            rows = []
            t = time.perf_counter()
            for j, i in enumerate(idx[: args.adaptive]):
                x, y = ds.x_test[i : i + 1], ds.y_test[i : i + 1]
                log: list[Query] = []
                rng = np.random.default_rng(1000 + j)

                def make(log: list[Query] = log) -> Probe:
                    return Probe(server.url, server.key("adaptive"), log, output="top1")

                spread = Spread(make, n_keys, random_transform(rng, 2, 0.05))
                res = Square(threat, queries=300, early_stop=False, seed=j)(spread, x, y)
                with torch.no_grad():
                    fooled = bool(model(res.adversarial).argmax(1)[0] != y[0])
                flagged_keys = {q.key for q in log if q.flagged}
                wrong = [q for q in log if q.status == 200 and q.label not in (None, int(y[0]))]
                rows.append(
                    {
                        "queries_sent": len(log),
                        "keys_used": len({q.key for q in log}),
                        "keys_flagged": len(flagged_keys),
                        "keys_burned": spread.burned,
                        "first_flag": next((k + 1 for k, q in enumerate(log) if q.flagged), None),
                        "fooled_untransformed": fooled,
                        "attack_success": bool(res.success[0]),
                        "wrong_label_answers": len(wrong),
                    }
                )
                for p in spread.probes:
                    p.close()
            n = len(rows)
            flags = [r["first_flag"] for r in rows if r["first_flag"] is not None]
            s = {
                "campaigns": n,
                "flagged": len(flags) / n,
                "median_queries_to_flag": statistics.median(flags) if flags else None,
                "keys_burned_mean": sum(r["keys_burned"] for r in rows) / n,
                "fooled_untransformed": sum(r["fooled_untransformed"] for r in rows) / n,
                "any_wrong_label_answer": sum(r["wrong_label_answers"] > 0 for r in rows) / n,
                "fooled_without_any_flag": sum(
                    r["fooled_untransformed"] and r["first_flag"] is None for r in rows
                )
                / n,
                "seconds": time.perf_counter() - t,
            }
            out["campaigns"][f"adaptive-square-linf-{n_keys}keys"] = {"summary": s, "rows": rows}
            print(f"adaptive-{n_keys}keys", json.dumps(s), flush=True)

        # benign clients
        rng = np.random.default_rng(3)
        t = time.perf_counter()
        flagged, refused, n_queries, kinds_flagged = 0, 0, 0, []
        for _c in range(args.benign):
            queries, kinds = benign_client(ds.x_test, rng, 3)
            log = []
            probe = Probe(server.url, server.key("benign"), log, output="labels")
            try:
                for q in queries:
                    probe(q[None])
            except Refused:
                refused += 1
            probe.close()
            n_queries += len(log)
            hit = next((k for k, q in enumerate(log) if q.flagged), None)
            if hit is not None:
                flagged += 1
                kinds_flagged.append(kinds[: hit + 1])
        out["benign"] = {
            "clients": args.benign,
            "queries": n_queries,
            "flagged": flagged / args.benign,
            "flagged_clients": flagged,
            "refused_clients": refused,
            "flagged_sequences": kinds_flagged[:10],
            "seconds": time.perf_counter() - t,
        }
        print("benign", json.dumps(out["benign"]), flush=True)
    finally:
        server.stop()
    out["wall_seconds"] = time.perf_counter() - t_all
    return out


def _threat(norm: dict[str, Any], knowledge: str) -> ThreatModel:
    return ThreatModel(name=norm["norm"], knowledge=knowledge, **norm)


def print_table(out: dict[str, Any]) -> None:
    print("\n| campaign | n | flagged | median q. to flag (max) | refused (429/403) | "
          "median q. to refusal | success (in ε, before refusal) | success before flag |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c in out["campaigns"].items():
        s = c["summary"]
        if name.startswith("adaptive"):
            continue
        print(
            f"| {name} | {s['campaigns']} | {s['flagged']:.0%} | "
            f"{s['median_queries_to_flag']} ({s['max_queries_to_flag']}) | {s['refused']:.0%} | "
            f"{s['median_queries_to_refusal']} | {s['success']:.0%} | "
            f"{s['success_before_flag']:.0%} |"
        )
    print("\n| adaptive | n | flagged | median q. to flag | keys burned (mean) | "
          "fooled (untransformed) | fooled, never flagged |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, c in out["campaigns"].items():
        if not name.startswith("adaptive"):
            continue
        s = c["summary"]
        print(
            f"| {name} | {s['campaigns']} | {s['flagged']:.0%} | {s['median_queries_to_flag']} | "
            f"{s['keys_burned_mean']:.1f} | {s['fooled_untransformed']:.0%} | "
            f"{s['fooled_without_any_flag']:.0%} |"
        )
    if "benign" in out:
        b = out["benign"]
        print(
            f"\nbenign: {b['clients']} clients, {b['queries']} queries, flagged "
            f"{b['flagged_clients']} ({b['flagged']:.2%}), refused {b['refused_clients']}, "
            f"{b['seconds']:.0f} s"
        )
    print(f"wall time {out.get('wall_seconds', 0):.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--campaigns", type=int, default=50)
    ap.add_argument("--benign", type=int, default=1000)
    ap.add_argument("--adaptive", type=int, default=25)
    ap.add_argument("--weights", type=Path, default=ROOT / "artifacts/mnist_small_cnn.safetensors")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    ap.add_argument(
        "--detection",
        choices=["default", "fingerprints"],
        default="default",
        help="fingerprints: embeddings and shared state off (the guard before them)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/guard_detection.json")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(args.out.read_text())["results"])
        return
    out = run(args)
    write_results(args, out, print_table)


if __name__ == "__main__":
    main()
