"""The guard's request log files, alias following and canary keys.

In process (uvicorn in a thread on 127.0.0.1): every field of a ``predict`` line with its type,
``input`` only with ``log_inputs``, text statistics, a file that cannot be written (the answer
is given, the failure counted), a canary key's exemption from the detector's throttle (but not
from its rate limit), a request in flight during a swap (it finishes on the old guard), the
follower's failures (registry unreachable, a version that does not load). Over the wire: ``robustops serve --version NAME:ALIAS`` with 2 workers on a
real registry in a tmp folder: one file per worker, the alias moved (the workers follow it:
``/v1/model``, answers, log lines, ``model-swap`` lines, ``model_info``), a version whose
weights do not match their hash (the workers keep the old one and count the failure), and a
canary key the detector would block.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from robustops.models import mlp, save_weights
from robustops.registry.service import Registry
from robustops.serving.abstention import fit_abstainer
from robustops.serving.app import create_app
from robustops.serving.config import AbstentionConfig, DetectionConfig, ServeConfig
from robustops.serving.detection import GuardDetector, detector_secret
from robustops.serving.follow import AliasFollower, GuardSlot, VersionRef
from robustops.serving.guard import Guard
from robustops.serving.keys import KeyStore
from robustops.serving.limits import MemoryLimiter
from robustops.serving.metrics import GuardMetrics
from robustops.serving.requestlog import RequestLog
from serving.fuzz_helpers import threaded_server, tiny_served_model
from serving.server_helpers import DIGITS_SPEC, HIGH_LIMITS, SRC, TESTS, free_port

from .conftest import GuardServer

HEX64 = set("0123456789abcdef")


def _sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX64


def check_predict_line(r: dict[str, Any]) -> None:
    """Assert that ``r`` has every field of the contract with its type."""
    assert r["event"] == "predict"
    assert isinstance(r["ts"], float) and abs(r["ts"] - time.time()) < 600
    assert isinstance(r["request_id"], str) and len(r["request_id"]) == 32
    assert isinstance(r["key"], str) and r["role"] in ("client", "canary", "admin")
    assert isinstance(r["status"], int)
    assert r["decision"] in (
        "predict", "abstain", "rate-limited", "invalid", "busy", "limiter-unavailable"
    )  # fmt: skip
    assert r["action"] in ("ok", "log", "flag", "throttle", "block")
    assert isinstance(r["flags"], list) and all(isinstance(f, str) for f in r["flags"])
    assert isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0
    assert isinstance(r["model"], str) and r["model"]
    assert _sha(r["weights_sha256"])
    assert isinstance(r["n"], int)
    parsed = r["decision"] in ("predict", "abstain") or (r["decision"] == "busy" and r["n"] > 0)
    if parsed:
        assert _sha(r["input_sha256"]) and r["n"] >= 1
        stats = r["stats"]
        assert set(stats) in ({"mean", "std", "min", "max"}, {"chars", "non_ascii", "invisible"})
        assert all(isinstance(v, float) for v in stats.values())
    else:
        assert r["input_sha256"] == "" and r["n"] == 0 and "stats" not in r
    if r["decision"] in ("predict", "abstain"):
        preds = r["predictions"]
        assert len(preds) == r["n"]
        for p in preds:
            assert set(p) == {"label", "confidence", "score", "abstain", "sha256"}
            assert isinstance(p["label"], int) and isinstance(p["abstain"], bool)
            assert isinstance(p["confidence"], float) and 0.0 <= p["confidence"] <= 1.0
            assert p["score"] is None or isinstance(p["score"], float)
            assert _sha(p["sha256"])
        assert (r["decision"] == "abstain") == any(p["abstain"] for p in preds)
    else:
        assert "predictions" not in r


def read_lines(folder: Path) -> dict[Path, list[dict[str, Any]]]:
    """Every complete JSON line of every ``*.jsonl`` file in ``folder``, by file."""
    out: dict[Path, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # a partial last line is still being written
        out[path] = [json.loads(line) for line in complete.splitlines() if line]
    return out


def predict_lines(folder: Path) -> list[dict[str, Any]]:
    return [r for lines in read_lines(folder).values() for r in lines if r["event"] == "predict"]


# --- in process ---------------------------------------------------------------------------------


def _scored_guard(tmp: Path, config: ServeConfig) -> Guard:
    """The tiny MLP with a real energy abstainer (alpha 0.05 on 40 random inputs) and, when
    enabled, the real detector."""
    model = tiny_served_model(temperature=1.5)
    calibration = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    abstainer = fit_abstainer(model, config.abstention, calibration)
    detector = GuardDetector(config.detection, detector_secret(tmp), "image")
    return Guard(model, config, detector=detector, abstainer=abstainer)


def _config(min_confidence: float | None = None, **kw: Any) -> ServeConfig:
    return ServeConfig(
        abstention=AbstentionConfig(
            alpha=0.05, calibration_samples=40, min_confidence=min_confidence
        ),
        detection=DetectionConfig(flag_at=2, throttle_at=3, block_at=5, window=4),
        **kw,
    )


def _image(value: float) -> list[list[list[float]]]:
    return [[[value] * 8 for _ in range(8)]]


def test_predict_lines_have_every_contract_field(tmp_path: Path) -> None:
    config = _config(min_confidence=0.5, log_inputs=True)  # an untrained model: all abstain
    guard = _scored_guard(tmp_path, config)
    keys = KeyStore(tmp_path / "keys.db")
    key = keys.add("alice")
    folder = tmp_path / "requests"
    app = create_app(guard, keys, MemoryLimiter(1e9, 10**9), request_log=RequestLog(folder))
    gen = torch.Generator().manual_seed(3)
    batch = torch.rand(3, 1, 8, 8, generator=gen)
    with threaded_server(app) as url, httpx.Client(base_url=url, headers={"X-API-Key": key}) as c:
        ok = c.post("/v1/predict", json={"inputs": batch.tolist()})
        single = c.post("/v1/predict", json={"inputs": _image(0.25)})  # no batch axis
        bad = c.post("/v1/predict", json={"inputs": [[1, 2]]})
    assert [ok.status_code, single.status_code, bad.status_code] == [200, 200, 422]
    files = read_lines(folder)
    assert len(files) == 1
    ((path, lines),) = files.items()
    host, pid, ms = path.stem.rsplit("-", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert abs(int(ms) / 1e3 - time.time()) < 600
    assert [r["event"] for r in lines] == ["predict"] * 3
    for r in lines:
        check_predict_line(r)
    first, one, invalid = lines
    assert first["key"] == "alice" and first["role"] == "client" and first["n"] == 3
    assert first["request_id"] == ok.json()["request_id"]
    assert first["model"] == "tiny@1" and first["weights_sha256"] == "0" * 64
    # label, confidence (temperature 1.5) and the abstainer's energy score of each input
    logits = guard.model.logits(batch)
    probs = torch.softmax(logits / 1.5, dim=1)
    energy = -torch.logsumexp(logits, dim=1)
    for i, p in enumerate(first["predictions"]):
        assert p["label"] == int(probs[i].argmax())
        assert p["confidence"] == pytest.approx(float(probs[i].max()), abs=1e-5)
        assert p["score"] == pytest.approx(float(energy[i]), abs=1e-4)
        assert p["sha256"] == hashlib.sha256(batch[i].numpy().tobytes()).hexdigest()
    assert first["stats"]["mean"] == pytest.approx(float(batch.double().mean()), abs=1e-6)
    assert first["stats"]["min"] == pytest.approx(float(batch.min()), abs=1e-6)
    assert first["input"] == batch.tolist()
    assert one["n"] == 1 and one["input"] == [_image(0.25)] and one["stats"]["std"] == 0.0
    assert invalid["status"] == 422 and invalid["decision"] == "invalid" and "input" not in invalid
    # an abstained input keeps its predicted label in the log (the answer has null)
    assert first["decision"] == "abstain" and all(p["abstain"] for p in first["predictions"])
    assert [p["label"] for p in ok.json()["predictions"]] == [None] * 3


def test_inputs_are_not_logged_by_default_and_text_stats(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.db")
    key = keys.add("bob")
    model = tiny_served_model(
        modality="text", input_shape=None, logits=lambda texts: torch.zeros(len(texts), 10)
    )
    guard = Guard(model, ServeConfig(detection=DetectionConfig(enabled=False)))
    folder = tmp_path / "requests"
    app = create_app(guard, keys, MemoryLimiter(1e9, 10**9), request_log=RequestLog(folder))
    texts = ["hello", "pay\u200bpal l\u00f6gin"]  # a zero-width space, an umlaut
    with threaded_server(app) as url:
        got = httpx.post(f"{url}/v1/predict", json={"texts": texts}, headers={"X-API-Key": key})
    assert got.status_code == 200
    (r,) = predict_lines(folder)
    check_predict_line(r)
    assert "input" not in r and r["n"] == 2
    total = sum(map(len, texts))
    assert r["stats"] == pytest.approx(
        {"chars": total / 2, "non_ascii": 2 / total, "invisible": 1 / total}, abs=1e-6
    )
    assert all(p["score"] is None for p in r["predictions"])  # no abstainer: no score


def test_a_log_file_that_cannot_be_written_does_not_fail_requests(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.db")
    admin, key = keys.add("ops", "admin"), keys.add("carol")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    guard = Guard(tiny_served_model(), ServeConfig(detection=DetectionConfig(enabled=False)))
    request_log = RequestLog(blocker)
    app = create_app(guard, keys, MemoryLimiter(1e9, 10**9), request_log=request_log)
    with threaded_server(app) as url:
        codes = [
            httpx.post(
                f"{url}/v1/predict", json={"inputs": _image(0.5)}, headers={"X-API-Key": key}
            ).status_code
            for _ in range(3)
        ]
        metrics = httpx.get(f"{url}/metrics", headers={"X-API-Key": admin}).text
    assert codes == [200, 200, 200] and request_log.errors == 3
    assert "robustops_guard_request_log_errors_total 3.0" in metrics
    # a partial line left by a failed write is ended before the next line
    folder = tmp_path / "requests"
    partial = RequestLog(folder)
    assert partial.write('{"event":"predict"}')
    assert partial.path is not None
    with partial.path.open("a") as f:
        f.write('{"event":"pre')  # what a write cut short leaves
    partial._failed = True
    partial.close()
    assert partial.write('{"event":"model-swap"}')
    assert partial.path.read_text().splitlines()[-1] == '{"event":"model-swap"}'


def test_canary_key_is_not_throttled_by_the_detector_but_is_rate_limited(tmp_path: Path) -> None:
    config = _config()
    guard = _scored_guard(tmp_path, config)
    keys = KeyStore(tmp_path / "keys.db")
    canary, client = keys.add("probe", "canary"), keys.add("mallory")
    folder = tmp_path / "requests"
    slot = GuardSlot(guard)
    app = create_app(slot, keys, MemoryLimiter(1e-6, 8), request_log=RequestLog(folder))
    body = {"inputs": _image(0.5)}  # the same input again and again: a probing pattern
    with threaded_server(app) as url:
        c_codes = [
            httpx.post(f"{url}/v1/predict", json=body, headers={"X-API-Key": canary})
            for _ in range(9)
        ]
        m_codes = [
            httpx.post(f"{url}/v1/predict", json=body, headers={"X-API-Key": client}).status_code
            for _ in range(8)
        ]
    assert [r.status_code for r in c_codes[:8]] == [200] * 8
    assert c_codes[8].status_code == 429  # the rate limit (burst 8) still applies
    assert c_codes[7].json()["flagged"] is True
    assert 429 in m_codes and 403 in m_codes  # the same queries from a client: throttled, blocked
    lines = predict_lines(folder)
    for r in lines:
        check_predict_line(r)
    canary_lines = [r for r in lines if r["key"] == "probe"]
    assert {r["role"] for r in canary_lines} == {"canary"}
    assert [r["status"] for r in canary_lines] == [200] * 8 + [429]
    # the log records what the detector chose, though it was not applied
    assert {"throttle", "block"} <= {r["action"] for r in canary_lines}
    assert canary_lines[-1]["decision"] == "rate-limited"


def test_requests_in_flight_finish_on_the_old_guard(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    plain = tiny_served_model().logits

    def slow(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        assert release.wait(30)
        return plain(x)

    config = ServeConfig(detection=DetectionConfig(enabled=False))
    old = Guard(tiny_served_model(version="tiny@1", logits=slow), config)
    new = Guard(tiny_served_model(version="tiny@2", weights_sha256="1" * 64), config)
    keys = KeyStore(tmp_path / "keys.db")
    key = {"X-API-Key": keys.add("dave")}
    slot = GuardSlot(old)
    folder = tmp_path / "requests"
    app = create_app(slot, keys, MemoryLimiter(1e9, 10**9), request_log=RequestLog(folder))
    body = {"inputs": _image(0.5)}
    with threaded_server(app) as url, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/v1/predict", json=body, headers=key, timeout=60)
        assert entered.wait(30)  # the first request is in the old model
        slot.swap(new)
        assert httpx.get(f"{url}/v1/model", headers=key).json()["version"] == "tiny@2"
        second = httpx.post(f"{url}/v1/predict", json=body, headers=key)
        release.set()
        first = pending.result()
    assert first.json()["model"]["version"] == "tiny@1"
    assert second.json()["model"] == {
        "name": "tiny", "version": "tiny@2", "weights_sha256": "1" * 64
    }  # fmt: skip
    lines = {r["request_id"]: r for r in predict_lines(folder)}
    assert lines[first.json()["request_id"]]["model"] == "tiny@1"
    assert lines[first.json()["request_id"]]["weights_sha256"] == "0" * 64
    assert lines[second.json()["request_id"]]["model"] == "tiny@2"


def test_follower_keeps_the_old_guard_when_it_cannot_load(tmp_path: Path) -> None:
    config = ServeConfig(detection=DetectionConfig(enabled=False))
    guards = {
        v: Guard(tiny_served_model(version=f"tiny@{v}", weights_sha256=str(v) * 64), config)
        for v in (1, 2, 3)
    }
    slot = GuardSlot(guards[1])
    points: list[Any] = [OSError("registry down")]
    loads: list[str] = []

    def resolve() -> VersionRef:
        if isinstance(points[0], Exception):
            raise points[0]
        return VersionRef(f"tiny@{points[0]}", str(points[0]) * 64)

    def load(ref: VersionRef) -> Guard:
        loads.append(ref.label)
        if ref.label == "tiny@2":
            raise ValueError("weights: sha256 mismatch")
        return guards[int(ref.label[-1])]

    folder = tmp_path / "requests"
    metrics = GuardMetrics(guards[1].model.describe())
    follower = AliasFollower(
        slot, resolve, load, interval=0.05, request_log=RequestLog(folder), metrics=metrics
    )
    assert not follower.check() and not follower.check()  # unreachable twice: logged once
    points[0] = 2
    assert not follower.check() and not follower.check()  # a bad version: loaded once
    assert slot.guard is guards[1] and loads == ["tiny@2"]
    events = [r for lines in read_lines(folder).values() for r in lines]
    assert [(r["event"], r["result"], r["to"]) for r in events] == [
        ("model-swap-failed", "registry-unreachable", None),
        ("model-swap-failed", "load-failed", "tiny@2"),
    ]
    assert "sha256 mismatch" in events[1]["error"] and events[1]["from"] == "tiny@1"
    snap = {
        (s.name, tuple(s.labels.items())): s.value
        for f in metrics.collect_registry().collect()
        for s in f.samples
    }
    assert snap[("robustops_guard_model_swaps_total", (("result", "registry-unreachable"),))] == 2
    assert snap[("robustops_guard_model_swaps_total", (("result", "load-failed"),))] == 1
    points[0] = 3  # the alias moved on: the thread picks it up
    follower.start()
    try:
        deadline = time.monotonic() + 10
        while slot.guard is not guards[3]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        follower.stop()
    swap = [r for lines in read_lines(folder).values() for r in lines][-1]
    assert swap["event"] == "model-swap" and (swap["from"], swap["to"]) == ("tiny@1", "tiny@3")
    assert swap["weights_sha256"] == "3" * 64 and swap["load_seconds"] >= 0
    assert metrics.identity["version"] == "tiny@3"
    assert slot.current[1]["version"] == "tiny@3"


# --- over the wire: robustops serve on a registry alias ------------------------------------------

MODEL = "tiny-digits"


def _weights(root: Path, seed: int) -> Path:
    path = root / "w" / f"mlp-{seed}.safetensors"
    save_weights(mlp(input_dim=64, hidden=[32], num_classes=10, seed=seed).eval(), path)
    return path


class AliasServer:
    """``robustops serve --version tiny-digits:staging`` on a tmp registry (2 workers)."""

    def __init__(self, root: Path, follow_seconds: float = 0.2) -> None:
        self.root = root
        self.home = root / "registry"
        reg = Registry.open(self.home)
        reg.add_principal("root", "root", "admin")
        reg.add_principal("root", "eng", "engineer")
        self.versions = [reg.register("eng", MODEL, _weights(root, s)) for s in (0, 1, 2)]
        reg.move_alias("eng", f"{MODEL}@1", "staging")
        self.reg = reg
        self.requests = root / "guard" / "requests"
        keys_path = root / "guard" / "keys.db"
        store = KeyStore(keys_path)
        self.keys = {n: store.add(n, r) for n, r in {"ops": "admin", "c": "client"}.items()}
        self.keys["canary"] = store.add("canary", "canary")
        self.keys["x"] = store.add("x", "client")
        spec = {
            **DIGITS_SPEC,
            "model": {**DIGITS_SPEC["model"], "weights": str(_weights(root, 0))},
            "serve": {
                "state_dir": str(root / "guard"),
                "keys": str(keys_path),
                "limits": HIGH_LIMITS,
                "request_log": str(self.requests),
                "follow_seconds": follow_seconds,
                "abstention": {"alpha": 0.05, "calibration_samples": 100},
                "detection": {"flag_at": 2, "throttle_at": 3, "block_at": 4, "window": 4},
            },
        }
        spec_path = root / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)])
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "robustops", "serve", "--spec", str(spec_path)]
        cmd += ["--version", f"{MODEL}:staging", "--registry", str(self.home)]
        cmd += ["--port", str(self.port), "--workers", "2"]
        self.log = root / "server.log"
        with self.log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.server = GuardServer(
            url=f"http://127.0.0.1:{self.port}",
            port=self.port,
            proc=proc,
            root=root,
            keys_path=keys_path,
            log_path=self.log,
            workers=2,
        )
        self.url = self.server.url

    def predict(self, key: str = "c", value: float | None = None) -> httpx.Response:
        """One request on a fresh connection (either worker may take it): an image of pixels
        ``value``, or (default) of random pixels, which the detector does not link."""
        image = _image(value) if value is not None else torch.rand(1, 8, 8).tolist()
        return httpx.post(
            f"{self.url}/v1/predict",
            json={"inputs": image},
            headers={"X-API-Key": self.keys[key]},
            timeout=30,
        )

    def model(self) -> dict[str, Any]:
        got = httpx.get(f"{self.url}/v1/model", headers={"X-API-Key": self.keys["c"]}, timeout=30)
        return dict(got.json())

    def move(self, version: int) -> None:
        self.reg.move_alias("eng", f"{MODEL}@{version}", "staging")

    def first_answer_from(self, version: int, timeout: float = 30.0) -> float:
        """Seconds until an answer names ``version`` (requests every 20 ms)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            r = self.predict()
            if r.status_code == 200 and r.json()["model"]["version"] == f"{MODEL}@{version}":
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"no answer from {MODEL}@{version} in {timeout} s:\n{self.tail()}")

    def all_on(self, version: int, timeout: float = 30.0) -> None:
        """Wait until 20 answers in a row (fresh connections: both workers) name ``version``."""
        deadline, streak = time.monotonic() + timeout, 0
        while streak < 20:
            assert time.monotonic() < deadline, self.tail()
            ok = self.model()["version"] == f"{MODEL}@{version}"
            streak = streak + 1 if ok else 0

    def tail(self) -> str:
        return self.server.log_tail(30)


