"""The guard's detector: embedding similarity tapped from the model's forward pass, the
cross-key signal, and per-key state shared by several workers through the SQLite log
(in process, then a real 2-worker ``robustops serve`` against a 1-worker one)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from robustops.serving.config import DetectionConfig, ServeConfig
from robustops.serving.detection import (
    FeatureTap,
    GuardDetector,
    SqliteDetectorLog,
    calibrate_threshold,
)
from robustops.serving.guard import Guard, Request
from robustops.serving.model import ServedModel, module_logits
from serving.conftest import GuardServer, launch_server


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _guard(cfg: DetectionConfig, secret: bytes, log: SqliteDetectorLog | None, clock) -> Guard:
    """One "worker": its own copy of the model with its own tap, a detector on ``log``."""
    net = _net()
    served = ServedModel(
        name="tiny", modality="image", logits=module_logits(net), num_classes=10,
        input_shape=(1, 8, 8),
    )  # fmt: skip
    tap = FeatureTap(net, dim=32, seed=secret)
    det = GuardDetector(cfg, secret, "image", tap=tap, log=log, clock=clock)
    return Guard(served, ServeConfig(detection=cfg), detector=det)


def _campaign(n: int, seed: int = 2) -> list[torch.Tensor]:
    """Square-like probes: one 8x8 image with one 2x2 patch redrawn each time."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, 8, 8, generator=gen)
    out = []
    for _ in range(n):
        probe = base.clone()
        r, c = torch.randint(0, 7, (2,), generator=gen).tolist()
        probe[..., r : r + 2, c : c + 2] = torch.rand(2, 2, generator=gen)
        out.append(probe)
    return out


def _actions(guards: list[Guard], key: str, probes: list[torch.Tensor]) -> list[str]:
    return [
        guards[i % len(guards)].handle(key, guards[0].parse({"inputs": p.tolist()})).action
        for i, p in enumerate(probes)
    ]


def test_the_tap_reads_the_forward_pass_the_guard_ran() -> None:
    net = _net()
    tap = FeatureTap(net, dim=16, seed=b"s")
    assert tap.layer == "1"  # the first nn.Linear: its input is the flattened image
    x = torch.rand(3, 1, 8, 8)
    module_logits(net)(x)
    e = tap.take(3)
    assert e is not None and e.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=2e-3)
    assert tap.take(3) is None  # consumed: a later request never reads a stale batch
    np.testing.assert_allclose(tap.embed(x), e)  # same projection, same numbers


