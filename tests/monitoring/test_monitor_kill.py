"""Kill the monitor mid-run (SIGKILL, twice, once while a webhook POST is in flight): it resumes
from its state without re-alerting or losing an alert, and a real HTTP receiver that dedupes by
alert id sees exactly the alerts an uninterrupted run raises."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from robustops.monitoring.config import MonitorConfig
from robustops.monitoring.monitor import Monitor

from .monitor_helpers import monitor_section, receiver, stream, write_log

from spec_helpers import digits_mlp, write_spec  # isort: skip

SRC = Path(__file__).resolve().parents[2] / "src"
N = 1400
CHUNK = 20

RULES: list[dict[str, Any]] = [
    {"name": "score-up", "signal": "anomaly_score", "cooldown_requests": 30},
    {"name": "input-drift", "signal": "input_mean", "direction": "both", "cooldown_requests": 30},
    {"name": "key-flags", "signal": "flag_rate_per_key", "severity": "critical"},
]


def _records() -> list[dict[str, Any]]:
    """Stable traffic with three 5σ campaigns (requests 400-479, 800-859, 1150-1209) and an
    attacker key flagged from 1000 on."""
    base = stream(N, seed=3)
    shifted = stream(N, seed=3, shift_at=0)
    rng = random.Random(4)
    out = []
    for i in range(N):
        r = shifted[i] if 400 <= i < 480 or 800 <= i < 860 or 1150 <= i < 1210 else base[i]
        r["key"] = "attacker" if i % 3 == 0 else "app"
        flagged = rng.random() < 0.2 or (r["key"] == "attacker" and i >= 1000)
        r["action"] = "flag" if flagged else "ok"
        out.append(r)
    return out


def _processed(state: Path) -> int:
    """Bytes of the log the monitor has committed (0 before its first commit)."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT COALESCE(SUM(offset), 0) FROM offsets").fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0


def _start(spec: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-m", "robustops", "monitor", "run", "--spec", str(spec), "--json"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait(
    cond: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}): {proc.stderr.read()!r}")  # type: ignore[union-attr]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_mid_run_neither_repeats_nor_loses_an_alert(tmp_path: Path) -> None:
    records = _records()

    # the uninterrupted run, in process, on the whole log
    ref = tmp_path / "ref"
    write_log(ref / "log", records)
    with Monitor(MonitorConfig.model_validate(monitor_section(ref, RULES)), sinks=[]) as mon:
        mon.run(once=True)
        expected = {a["id"]: a for a in mon.state.alerts()}
    assert len(expected) >= 4, "the stream should raise several alerts"
    assert {a["rule"] for a in expected.values()} == {"score-up", "input-drift", "key-flags"}

    live = tmp_path / "live"
    live.mkdir()
    total = sum(len(json.dumps(r)) + 1 for r in records)
    with receiver() as hook:
        section = monitor_section(live, RULES, webhooks=[{"url": hook.url}])
        spec = write_spec(live, digits_mlp(monitor=section))
        state = live / "monitor.db"

        written = threading.Event()

        def writer() -> None:
            for lo in range(0, N, CHUNK):
                write_log(live / "log", records[lo : lo + CHUNK])
                time.sleep(0.03)
            written.set()

        proc = _start(spec, live)
        try:
            _wait(lambda: (live / "monitor.db.lock").exists(), 60, "the monitor to start", proc)
            threading.Thread(target=writer, daemon=True).start()
            # kill 1: mid-stream, while it reads and commits
            _wait(lambda: _processed(state) > total * 0.3, 60, "30% processed", proc)
            proc.kill()
            proc.wait()
            # kill 2: while a webhook POST is in flight (the receiver has it, no answer yet)
            hook.arrived.clear()
            hook.hold.set()
            proc = _start(spec, live)
            _wait(hook.arrived.is_set, 60, "a webhook POST", proc)
            proc.kill()
            proc.wait()
            hook.release.set()
            # the last run: to the end of the log, every alert delivered, then SIGTERM
            proc = _start(spec, live)
            _wait(written.is_set, 60, "the writer")
            _wait(lambda: _processed(state) == total, 60, "the whole log", proc)

            def delivered() -> bool:
                with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
                    return (
                        db.execute(
                            "SELECT COUNT(*) FROM deliveries WHERE delivered_at IS NULL"
                        ).fetchone()[0]
                        == 0
                    )

            _wait(delivered, 60, "every delivery", proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    got = Counter(hook.ids)
    assert set(got) == set(expected), (
        "the receiver (deduping by id) saw exactly the reference alerts"
    )
    assert max(got.values()) <= 2
    assert hook.duplicates_while_in_flight() >= 1, "the POST cut by kill 2 was sent again"
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT id, payload_json FROM alerts").fetchall()
    assert {r[0] for r in rows} == set(expected), "the outbox holds each alert once"
    for aid, payload in rows:
        a, e = json.loads(payload), expected[aid]
        for k in ("rule", "key", "window", "statistic", "threshold", "examples", "detection"):
            assert a[k] == e[k], (aid, k)