@pytest.fixture(scope="module")
def alias_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AliasServer]:
    s = AliasServer(tmp_path_factory.mktemp("alias"))
    try:
        s.server.wait_ready()
        yield s
    finally:
        s.server.stop()
        s.reg.close()


def test_two_workers_write_two_files(alias_server: AliasServer) -> None:
    pids = set(alias_server.server.worker_pids())
    assert len(pids) == 2
    for _ in range(200):  # fresh connections until both workers have answered
        assert alias_server.predict().status_code == 200
        files = read_lines(alias_server.requests)
        writers = {p for p, lines in files.items() if any(r["event"] == "predict" for r in lines)}
        if len(writers) == 2:
            break
    assert len(writers) == 2, alias_server.tail()
    assert {int(p.stem.rsplit("-", 2)[1]) for p in writers} == pids
    for lines in files.values():
        for r in lines:
            if r["event"] == "predict":
                check_predict_line(r)
                assert r["model"] == f"{MODEL}@1"


def test_canary_key_over_the_wire(alias_server: AliasServer) -> None:
    codes = [alias_server.predict("canary", 0.125).status_code for _ in range(12)]
    assert codes == [200] * 12  # 6+ per worker: past block_at (4) in both
    other = [alias_server.predict("x", 0.125).status_code for _ in range(12)]
    assert 403 in other
    mine = [r for r in predict_lines(alias_server.requests) if r["key"] == "canary"]
    assert len(mine) == 12 and {r["role"] for r in mine} == {"canary"}
    assert "block" in {r["action"] for r in mine}


