"""What the guard's fuzz and remote-model tests share: a tiny image model behind the guard,
in-process (an ASGI app with a known API key) or as a real ``robustops serve`` on a free port."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send
from torch import Tensor

from robustops.models import mlp
from robustops.serving.app import create_app
from robustops.serving.config import ServeConfig
from robustops.serving.guard import Abstainer, Detector, Guard
from robustops.serving.keys import KeyStore
from robustops.serving.limits import Limiter, MemoryLimiter
from robustops.serving.model import ServedModel, module_logits
from spec_helpers import FGSM_EVALUATION, digits_mlp

PYTHON = sys.executable
SRC = Path(__file__).resolve().parents[2] / "src"

# A digits MLP trained in seconds through the CLI, served with a `serve:` section.
SERVE_SPEC: dict[str, Any] = digits_mlp(
    "tiny",
    evaluation=FGSM_EVALUATION,
    serve={
        "keys": "guard/keys.db",
        "state_dir": "guard",
        "state": {"backend": "memory"},
        "detection": {"enabled": False},
        "abstention": {"enabled": False},
        "limits": {"rate_per_second": 100000, "burst": 100000},
    },
)


class RequestCounter:
    """ASGI middleware counting the HTTP requests that reach the app: in all, by status, and by
    ``(path, status)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.paths: dict[tuple[str, int], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.statuses[status] = self.statuses.get(status, 0) + 1
                where = (str(scope["path"]), status)
                self.paths[where] = self.paths.get(where, 0) + 1
            await send(message)

        await self.app(scope, receive, counted)


def tiny_served_model(**overrides: Any) -> ServedModel:
    """An untrained 64-16-10 MLP on ``(1, 8, 8)`` inputs in ``[0, 1]`` (digits-like)."""
    net = mlp(input_dim=64, hidden=(16,), num_classes=10, seed=0).eval()
    kwargs: dict[str, Any] = {
        "name": "tiny",
        "version": "tiny@1",
        "weights_sha256": "0" * 64,
        "modality": "image",
        "logits": module_logits(net),
        "num_classes": 10,
        "input_shape": (1, 8, 8),
        "bounds": (0.0, 1.0),
        "class_names": [str(i) for i in range(10)],
        **overrides,
    }
    return ServedModel(**kwargs)


@dataclass
class InProcessGuard:
    """The guard's ASGI app (wrapped in a :class:`RequestCounter`) and a valid key."""

    app: RequestCounter
    key: str
    keys: KeyStore


def in_process_guard(
    tmp: Path,
    model: ServedModel | None = None,
    config: ServeConfig | None = None,
    *,
    limiter: Limiter | None = None,
    abstainer: Abstainer | None = None,
    detector: Detector | None = None,
) -> InProcessGuard:
    """The guard around ``model`` (default :func:`tiny_served_model`) with a key ``fuzzer``,
    ``detector`` and ``abstainer`` if given, and ``limiter`` (default: a rate no test
    reaches)."""
    keys = KeyStore(tmp / "keys.db")
    key = keys.add("fuzzer")
    guard = Guard(
        model or tiny_served_model(),
        config or ServeConfig(),
        abstainer=abstainer,
        detector=detector,
    )
    app = create_app(guard, keys, limiter or MemoryLimiter(rate=1e9, burst=10**9))
    return InProcessGuard(RequestCounter(app), key, keys)


def free_port() -> int:
    """A TCP port free on the loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m robustops`` subprocesses of this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def train_tiny(workdir: Path, serve: dict[str, Any] | None = None) -> Path:
    """Write :data:`SERVE_SPEC` (``serve`` section replaced when given) under ``workdir``, train
    its model through the CLI and return the spec's path."""
    spec = copy.deepcopy(SERVE_SPEC)
    if serve is not None:
        spec["serve"] = serve
    path = workdir / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    subprocess.run(
        [PYTHON, "-m", "robustops", "train", "--spec", str(path)],
        cwd=workdir,
        env=cli_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


@dataclass
class LiveGuard:
    """A ``robustops serve`` subprocess: its URL, a valid key and its stderr (the JSON log)."""

    url: str
    key: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON request-log lines written so far."""
        out = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def healthy(self) -> bool:
        """``GET /healthz`` answers 200 and the process still runs."""
        if self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@contextmanager
def live_guard(workdir: Path, spec: Path, key_name: str = "tester") -> Iterator[LiveGuard]:
    """Run ``robustops serve --spec spec`` on a free port from ``workdir`` (a key ``key_name``
    made first with ``robustops keys add``); yields once ``/healthz`` answers, stops it after."""
    env = cli_env()
    made = subprocess.run(
        [PYTHON, "-m", "robustops", "keys", "add", key_name, "--keys", "guard/keys.db"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [PYTHON, "-m", "robustops", "serve", "--spec", str(spec), "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    live = LiveGuard(f"http://127.0.0.1:{port}", key, proc, log)
    try:
        deadline = time.monotonic() + 120
        while not live.healthy():
            if proc.poll() is not None:
                raise RuntimeError(f"robustops serve exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("robustops serve did not answer /healthz in 120 s")
            time.sleep(0.2)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CountingLogits:
    """A model's ``logits`` that counts the inputs it was asked about (the server-side query
    count)."""

    def __init__(self, logits: Callable[[Any], Tensor]) -> None:
        self.logits = logits
        self.inputs = 0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, x: Any) -> Tensor:
        with self._lock:
            self.inputs += len(x)
            self.calls += 1
        return self.logits(x)


@contextmanager
def threaded_server(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