def test_the_threshold_is_a_quantile_of_distinct_pairs_in_one_class() -> None:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((200, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    tau = calibrate_threshold(e, 0.01)
    sims = (e @ e.T)[np.triu_indices(200, 1)]
    assert abs((sims >= tau).mean() - 0.01) < 0.002
    groups = np.arange(200) % 2
    tau_g = calibrate_threshold(e, 0.01, groups)
    same = (e @ e.T)[np.triu_indices(200, 1)][(groups[:, None] == groups)[np.triu_indices(200, 1)]]
    assert abs((same >= tau_g).mean() - 0.01) < 0.003


def test_two_workers_on_the_shared_log_decide_like_one(tmp_path: Path) -> None:
    cfg = DetectionConfig(
        window=4, flag_at=5, throttle_at=12, block_at=20, embedding_threshold=0.95
    )
    t = iter(np.arange(0.0, 1e4, 1.0))

    def clock() -> float:
        return float(next(t))

    secret = b"k" * 32
    one = _guard(cfg, secret, None, clock)
    SqliteDetectorLog.prepare(tmp_path / "d.db")
    workers = [_guard(cfg, secret, SqliteDetectorLog(tmp_path / "d.db"), clock) for _ in range(2)]
    probes = _campaign(30)
    t = iter(np.arange(0.0, 1e4, 1.0))
    alone = _actions([one], "attacker", probes)
    t = iter(np.arange(0.0, 1e4, 1.0))
    split = _actions(workers, "attacker", probes)
    assert "flag" in alone and split == alone
    # a worker that starts later replays the shared rows: it holds the key where they left it
    late = _guard(cfg, secret, SqliteDetectorLog(tmp_path / "d.db"), clock)
    assert late.handle("attacker", late.parse({"inputs": probes[0].tolist()})).action == "block"
    # the per-key windows (not only the hold) are the same on both workers
    for w in workers:
        w.detector.sync()  # type: ignore[union-attr]
    states = [w.detector.detector._states["attacker"] for w in workers]  # type: ignore[union-attr]
    np.testing.assert_array_equal(states[0].sketch, states[1].sketch)
    np.testing.assert_array_equal(states[0].emb, states[1].emb)


def test_the_cross_key_signal_sees_a_campaign_spread_over_keys(tmp_path: Path) -> None:
    base = DetectionConfig(
        window=4, flag_at=5, throttle_at=None, block_at=None, embedding_threshold=0.95,
        cross_key_flag_at=None,
    )  # fmt: skip
    cross = base.model_copy(update={"cross_key_flag_at": 12})
    probes = _campaign(40, seed=5)
    firsts = []
    for cfg in (base, cross):
        g = _guard(cfg, b"k" * 32, None, iter(range(10**6)).__next__)
        outs = [
            g.handle(f"sybil-{i % 8}", g.parse({"inputs": p.tolist()}))
            for i, p in enumerate(probes)
        ]
        first = next((i for i, o in enumerate(outs) if o.action == "flag"), None)
        firsts.append((first, outs[first].flags if first is not None else []))
    (alone, _), (spread, flags) = firsts
    assert spread is not None and (alone is None or spread < alone)
    assert any("cross-key" in f for f in flags)
    # honest keys sending different images are not flagged by it
    g = _guard(cross, b"k" * 32, None, iter(range(10**6)).__next__)
    gen = torch.Generator().manual_seed(9)
    honest = [
        g.handle(f"honest-{i}", g.parse({"inputs": torch.rand(1, 1, 8, 8, generator=gen).tolist()}))
        for i in range(60)
    ]
    assert {o.action for o in honest} <= {"ok", "log"}


def test_canary_probes_never_count_against_other_keys(tmp_path: Path) -> None:
    """The canary attacks the canary set, which benign clients may send too: its queries are
    judged under its own name but never enter the cross-key ring, with one worker or with the
    shared log replayed by another."""
    cfg = DetectionConfig(
        window=4, flag_at=50, throttle_at=None, block_at=None, embedding_threshold=0.95,
        cross_key_flag_at=3,
    )  # fmt: skip
    probes = _campaign(30, seed=5)
    log_a = SqliteDetectorLog(tmp_path / "d.db")
    a = _guard(cfg, b"k" * 32, log_a, iter(range(10**6)).__next__)
    for p in probes[:20]:
        a.handle("canary", a.parse({"inputs": p.tolist()}), role="canary")
    b = _guard(cfg, b"k" * 32, SqliteDetectorLog(tmp_path / "d.db"), iter(range(10**6)).__next__)
    for g in (a, b):  # the same inputs from a client, on the worker that saw the probes or not
        outs = [g.handle("client", g.parse({"inputs": p.tolist()})) for p in probes[20:23]]
        assert not any("cross-key" in f for o in outs for f in o.flags)
    # the same probes from an ordinary key do count
    c = _guard(cfg, b"k" * 32, None, iter(range(10**6)).__next__)
    for p in probes[:20]:
        c.handle("sybil", c.parse({"inputs": p.tolist()}))
    out = c.handle("client", c.parse({"inputs": probes[20].tolist()}))
    assert any("cross-key" in f for f in out.flags)


# -- a real server: 2 workers sharing the state vs 1 worker ------------------------------------


DETECTION = {
    "window": 4,
    "flag_at": 5,
    "throttle_at": 12,
    "block_at": 20,
    "cross_key_flag_at": None,
}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, digits_weights: Path):
    """The digits MLP served with 2 workers sharing the SQLite state."""
    root = tmp_path_factory.mktemp("detect-two")
    limits = {"rate_per_second": 10_000.0, "burst": 10_000}
    serve = {"limits": limits, "state": {"backend": "sqlite"}, "detection": DETECTION}
    server = launch_server(root, digits_weights, serve, workers=2)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _one_worker(server: GuardServer) -> Guard:
    """What one worker alone decides: the same spec, secret and calibration in this process,
    with its own state (memory backend, nothing shared)."""
    from robustops.serve import ServeTarget, guard_for, served_model

    served = served_model(ServeTarget(spec=str(next(server.root.glob("*.yaml")))))
    served.config = served.config.model_copy(
        update={"state": served.config.state.model_copy(update={"backend": "memory"})}
    )
    return guard_for(served)


def _send(server: GuardServer, key: str, probes: list[torch.Tensor]) -> list[tuple[int, bool]]:
    """Each probe on a fresh connection (either worker may take it), in order."""
    out = []
    for p in probes:
        r = httpx.post(
            f"{server.url}/v1/predict",
            json={"inputs": p.tolist()},
            headers={"X-API-Key": key},
            timeout=30,
        )
        out.append((r.status_code, r.status_code == 200 and bool(r.json()["flagged"])))
    return out


def _first_flag(answers: list[tuple[int, bool]]) -> int | None:
    return next((i + 1 for i, (s, f) in enumerate(answers) if f or s in (429, 403)), None)


def test_a_campaign_split_over_two_workers_is_flagged_as_on_one(two_workers: GuardServer) -> None:
    from robustops.data import load_digits

    digits = load_digits().x_test
    probes = []
    gen = torch.Generator().manual_seed(4)
    for _ in range(16):  # near-duplicates of one test digit: one 2x2 patch redrawn
        p = digits[3:4].clone()
        r, c = torch.randint(0, 7, (2,), generator=gen).tolist()
        p[..., r : r + 2, c : c + 2] = torch.rand(2, 2, generator=gen)
        probes.append(p)
    two = _send(two_workers, two_workers.add_key("attacker"), probes)
    one = _one_worker(two_workers)
    alone = [one.handle("attacker", one.parse({"inputs": p.tolist()})).action for p in probes]
    first_alone = next((i + 1 for i, a in enumerate(alone) if a != "ok" and a != "log"), None)
    assert first_alone is not None
    assert _first_flag(two) == first_alone, (two, alone)
    # both workers answered the campaign (each writes its own request log)
    logs = (two_workers.root / "guard" / "requests").glob("*.jsonl")
    per_worker = [
        sum(json.loads(line).get("key") == "attacker" for line in f.read_text().splitlines())
        for f in logs
    ]
    assert sorted(n > 0 for n in per_worker) == [True, True], per_worker
    # honest clients: distinct digits, each re-sent with a little noise, are not flagged
    honest = []
    for c in range(12):
        rows = []
        for i in range(6):
            d = digits[20 + 6 * c + i : 21 + 6 * c + i]
            rows += [d, (d + 0.02 * torch.randn(d.shape, generator=gen)).clamp(0, 1)]
        honest.append((two_workers.add_key(f"honest-{c}"), rows))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda kr: _send(two_workers, *kr), honest))
    assert all(_first_flag(a) is None for a in answers)


