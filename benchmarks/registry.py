"""The governance registry: "which version held production at time T" and ``history`` with
100 000 alias events in SQLite, and registering a 50 MB weights file against the time to
sha256 it.

Run from the repository root::

    python benchmarks/registry.py [--events 100000] [--mb 50] [--repeats 7] \\
        [--out benchmarks/results/registry.json]

* **Queries.** A fresh SQLite registry (``Registry.open``: migrations, WAL) with 1 000 versions
  of model ``m`` and ``--events`` moves of ``m:production``, one every 10 s, plus one audit
  event per move and per version. The versions and the moves are bulk-inserted rows
  (``executemany``), not ``register`` / ``move_alias`` calls (100 000 gated promotions would
  take minutes and measure the writes, not the queries); the audit events are sealed and signed
  for real, so ``audit verify`` passes on the result and its speed is reported too. The same
  number of moves of 99 other aliases is inserted as well, so that the queried alias holds half
  of the table. Timed through the library (``Registry.alias_at``, ``Registry.history``), each
  the median over ``--repeats`` rounds of 50 seeded random times (alias-at) or of one call.
* **Register.** ``--repeats`` distinct safetensors files of ``--mb`` MB (10 float32 tensors).
  Each is hashed (``hashlib.file_digest``, warm page cache) and then registered as a new
  version (copy into the artifact store with fsync, tensor-content hash, git lookup, the
  database transaction with its signed audit event); ratio = median register / median sha256.
  The parts are timed separately as well: ``ArtifactStore.put_file`` (hash + copy + fsync),
  the same copy without fsync, and ``tensor_sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import torch
from safetensors.torch import save_file

from robustops._util import environment
from robustops.registry import artifacts as artifacts_mod
from robustops.registry.artifacts import ArtifactStore
from robustops.registry.audit import format_time, seal
from robustops.registry.models import (
    Alias,
    AliasEvent,
    AuditEventRow,
    ChainHead,
    ModelVersion,
)
from robustops.registry.service import Registry, tensor_sha256

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def build_history(reg: Registry, n_events: int, n_versions: int = 1000) -> dict[str, Any]:
    """Bulk-insert the versions, ``n_events`` moves of m:production (and as many of 99 other
    aliases) and their signed audit events; returns what was built."""
    t_build = time.perf_counter()
    engine = reg.store.engine
    key = reg.store.key
    with reg.store.read() as s:
        head = s.get(ChainHead, 1)
        assert head is not None
        last = s.scalars(sa.select(AuditEventRow).order_by(AuditEventRow.seq.desc())).first()
    versions = [
        {
            "id": i,
            "name": "m",
            "version": i,
            "weights_sha256": hashlib.sha256(f"w{i}".encode()).hexdigest(),
            "weights_size": 1 << 20,
            "data": {},
            "recipe": {},
            "metrics": {},
            "robustops_version": "bench",
            "environment": {},
            "description": "",
            "registered_by": "root",
            "registered_at": format_time(T0),
        }
        for i in range(1, n_versions + 1)
    ]
    rng = random.Random(0)
    events: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []
    previous: Any = last
    for v in versions:
        previous = seal(
            previous, format_time(T0), "root", "register", f"m@{v['id']}", {"bench": True}, key
        )
        audit.append(previous.as_row())
    held: dict[str, int | None] = {}
    for i in range(2 * n_events):
        alias = "production" if i % 2 == 0 else f"alias{i % 99}"
        model = "m"
        at = format_time(T0 + timedelta(seconds=5 * i))
        vid = rng.randrange(1, n_versions + 1)
        previous = seal(
            previous, at, "eng", "alias", f"{model}:{alias}", {"version": f"m@{vid}"}, key
        )
        audit.append(previous.as_row())
        events.append(
            {
                "id": i + 1,
                "model_name": model,
                "alias": alias,
                "version_id": vid,
                "previous_version_id": held.get(alias),
                "kind": "promote",
                "actor": "eng",
                "reason": "",
                "at": at,
                "audit_seq": previous.seq,
            }
        )
        held[alias] = vid
    t_seal = time.perf_counter() - t_build
    with engine.begin() as conn:
        conn.execute(sa.insert(ModelVersion.__table__), versions)
        conn.execute(sa.insert(AliasEvent.__table__), events)
        last_of: dict[str, dict[str, Any]] = {e["alias"]: e for e in events}
        conn.execute(
            sa.insert(Alias.__table__),
            [
                {
                    "model_name": "m",
                    "alias": a,
                    "version_id": e["version_id"],
                    "moved_at": e["at"],
                    "event_id": e["id"],
                }
                for a, e in last_of.items()
            ],
        )
        conn.execute(sa.insert(AuditEventRow.__table__), audit)
        conn.execute(
            sa.update(ChainHead.__table__)
            .where(ChainHead.__table__.c.id == 1)
            .values(seq=previous.seq, hash=previous.hash, signature=previous.signature)
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return {
        "versions": n_versions,
        "alias_events": len(events),
        "production_events": n_events,
        "audit_events": previous.seq,
        "seal_s": round(t_seal, 2),
        "build_s": round(time.perf_counter() - t_build, 2),
        "first": events[0]["at"],
        "last": events[-1]["at"],
    }


def bench_queries(reg: Registry, n_events: int, repeats: int) -> dict[str, Any]:
    built = build_history(reg, n_events)
    rng = random.Random(1)
    span = 10 * n_events
    times = [format_time(T0 + timedelta(seconds=rng.uniform(-100, span + 100))) for _ in range(50)]
    # Correctness of what is timed: alias_at agrees with a scan of the history.
    hist = reg.history("m", "production")
    assert len(hist) == n_events
    for t in times[:5]:
        want = next((e.version_id for e in hist if e.at <= t), None)
        got = reg.alias_at("m", "production", t)
        assert (got.id if got else None) == want, t
    per_at, rounds = _median(lambda: [reg.alias_at("m", "production", t) for t in times], repeats)
    out: dict[str, Any] = {"built": built, "alias_at_ms": round(1000 * per_at / len(times), 3)}
    out["alias_at_rounds_ms"] = [round(1000 * r / len(times), 3) for r in rounds]
    for limit in (20, 1000):
        t, _ = _median(lambda limit=limit: reg.history("m", "production", limit), repeats)
        out[f"history_limit_{limit}_ms"] = round(1000 * t, 3)
    t, _ = _median(lambda: reg.history("m", "production"), max(3, repeats // 2))
    out[f"history_all_{n_events}_ms"] = round(1000 * t, 1)
    stmt = (
        sa.select(AliasEvent.__table__)
        .where(AliasEvent.model_name == "m", AliasEvent.alias == "production")
        .order_by(AliasEvent.at.desc(), AliasEvent.id.desc())
    )

    def rows() -> int:
        with reg.store.engine.connect() as conn:
            return len(conn.execute(stmt).all())

    t, _ = _median(rows, max(3, repeats // 2))
    out[f"history_all_{n_events}_as_plain_rows_ms"] = round(1000 * t, 1)
    t, _ = _median(lambda: reg.history("m", "alias7"), repeats)
    out["history_all_of_a_small_alias_ms"] = round(1000 * t, 3)
    out["history_small_alias_events"] = len(reg.history("m", "alias7"))
    t, _ = _median(lambda: reg.verify_audit(), 3)
    verdict = reg.verify_audit()
    assert verdict.ok, verdict
    out["audit_verify_events_per_s"] = round(verdict.events_checked / t)
    return out


def _weights(path: Path, seed: int, mb: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    n = mb * 1_000_000 // 4 // 10
    save_file({f"layer{i}.weight": torch.randn(n, generator=g) for i in range(10)}, str(path))
    return path


def bench_register(reg: Registry, folder: Path, mb: int, repeats: int) -> dict[str, Any]:
    files = [_weights(folder / f"w{i}.safetensors", i, mb) for i in range(repeats)]
    size = files[0].stat().st_size
    for f in files:  # warm the page cache for every timing alike
        f.read_bytes()

    def digest(f: Path) -> str:
        with open(f, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    it = iter(range(10**6))
    sha_t = statistics.median(_median(lambda f=f: digest(f), 1)[0] for f in files for _ in range(3))
    reg_times = []
    for f in files:
        os.sync()  # each timing starts without other files' dirty pages to flush
        t = time.perf_counter()
        v = reg.register("root", "big", f)
        reg_times.append(time.perf_counter() - t)
        assert v.weights_sha256 == digest(f) and v.state_sha256
    reg_t = statistics.median(reg_times)

    def put(f: Path) -> None:
        store = ArtifactStore(folder / f"store{next(it)}")
        os.sync()
        t = time.perf_counter()
        store.put_file(f)
        put_times.append(time.perf_counter() - t)

    put_times: list[float] = []

    for f in files:
        put(f)
    put_t = statistics.median(put_times)
    put_times.clear()
    real_fsync = os.fsync
    artifacts_mod.os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        for f in files:
            put(f)
    finally:
        artifacts_mod.os.fsync = real_fsync  # type: ignore[assignment]
    put_nosync_t = statistics.median(put_times)
    write_times = []
    data = files[0].read_bytes()
    for i in range(repeats):
        os.sync()
        t = time.perf_counter()
        with open(folder / f"plain{i}", "wb") as fh:
            fh.write(data)
            os.fsync(fh.fileno())
        write_times.append(time.perf_counter() - t)
    tensor_t = statistics.median(_median(lambda f=f: tensor_sha256(f), 1)[0] for f in files)
    return {
        "bytes": size,
        "sha256_ms": round(1000 * sha_t, 1),
        "sha256_MB_per_s": round(size / sha_t / 1e6),
        "register_ms": round(1000 * reg_t, 1),
        "register_rounds_ms": [round(1000 * r, 1) for r in reg_times],
        "ratio": round(reg_t / sha_t, 2),
        "put_file_ms": round(1000 * put_t, 1),
        "put_file_without_fsync_ms": round(1000 * put_nosync_t, 1),
        "tensor_sha256_ms": round(1000 * tensor_t, 1),
        "plain_write_and_fsync_ms": round(1000 * statistics.median(write_times), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/registry.json")
    ap.add_argument("--only", choices=["queries", "register"], help="run one half only")
    args = ap.parse_args()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="robustops-bench-", dir=ROOT / "benchmarks") as tmp:
        queries: dict[str, Any] = {}
        register: dict[str, Any] = {}
        if args.only != "register":
            reg = Registry.open(Path(tmp) / "q")
            reg.add_principal("root", "root", "admin")
            queries = bench_queries(reg, args.events, args.repeats)
            reg.close()
        if args.only != "queries":
            reg = Registry.open(Path(tmp) / "r")
            reg.add_principal("root", "root", "admin")
            register = bench_register(reg, Path(tmp), args.mb, args.repeats)
            reg.close()
    load.append(os.getloadavg()[0])
    out = {
        "queries": queries,
        "register": register,
        "load_average_before_after": load,
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    q, r = queries, register
    if q:
        print(f"built {q['built']}")
        print(f"alias_at (production at T), {args.events} moves: {q['alias_at_ms']} ms per query")
        for k in (
            "history_limit_20_ms",
            "history_limit_1000_ms",
            f"history_all_{args.events}_ms",
            f"history_all_{args.events}_as_plain_rows_ms",
        ):
            print(f"{k}: {q[k]}")
        print(f"history of an alias with {q['history_small_alias_events']} moves: ", end="")
        print(f"{q['history_all_of_a_small_alias_ms']} ms")
        print(f"audit verify: {q['audit_verify_events_per_s']} events/s")
    if r:
        print(
            f"register {r['bytes'] / 1e6:.1f} MB: {r['register_ms']} ms vs sha256 "
            f"{r['sha256_ms']} ms = {r['ratio']}x (put_file {r['put_file_ms']} ms, without "
            f"fsync {r['put_file_without_fsync_ms']} ms; tensor hash {r['tensor_sha256_ms']} ms; "
            f"plain write + fsync {r['plain_write_and_fsync_ms']} ms)"
        )
    print(f"load average {load}; written to {args.out}")


if __name__ == "__main__":
    main()
