"""Synthetic guard request logs in the contract's format (one JSONL file per worker), a spec
with a ``monitor`` section, and a webhook receiver on 127.0.0.1 (a real HTTP server)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

T0 = 1_700_000_000.0


def predict_record(
    i: int,
    rng: random.Random,
    *,
    shift: float = 0.0,
    key: str = "app",
    role: str = "client",
    model: str = "digits:v1",
    flag: bool = False,
    abstain_p: float = 0.05,
    n: int = 4,
    status: int = 200,
) -> dict[str, Any]:
    """The ``i``-th predict record (ts ``T0 + i/100``): input mean N(0.3 + 0.05·shift, 0.05²),
    anomaly score N(1 + shift, 0.2²) per input, abstention with probability ``abstain_p``."""
    preds = []
    for _ in range(n):
        score = rng.gauss(1.0 + shift, 0.2)
        preds.append(
            {
                "label": rng.randrange(10),
                "confidence": min(1.0, max(0.0, rng.gauss(0.9 - 0.05 * shift, 0.03))),
                "score": score,
                "abstain": rng.random() < abstain_p,
                "sha256": f"{i:064x}",
            }
        )
    return {
        "event": "predict",
        "ts": T0 + i / 100,
        "request_id": f"{i:08x}",
        "key": key,
        "role": role,
        "status": status,
        "decision": "predict",
        "action": "flag" if flag else "ok",
        "flags": ["rate"] if flag else [],
        "latency_ms": abs(rng.gauss(3.0, 0.5)),
        "input_sha256": f"{i:064x}",
        "model": model,
        "weights_sha256": "ab" * 32,
        "n": n,
        "predictions": preds,
        "stats": {
            "mean": rng.gauss(0.3 + 0.05 * shift, 0.05),
            "std": 0.3,
            "min": 0.0,
            "max": 1.0,
        },
    }


def stream(
    n: int, *, shift_at: int | None = None, shift: float = 5.0, seed: int = 0, **kw: Any
) -> list[dict[str, Any]]:
    """``n`` records, shifted by ``shift`` standard deviations from request ``shift_at`` on."""
    rng = random.Random(seed)
    return [
        predict_record(i, rng, shift=shift if shift_at is not None and i >= shift_at else 0.0, **kw)
        for i in range(n)
    ]


def write_log(folder: Path, records: list[dict[str, Any]], name: str = "host-1-1.jsonl") -> Path:
    """Append ``records`` as JSON lines to ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


def monitor_section(tmp: Path, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A ``monitor`` section over ``tmp/log`` with state ``tmp/monitor.db`` and a 100-request
    calibration window."""
    return {
        "request_log": str(tmp / "log"),
        "state": str(tmp / "monitor.db"),
        "poll_seconds": 0.05,
        "calibration": {"requests": 100},
        "rules": rules,
        **extra,
    }


SCORE_RULE = {
    "name": "score-up",
    "signal": "anomaly_score",
    "detector": "cusum",
    "cooldown_requests": 100000,
}


@dataclass
class Receiver:
    """A webhook receiver: every POST's JSON body and headers (recorded on arrival, before the
    answer); answers ``fail_first`` POSTs with 500, then 200. ``arrived`` is set by every
    recorded POST; while ``hold`` is set, the next recorded POST gets no answer until
    ``release`` is set (a POST in flight, for a test to kill its sender then)."""

    fail_first: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def ids(self) -> list[str]:
        """Alert ids in arrival order (with repeats)."""
        with self.lock:
            return [p["id"] for p in self.posts]

    def duplicates_while_in_flight(self) -> int:
        """POSTs of an id already received (what a deduping receiver drops)."""
        ids = self.ids
        return len(ids) - len(set(ids))


@contextmanager
def receiver(fail_first: int = 0) -> Iterator[Receiver]:
    """A :class:`Receiver` listening on 127.0.0.1 (a free port) while the block runs."""
    rec = Receiver(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                failing = rec.fail_first > 0
                if failing:
                    rec.fail_first -= 1
                else:
                    rec.posts.append(json.loads(body))
                    rec.headers.append(dict(self.headers))
            held = False
            if not failing:
                with rec.lock:
                    held = rec.hold.is_set()
                    rec.hold.clear()
                rec.arrived.set()
            if held:
                rec.release.wait(30)
                return  # its sender is gone: no answer
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
