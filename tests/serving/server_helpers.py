"""Real guard servers for the serving tests: ``robustops serve`` on a tiny digits MLP spec, or uvicorn
on :func:`stub_app` (a tiny model behind a stub detector and abstainer, so that flags and
abstentions happen on demand), each with several workers on a free loopback port, in a
subprocess whose log goes to a file. Also the in-process pieces those tests share.

Import as ``from serving.server_helpers import ...`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import Tensor, nn

from robustops.serving.config import ServeConfig
from robustops.serving.guard import Guard
from robustops.serving.keys import KeyStore
from robustops.serving.model import ServedModel, module_logits
from robustops.serving.validation import Batch
from spec_helpers import FGSM_EVALUATION, digits_mlp

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
STUB_ENV = "ROBUSTOPS_TEST_STUB"
DIM = 8

# A digits MLP spec like tests/registry/test_pipeline.py's (weights: digits_spec).
DIGITS_SPEC: dict[str, Any] = digits_mlp(evaluation=FGSM_EVALUATION, train=None)

HIGH_LIMITS = {"rate_per_second": 10_000.0, "burst": 10_000}


# --- the stub model, detector and abstainer --------------------------------------------------


class StubDetector:
    """Flags every request of a key whose name starts with ``prober`` (reason
    ``fingerprint: …``); a key starting with ``spread`` gets ``embedding: …`` too."""

    def observe(
        self, key: str, batch: Batch, embedding: Tensor | None, *, own: bool = False
    ) -> tuple[str, list[str]]:
        """See :class:`robustops.serving.guard.Detector`."""
        if key.startswith("prober"):
            return "flag", ["fingerprint: 4 near-duplicates in the last 50 queries"]
        if key.startswith("spread"):
            return "flag", ["fingerprint: 2 matches", "embedding: cosine 0.998"]
        return "ok", []


class StubAbstainer:
    """Abstains on an input whose mean pixel is above 0.9 (out-of-distribution) or below 0.1
    (low confidence), with reasons worded like the real abstainer's."""

    def __init__(self) -> None:
        self.last_means: Tensor | None = None

    def decide(self, logits: Tensor, features: Tensor | None) -> list[list[str]]:
        """See :class:`robustops.serving.guard.Abstainer`."""
        assert features is not None
        out: list[list[str]] = []
        for m in features.mean(dim=1).tolist():
            if m > 0.9:
                out.append(["out-of-distribution score 12.5 (energy) above threshold 7.1"])
            elif m < 0.1:
                out.append(["confidence 0.2100 below minimum 0.5000 (temperature 1.3)"])
            else:
                out.append([])
        return out


def stub_model(version: str = "tiny@3") -> ServedModel:
    """A random tiny MLP on ``DIM`` inputs in [0, 1]; its "features" are the inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    logits = module_logits(net)
    return ServedModel(
        name="tiny",
        modality="image",
        logits=logits,
        features=lambda x: (logits(x), x.reshape(x.shape[0], -1).float()),
        num_classes=3,
        version=version,
        weights_sha256="ab" * 32,
        input_shape=(DIM,),
        bounds=(0.0, 1.0),
        class_names=["a", "b", "c"],
    )


def stub_guard(config: ServeConfig) -> Guard:
    """The stub model behind the stub detector and abstainer."""
    return Guard(stub_model(), config, detector=StubDetector(), abstainer=StubAbstainer())


def stub_app() -> Any:
    """uvicorn factory (one per worker): the stub guard, settings from ``$ROBUSTOPS_TEST_STUB``
    (JSON: ``state_dir`` and ``keys``), its dashboard store in the state dir."""
    from robustops.serving.app import create_app
    from robustops.serving.dashboard import DashboardStore
    from robustops.serving.limits import MemoryLimiter

    settings = json.loads(os.environ[STUB_ENV])
    config = ServeConfig.model_validate({**settings, "limits": HIGH_LIMITS})
    store = DashboardStore(Path(config.state_dir) / "dashboard.db")
    return create_app(
        stub_guard(config),
        KeyStore(config.keys),
        MemoryLimiter(config.limits.rate_per_second, config.limits.burst),
        store=store,
    )


def inputs(mean: float, n: int = 1) -> dict[str, Any]:
    """A body of ``n`` stub inputs, all pixels ``mean``."""
    return {"inputs": [[mean] * DIM for _ in range(n)]}


# --- running servers --------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A server subprocess: its base URL, state folder, log file and API keys by name."""

    url: str
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, name: str) -> dict[str, str]:
        """The auth header of key ``name``."""
        return {"X-API-Key": self.keys[name]}

    def predict(self, name: str, body: dict[str, Any]) -> httpx.Response:
        """One prediction request on a fresh connection (so any worker may take it)."""
        return httpx.post(f"{self.url}/v1/predict", json=body, headers=self.headers(name))

    def get(self, path: str, name: str | None = None) -> httpx.Response:
        """GET ``path`` (with key ``name`` when given) on a fresh connection."""
        return httpx.get(f"{self.url}{path}", headers=self.headers(name) if name else {})

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)])
    return {**env, **extra}