def test_the_workers_follow_the_alias(alias_server: AliasServer) -> None:
    s = alias_server
    s.all_on(1)
    v1, v2 = s.versions[0], s.versions[1]
    moved_at = time.time()
    s.move(2)
    first = s.first_answer_from(2)
    s.all_on(2)
    info = s.model()
    assert info["weights_sha256"] == v2.weights_sha256 and info["name"] == "tiny-digits"
    after = s.predict()
    assert after.json()["model"] == {
        "name": "tiny-digits", "version": f"{MODEL}@2", "weights_sha256": v2.weights_sha256
    }  # fmt: skip
    files = read_lines(s.requests)
    swaps = [r for lines in files.values() for r in lines if r["event"] == "model-swap"]
    assert len(swaps) == 2  # one per worker
    for r in swaps:
        assert r["from"] == f"{MODEL}@1" and r["to"] == f"{MODEL}@2" and r["ts"] >= moved_at
        assert r["weights_sha256"] == v2.weights_sha256
        assert isinstance(r["load_seconds"], float) and 0 < r["load_seconds"] < 60
    later = [r for r in predict_lines(s.requests) if r["ts"] > max(r["ts"] for r in swaps)]
    assert later and {r["model"] for r in later} == {f"{MODEL}@2"}
    assert {r["weights_sha256"] for r in later} == {v2.weights_sha256}
    assert all(r["model"] == f"{MODEL}@1" for r in predict_lines(s.requests) if r["ts"] < moved_at)
    metrics = httpx.get(f"{s.url}/metrics", headers={"X-API-Key": s.keys["ops"]}).text
    assert f'version="{MODEL}@2",weights_sha256="{v2.weights_sha256}"}} 1.0' in metrics
    assert f'version="{MODEL}@1",weights_sha256="{v1.weights_sha256}"}} 0.0' in metrics
    assert 'robustops_guard_model_swaps_total{result="ok"} 2.0' in metrics
    # back and forth: the time from the move to the first answer of the new version
    times = [first]
    for version in (1, 2):
        s.move(version)
        times.append(s.first_answer_from(version))
    print(f"alias move -> first answer from the new version: {[round(t, 2) for t in times]} s")
    assert statistics.median(times) < 15


def test_a_version_with_bad_weights_is_not_served(alias_server: AliasServer) -> None:
    s = alias_server
    s.all_on(2)
    v3 = s.versions[2]
    path = s.reg.store.artifacts.path(v3.weights_sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the stored weights: their hash no longer matches
    path.write_bytes(bytes(data))
    s.move(3)
    deadline = time.monotonic() + 30
    failed: list[dict[str, Any]] = []
    while len(failed) < 2:  # one per worker
        assert time.monotonic() < deadline, s.tail()
        assert s.predict().json()["model"]["version"] == f"{MODEL}@2"
        files = read_lines(s.requests)
        failed = [r for lines in files.values() for r in lines if r["event"] == "model-swap-failed"]
        time.sleep(0.1)
    for r in failed:
        assert r["from"] == f"{MODEL}@2" and r["to"] == f"{MODEL}@3"
        assert r["result"] == "load-failed" and r["error"]
    s.all_on(2)
    metrics = httpx.get(f"{s.url}/metrics", headers={"X-API-Key": s.keys["ops"]}).text
    assert 'robustops_guard_model_swaps_total{result="load-failed"} 2.0' in metrics
    assert '"event":"model-swap-failed"' in s.log.read_text()  # on stderr too
