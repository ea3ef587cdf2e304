"""Audit log verification speed: events per second of ``verify_chain`` in fast mode (the head's
signature only) and in full mode (every signature), against the hashing floor.

Run from the repository root::

    python benchmarks/audit_verify.py [--n 100000] [--repeats 5] [--out benchmarks/results/audit_verify.json]

* ``--n`` events are sealed in memory with one key (varied actors, actions, subjects and
  payloads of ~150 bytes of canonical JSON, as the registry writes them); sealing is timed once.
* ``floor``: for every event, SHA-256 of its body bytes and of its link input (raw hash ‖ raw
  signature, concatenated in the loop), the bodies and raw bytes prepared beforehand, untimed.
  That is the hashing any verifier of this format must do, with nothing else than a ``for`` loop
  around it.
* ``fast``: ``verify_chain(events, keys)``, the whole call: reading the ten attributes of each
  event, building the body, comparing hex digests, checking the key id and the signature's
  form, and one Ed25519 verification. ``full``: the same with ``full=True`` (one Ed25519
  verification per event).
* The three run ``--repeats`` times, interleaved (round robin, rotating order); figures are
  medians, with wall and process CPU time. The target is fast ≥ 50 000 events/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from robustops._util import environment
from robustops.registry.audit import AuditEvent, AuditKey, seal, verify_chain

ROOT = Path(__file__).resolve().parent.parent
TARGET = 50_000
"""Fast-mode verification target, events per second."""
ACTIONS = ["register", "gate", "approve", "alias", "rollback", "vulnerability", "evaluation"]


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def build_events(n: int, key: AuditKey, seed: int = 0) -> list[AuditEvent]:
    """``n`` sealed events with varied fields, as the registry would write them."""
    rng = random.Random(seed)
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    events: list[AuditEvent] = []
    previous: AuditEvent | None = None
    for i in range(n):
        version = rng.randrange(1, 200)
        previous = seal(
            previous,
            t0 + timedelta(milliseconds=37 * i),
            rng.choice(["alice", "bob", "ci-bot", "zoë"]),
            rng.choice(ACTIONS),
            f"mnist-cnn@{version}",
            {
                "version": version,
                "artifact": hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
                "robust_accuracy": round(rng.random(), 4),
                "threat": "linf-0.3",
            },
            key,
        )
        events.append(previous)
    return events


def floor_runner(events: list[AuditEvent]) -> Callable[[], None]:
    """The hashing floor: SHA-256 of every body and of every link input, nothing else."""
    bodies = [e.body() for e in events]
    hashes = [bytes.fromhex(e.hash) for e in events]
    sigs = [bytes.fromhex(e.signature) for e in events]

    def run() -> None:
        sha256 = hashlib.sha256
        for body, h, s in zip(bodies, hashes, sigs, strict=True):
            sha256(body).digest()
            sha256(h + s).digest()

    return run


def measure(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Wall and CPU seconds of every runner, ``repeats`` times, interleaved in rotating order."""
    walls: dict[str, list[float]] = {name: [] for name in runners}
    cpus: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            w, c = time.perf_counter(), time.process_time()
            runners[name]()
            walls[name].append(time.perf_counter() - w)
            cpus[name].append(time.process_time() - c)
    return {
        name: {
            "median_s": statistics.median(walls[name]),
            "min_s": min(walls[name]),
            "cpu_median_s": statistics.median(cpus[name]),
            "wall_s": walls[name],
            "cpu_s": cpus[name],
        }
        for name in names
    }


def print_table(report: dict[str, Any]) -> None:
    n = report["n"]
    floor = report["methods"]["floor"]
    print(f"{n:,} events; sealing {report['seal_events_per_s']:,.0f} events/s")
    print(
        "| method | median wall (s) | events/s (wall) | events/s (CPU) | × floor time | Ed25519 checks |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m in report["methods"].items():
        print(
            f"| {name} | {m['median_s']:.4f} | {n / m['median_s']:,.0f} | "
            f"{n / m['cpu_median_s']:,.0f} | {m['median_s'] / floor['median_s']:.2f} | "
            f"{m.get('signatures_checked', '—')} |"
        )
    fast = n / report["methods"]["fast"]["median_s"]
    verdict = "met" if fast >= TARGET else "NOT met"
    print(f"target fast ≥ {TARGET:,} events/s: {fast:,.0f} ({verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/audit_verify.json")
    ap.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(args.out.read_text()))
        return
    load_before = _loadavg()
    key = AuditKey.generate()
    t = time.perf_counter()
    events = build_events(args.n, key)
    seal_s = time.perf_counter() - t
    keys = key.public_keys()
    verdicts: dict[str, Any] = {}

    def verifier(full: bool) -> Callable[[], None]:
        def run() -> None:
            verdict = verify_chain(events, keys, full=full)
            assert verdict.ok and verdict.events_checked == args.n, verdict
            verdicts["full" if full else "fast"] = verdict

        return run

    methods = measure(
        {"floor": floor_runner(events), "fast": verifier(False), "full": verifier(True)},
        args.repeats,
    )
    for name, verdict in verdicts.items():
        methods[name]["signatures_checked"] = verdict.signatures_checked
    payload_bytes = statistics.mean(len(e.payload.encode()) for e in events)
    body_bytes = statistics.mean(len(e.body()) for e in events)
    report = {
        "n": args.n,
        "repeats": args.repeats,
        "seal_s": seal_s,
        "seal_events_per_s": args.n / seal_s,
        "mean_payload_bytes": round(payload_bytes, 1),
        "mean_body_bytes": round(body_bytes, 1),
        "methods": methods,
        "fast_events_per_s": args.n / methods["fast"]["median_s"],
        "full_events_per_s": args.n / methods["full"]["median_s"],
        "floor_events_per_s": args.n / methods["floor"]["median_s"],
        "fast_over_floor_time": methods["fast"]["median_s"] / methods["floor"]["median_s"],
        "target_events_per_s": TARGET,
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "cpu_count": os.cpu_count(),
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
