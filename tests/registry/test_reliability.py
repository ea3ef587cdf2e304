"""The registry under stress: concurrent writers in several processes, ``kill -9`` at random
points of register / gate / approve / promote / rollback, and tampering with the database's
audit rows behind the registry's back."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from robustops.cli import app
from robustops.registry.audit import AuditKey, seal
from robustops.registry.service import Registry

from .conftest import (
    ENG,
    MODEL,
    POLICY_TEXT,
    check_consistent,
    concurrent_promotions,
    gate_report,
    kill_worker,
    populate,
    write_result,
)

# -- concurrent writers ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_procs", [2, 8])
def test_concurrent_writers_on_sqlite(tmp_path: Path, mp_ctx: Any, n_procs: int) -> None:
    pop = populate(tmp_path / "home", tmp_path / "files")
    try:
        concurrent_promotions(mp_ctx, pop, None, n_procs)
    finally:
        pop.reg.close()


# -- kill -9 ---------------------------------------------------------------------------------------


def kill_loop(mp_ctx: Any, tmp_path: Path, n_kills: int, seed: int) -> dict[str, Any]:
    """Start a :func:`kill_worker`, SIGKILL it after a seeded random delay, check the whole
    store (:func:`check_consistent`), and again, ``n_kills`` times on one registry."""
    pop = populate(tmp_path / "home", tmp_path / "files")
    pop.ready(1)
    pop.reg.move_alias(ENG, "m@1", "production")
    reg = pop.reg  # the checks read through this process's connections, opened before any kill
    start = check_consistent(reg)
    rng = random.Random(seed)
    partial: set[str] = set()
    mid_copy = 0
    last_actions: Counter[str] = Counter()
    state = start
    for k in range(n_kills):
        ready = mp_ctx.Event()
        p = mp_ctx.Process(target=kill_worker, args=(str(pop.home), str(pop.files), k, ready))
        p.start()
        assert ready.wait(60), "the worker did not open the registry"
        time.sleep(rng.uniform(0.0, 0.4))
        p.kill()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL, f"kill {k}: the worker ended by itself"
        state = check_consistent(reg)
        now = {f.name for f in reg.store.artifacts.partial_files()}
        mid_copy += bool(now - partial)
        partial |= now
        last_actions[list(reg.audit_events())[-1].action] += 1
    reg.close()
    reopened = Registry.open(pop.home)  # and a fresh process-like open sees the same
    try:
        assert check_consistent(reopened) == state
    finally:
        reopened.close()
    # The kills interrupted real work: the registry grew between them.
    assert state["versions"] > start["versions"] and state["moves"] > start["moves"]
    stats = {**state, "kills mid-copy": mid_copy, "last event before a kill": dict(last_actions)}
    print(f"{n_kills} kills: {stats}")
    return stats


def test_kill_9_at_random_points_keeps_store_and_artifacts_consistent(
    mp_ctx: Any, tmp_path: Path
) -> None:
    kill_loop(mp_ctx, tmp_path, n_kills=50, seed=9)


# -- tampering with the database -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tamper_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry home with a few dozen events (copied for each tampering)."""
    base = tmp_path_factory.mktemp("tamper")
    pop = populate(base / "home", base / "files")
    for seed in range(1, 5):
        pop.ready(seed)
        pop.reg.move_alias(ENG, f"m@{seed}", "production")
    pop.reg.rollback(ENG, MODEL, "production")
    assert pop.reg.verify_audit(full=True).ok
    pop.reg.close()
    return base / "home"