def _wait_ready(server: LiveServer, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(
        f"the server was not ready in {timeout} s:\n{server.log.read_text()[-3000:]}"
    )


def _start(
    cmd: list[str], root: Path, state_dir: Path, port: int, env: dict[str, str]
) -> LiveServer:
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, state_dir, log)
    _wait_ready(server)
    return server


def _add_keys(path: Path, roles: dict[str, str]) -> dict[str, str]:
    store = KeyStore(path)
    return {name: store.add(name, role) for name, role in roles.items()}


def start_stub_server(root: Path, roles: dict[str, str], workers: int = 2) -> LiveServer:
    """uvicorn with ``workers`` processes on :func:`stub_app`, the multiprocess metrics in a
    fresh folder of ``root``; keys ``{name: role}`` made beforehand."""
    state = root / "guard"
    metrics = state / "metrics" / "run"
    metrics.mkdir(parents=True)
    keys = _add_keys(state / "keys.db", roles)
    port = free_port()
    settings = {"state_dir": str(state), "keys": str(state / "keys.db")}
    env = _env({STUB_ENV: json.dumps(settings), "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    cmd = [sys.executable, "-m", "uvicorn", "serving.server_helpers:stub_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--log-level", "warning"]
    server = _start(cmd, root, state, port, env)
    server.keys = keys
    return server


def digits_spec(root: Path) -> Path:
    """A tiny digits MLP spec in ``root`` with the MLP's seeded initial weights (the metrics do
    not care what it predicts, and training would cost seconds on a busy machine); its
    ``serve`` section keeps the guard's state under ``root/guard`` and lifts the rate limit out
    of the way."""
    import yaml

    from robustops.models import mlp, save_weights

    weights = root / "w" / "mlp.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(mlp(input_dim=64, hidden=[32], num_classes=10, seed=0).eval(), weights)
    spec = {
        **DIGITS_SPEC,
        "model": {**DIGITS_SPEC["model"], "weights": str(weights), "sha256": sha},
        "serve": {
            "state_dir": str(root / "guard"),
            "keys": str(root / "guard" / "keys.db"),
            "limits": HIGH_LIMITS,
        },
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_cli_server(root: Path, spec: Path, roles: dict[str, str], workers: int = 2) -> LiveServer:
    """``python -m robustops serve --spec SPEC --workers N --port FREE`` in ``root``."""
    keys = _add_keys(root / "guard" / "keys.db", roles)
    port = free_port()
    cmd = [sys.executable, "-m", "robustops", "serve", "--spec", str(spec)]
    cmd += ["--workers", str(workers), "--port", str(port)]
    server = _start(cmd, root, root / "guard", port, _env({}))
    server.keys = keys
    return server


def multiprocess_pids(server: LiveServer) -> set[str]:
    """The worker pids that counted something (their counter files in the metrics folder)."""
    return {p.stem.rsplit("_", 1)[1] for p in server.state_dir.glob("metrics/*/counter_*.db")}


def send_many(server: LiveServer, jobs: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Send ``(key name, body)`` requests from 8 threads, each on a fresh connection; the
    statuses in order."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job: server.predict(*job).status_code, jobs))


def running(server: LiveServer) -> Iterator[LiveServer]:
    """Yield ``server`` and stop it afterwards (for fixtures)."""
    try:
        yield server
    finally:
        server.stop()