def test_two_workers_on_redis_decide_like_one(redis_url: str) -> None:
    from robustops.serving.detection import RedisDetectorLog

    cfg = DetectionConfig(
        window=4, flag_at=5, throttle_at=12, block_at=20, embedding_threshold=0.95
    )
    t = iter(np.arange(0.0, 1e4, 1.0))

    def clock() -> float:
        return float(next(t))

    secret = b"r" * 32
    one = _guard(cfg, secret, None, clock)
    prefix = f"test:{np.random.default_rng().integers(1 << 30)}:"
    workers = [
        _guard(cfg, secret, RedisDetectorLog(redis_url, prefix=prefix), clock) for _ in range(2)
    ]
    probes = _campaign(30, seed=3)
    t = iter(np.arange(0.0, 1e4, 1.0))
    alone = _actions([one], "attacker", probes)
    t = iter(np.arange(0.0, 1e4, 1.0))
    split = _actions(workers, "attacker", probes)
    assert "flag" in alone and split == alone
    assert all(w.detector.log.errors == 0 for w in workers)  # type: ignore[union-attr]


@pytest.mark.parametrize("shared", [False, True], ids=["own-state", "sqlite-log"])
def test_requests_run_together_are_decided_as_one_at_a_time(tmp_path: Path, shared: bool) -> None:
    """A pass of several requests (the batcher's) gives every request the action, reasons and
    label it gets when the requests come one by one, in the same order."""
    cfg = DetectionConfig(window=4, flag_at=3, throttle_at=6, block_at=10, cross_key_flag_at=4)
    secret, now = b"same-secret", [1000.0]

    def log(name: str) -> SqliteDetectorLog | None:
        return SqliteDetectorLog(tmp_path / f"{name}.db") if shared else None

    alone = _guard(cfg, secret, log("alone"), lambda: now[0])
    together = _guard(cfg, secret, log("together"), lambda: now[0])
    for g in (alone, together):
        assert isinstance(g.detector, GuardDetector)
        g.detector.calibrate(torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(5)))
    probes = _campaign(24, seed=3) + _campaign(12, seed=4)
    keys = [f"k{i % 3}" for i in range(len(probes))]
    requests = [
        Request(k, alone.parse({"inputs": p.tolist()}), "canary" if i == 5 else "client")
        for i, (k, p) in enumerate(zip(keys, probes, strict=True))
    ]
    one = [alone.handle(r.key, r.batch, role=r.role) for r in requests]
    many = []
    for start in range(0, len(requests), 7):  # passes of 7, the last one shorter
        many += together.handle_many(requests[start : start + 7])
    assert [o.action for o in many] == [o.action for o in one]
    assert [o.flags for o in many] == [o.flags for o in one]
    assert {o.action for o in one} >= {"ok", "flag", "throttle"}  # the policy was exercised
    for a, b in zip(many, one, strict=True):
        assert [p.label for p in a.predictions] == [p.label for p in b.predictions]
        assert [p.sha256 for p in a.predictions] == [p.sha256 for p in b.predictions]
        assert a.input_sha256 == b.input_sha256 and a.stats == b.stats
        np.testing.assert_allclose(
            [p.confidence for p in a.predictions], [p.confidence for p in b.predictions], atol=1e-5
        )