def _copy(base: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(base, home)
    return home


def _sql(home: Path, *statements: str) -> None:
    conn = sqlite3.connect(home / "registry.db")
    with conn:
        for st in statements:
            conn.execute(st)
    conn.close()


def _verdict(home: Path, **kw: Any) -> Any:
    reg = Registry.open(home)
    try:
        return reg.verify_audit(full=True, **kw)
    finally:
        reg.close()


def _n_events(home: Path) -> int:
    conn = sqlite3.connect(home / "registry.db")
    (n,) = conn.execute("SELECT max(seq) FROM audit_events").fetchone()
    conn.close()
    return int(n)


TAMPERINGS = {
    # name: (statements with {k} the target seq, first bad seq relative to k)
    "edit payload": (
        ["UPDATE audit_events SET payload = replace(payload, '\"', '''') WHERE seq = {k}"],
        0,
    ),
    "edit actor": (["UPDATE audit_events SET actor = 'mallory' WHERE seq = {k}"], 0),
    "edit time": (
        ["UPDATE audit_events SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = {k}"],
        0,
    ),
    "edit hash": (["UPDATE audit_events SET hash = '{z}' WHERE seq = {k}"], 0),
    "edit signature": (
        ["UPDATE audit_events SET signature = substr(signature, 2) || '0' WHERE seq = {k}"],
        0,
    ),
    "delete": (["DELETE FROM audit_events WHERE seq = {k}"], 0),
    "insert copy": (
        [
            "UPDATE audit_events SET seq = seq + 100000 WHERE seq > {k}",
            "INSERT INTO audit_events SELECT seq + 1, at, actor, action, subject, payload, key_id, "
            "prev, hash, signature FROM audit_events WHERE seq = {k}",
            "UPDATE audit_events SET seq = seq - 100000 + 1 WHERE seq > 100000",
        ],
        1,
    ),
    "swap": (
        [
            "UPDATE audit_events SET seq = -1 WHERE seq = {k}",
            "UPDATE audit_events SET seq = {k} WHERE seq = {k} + 1",
            "UPDATE audit_events SET seq = {k} + 1 WHERE seq = -1",
        ],
        0,
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_sql_tampering_is_detected_at_the_first_bad_event(
    tamper_base: Path, tmp_path: Path, name: str
) -> None:
    statements, offset = TAMPERINGS[name]
    n = _n_events(tamper_base)
    rng = random.Random(name)
    for i, k in enumerate(sorted({2, n // 2, n - 1, rng.randrange(2, n - 1)})):
        home = _copy(tamper_base, tmp_path / str(i))
        _sql(home, *(st.format(k=k, z="0" * 64) for st in statements))
        verdict = _verdict(home)
        assert not verdict.ok, (name, k)
        assert verdict.first_bad_seq == k + offset, (name, k, verdict)


def test_deleting_the_newest_events_is_detected_by_the_chain_head(
    tamper_base: Path, tmp_path: Path
) -> None:
    home = _copy(tamper_base, tmp_path)
    n = _n_events(home)
    _sql(home, f"DELETE FROM audit_events WHERE seq >= {n - 1}")
    verdict = _verdict(home)
    assert not verdict.ok and verdict.first_bad_seq == n - 1, verdict


def test_a_chain_resigned_with_a_new_key_fails_when_pinned(
    tamper_base: Path, tmp_path: Path
) -> None:
    home = _copy(tamper_base, tmp_path)
    old = AuditKey.load_or_create(home / "keys" / "audit-ed25519.pem")
    new = AuditKey.generate()
    conn = sqlite3.connect(home / "registry.db")
    cols = "seq, at, actor, action, subject, payload"
    rows = conn.execute(f"SELECT {cols} FROM audit_events ORDER BY seq").fetchall()
    previous = None
    forged = []
    for seq, at, actor, action, subject, payload in rows:
        data = json.loads(payload)
        if action == "key":  # the forger records its own key as the registry's
            subject, data = new.key_id, {"public_key": new.public_hex}
        if action == "alias":
            data["reason"] = "rewritten history"
        previous = seal(previous, at, actor, action, subject, data, new)
        assert previous.seq == seq
        forged.append(previous)
    with conn:
        conn.execute("DELETE FROM audit_events")
        conn.executemany(
            "INSERT INTO audit_events (seq, at, actor, action, subject, payload, key_id, prev, "
            "hash, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [tuple(e.as_row().values()) for e in forged],
        )
        conn.execute(
            "INSERT INTO audit_keys (key_id, public_key, created_at) VALUES (?, ?, ?)",
            (new.key_id, new.public_hex, forged[0].at),
        )
        conn.execute(
            "UPDATE chain_head SET seq = ?, hash = ?, signature = ?",
            (forged[-1].seq, forged[-1].hash, forged[-1].signature),
        )
    conn.close()
    assert _verdict(home).ok  # a consistent forgery: only pinning the key catches it
    pinned = _verdict(home, pinned=old.key_id)
    assert not pinned.ok and pinned.first_bad_seq == 1, pinned
    r = CliRunner().invoke(
        app, ["registry", "audit", "verify", "--pin", old.key_id, "--home", str(home)]
    )
    assert r.exit_code == 1 and "audit log broken at event 1" in " ".join(r.output.split()), (
        r.output
    )


def test_cli_audit_verify_exits_1_naming_the_first_bad_event(
    tamper_base: Path, tmp_path: Path
) -> None:
    home = _copy(tamper_base, tmp_path)
    r = CliRunner().invoke(app, ["registry", "audit", "verify", "--home", str(home)])
    assert r.exit_code == 0 and "audit log intact" in r.output, r.output
    _sql(home, "UPDATE audit_events SET subject = 'm@4' WHERE seq = 7")
    for extra in ([], ["--full"]):
        r = CliRunner().invoke(app, ["registry", "audit", "verify", *extra, "--home", str(home)])
        assert r.exit_code == 1, r.output
        assert "audit log broken at event 7" in " ".join(r.output.split()), r.output


def test_policy_text_is_the_one_the_gate_reads(tmp_path: Path) -> None:
    """The kill loop's workers gate against this policy: a failing result must fail it."""
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY_TEXT)
    assert gate_report(write_result(tmp_path / "a.json", "a" * 64), policy)["passed"]
    assert not gate_report(write_result(tmp_path / "b.json", "b" * 64, passing=False), policy)[
        "passed"
    ]
