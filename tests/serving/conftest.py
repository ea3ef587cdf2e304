"""Real guard servers for the serving tests: ``robustops serve`` in a subprocess on a free port
of 127.0.0.1, with several uvicorn workers, in front of a tiny digits MLP trained once per
session; and a throw-away ``redis-server`` for the Redis state backend.

The servers are session-wide (starting one costs seconds: every worker imports torch and loads
the model); each test makes its own API keys (:meth:`GuardServer.add_key`) so the tests do not
share rate buckets.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from typer.testing import CliRunner

from real_components import missing_component
from robustops.cli import app as cli
from robustops.serving.keys import KeyStore
from spec_helpers import FGSM_EVALUATION, digits_mlp, write_spec

SRC = Path(__file__).resolve().parents[2] / "src"
START_TIMEOUT = 180.0  # seconds; a loaded CI machine imports torch slowly in every worker

SPEC: dict[str, Any] = digits_mlp(evaluation=FGSM_EVALUATION)

BURST = 20
"""Every key's bucket on the shared servers: 20 requests, refilled at 0.001/s (one token every
1000 s: nothing refills during a test run)."""
RATE = 0.001


HAVE_PROC = Path("/proc/net/tcp").exists()
"""Linux: which worker holds a connection, and how much CPU each used, come from /proc."""


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _socket_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the TCP connection from ``client_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote = cols[1].rsplit(":", 1)[1], cols[2].rsplit(":", 1)[1]
            if int(local, 16) == server_port and int(remote, 16) == client_port:
                inode = cols[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class GuardServer:
    """A running ``robustops serve``: its base URL, process, files and API keys."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    root: Path
    keys_path: Path
    log_path: Path
    workers: int
    keys: dict[str, str] = field(default_factory=dict)
    ready: bool = False

    def add_key(self, name: str, role: str = "client") -> str:
        """A new API key called ``name`` (the server reads the key file on every new key)."""
        key = KeyStore(self.keys_path).add(name, role)
        self.keys[name] = key
        return key

    def revoke(self, name: str) -> None:
        """Revoke the key called ``name``."""
        KeyStore(self.keys_path).revoke(name)

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the server that are not its
        multiprocessing resource tracker)."""
        pids = []
        for pid in _children(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmd:
                pids.append(pid)
        return pids

    def cpu_ticks(self) -> dict[int, int]:
        """CPU ticks used so far by each worker (empty without /proc)."""
        if not HAVE_PROC:
            return {}
        return {pid: _cpu_ticks(pid) for pid in self.worker_pids()}

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server wrote (stdout and stderr)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"robustops serve exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every worker answers: probe /healthz on fresh connections and find, in
        /proc, which worker holds each one, until all ``workers`` have answered at least once
        (/healthz alone answers as soon as the first worker is up)."""
        deadline = time.monotonic() + timeout
        if not HAVE_PROC:  # no /proc (not Linux): /healthz, then time for the other workers
            while not _healthy(self.url):
                self._check_alive()
                assert time.monotonic() < deadline, f"no /healthz:\n{self.log_tail()}"
                time.sleep(0.1)
            time.sleep(10.0)
            return
        seen: set[int] = set()
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                    answer = s.recv(4096)
                    if b" 200 " in answer.split(b"\r\n", 1)[0]:
                        owner = _socket_owner(self.worker_pids(), self.port, s.getsockname()[1])
                        if owner is not None:
                            seen.add(owner)
            except OSError:
                pass
            if len(seen) >= self.workers:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"robustops serve: {len(seen)} of {self.workers} workers answered within "
            f"{timeout} s:\n{self.log_tail()}"
        )

    def terminate(self) -> None:
        """Ask the server and its workers to stop (SIGTERM to its process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """Stop the server and its workers (SIGTERM to its process group, then SIGKILL)."""
        self.terminate()
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # the workers, had the server died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)


def launch_server(root: Path, weights: Path, serve: dict[str, Any], *, workers: int) -> GuardServer:
    """Start ``robustops serve`` for the digits MLP at ``weights`` with the ``serve`` section,
    in ``root`` (spec, key file, state, log); :meth:`GuardServer.wait_ready` waits for it.
    The workers run torch on one thread each (a tiny model on a shared machine)."""
    root.mkdir(parents=True, exist_ok=True)
    spec = copy.deepcopy(SPEC)
    del spec["train"]
    spec["model"]["weights"] = str(weights)
    keys_path = root / "keys.db"
    spec["serve"] = {"keys": str(keys_path), "state_dir": str(root / "state"), **serve}
    spec_path = write_spec(root, spec)
    KeyStore(keys_path)  # the key file exists before the workers open it
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = root / "server.log"
    cmd = [sys.executable, "-m", "robustops", "serve", "--spec", str(spec_path)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return GuardServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        proc=proc,
        root=root,
        keys_path=keys_path,
        log_path=log_path,
        workers=workers,
    )


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits MLP trained for 2 epochs through ``robustops train`` (once per session; on
    one thread, much faster than several on a loaded machine)."""
    root = tmp_path_factory.mktemp("digits-mlp")
    path = write_spec(root, SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(cli, ["train", "--spec", str(path)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    weights = root / "w" / "mlp.safetensors"
    assert weights.exists()
    return weights


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away ``redis-server`` on a free port (no persistence), stopped at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        missing_component("redis-server is not installed (Debian: apt-get install redis-server)")
    root = tmp_path_factory.mktemp("redis")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(root), "--daemonize", "no", "--protected-mode", "yes"]
    log = (root / "redis.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "redis-server did not start: " + (root / "redis.log").read_text()
                ) from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


SERVERS: dict[str, dict[str, Any]] = {
    "sqlite": {
        "limits": {
            "burst": BURST,
            "rate_per_second": RATE,
            "max_body_bytes": 65_536,
            "max_batch": 16,
        },
        "state": {"backend": "sqlite"},
        "detection": {"enabled": False},
    },
    "redis": {
        "limits": {"burst": BURST, "rate_per_second": RATE},
        "state": {"backend": "redis"},  # redis_url: the session's redis-server
        "detection": {"enabled": False},
    },
}
"""The session's servers, each with 2 workers: the shared SQLite state file (the default) and
Redis. Detection is off: the burst tests send one input over and over, which the detector
would rightly throttle (its own tests are in test_guard.py and tests/defenses)."""


def _uses(item: pytest.Item, name: str) -> bool:
    """Whether the test ``item`` uses the server ``name``: it asks for ``<name>_guard``, or is
    parametrized with that fixture's name (and gets it with ``request.getfixturevalue``)."""
    fixture = f"{name}_guard"
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return fixture in getattr(item, "fixturenames", ()) or fixture in params


@pytest.fixture(scope="session")
def _guards(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, digits_weights: Path
) -> Iterator[dict[str, GuardServer]]:
    """Launch at once every server a collected test asks for (they start in parallel: each
    takes seconds), stop them all at the end."""
    wanted = [name for name in SERVERS if any(_uses(i, name) for i in request.session.items)]
    if "redis" in wanted and shutil.which("redis-server") is None:
        wanted.remove("redis")  # redis_guard skips (through redis_url)
    servers: dict[str, GuardServer] = {}
    try:
        for name in wanted:
            serve = copy.deepcopy(SERVERS[name])
            if name == "redis":
                serve["state"]["redis_url"] = request.getfixturevalue("redis_url")
            root = tmp_path_factory.mktemp(f"guard-{name}")
            servers[name] = launch_server(root, digits_weights, serve, workers=2)
        yield servers
    finally:
        for server in servers.values():
            server.terminate()  # all at once: each takes seconds to shut down
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session", autouse=True)
def _boot_early(request: pytest.FixtureRequest) -> None:
    """Launch the servers before the first serving test, so that they boot while the tests
    that need no server run."""
    if any(_uses(i, name) for i in request.session.items for name in SERVERS):
        request.getfixturevalue("_guards")


def _ready(guards: dict[str, GuardServer], name: str) -> GuardServer:
    server = guards[name]
    if not server.ready:
        server.wait_ready()
        server.ready = True
    return server


@pytest.fixture(scope="session")
def sqlite_guard(_guards: dict[str, GuardServer]) -> GuardServer:
    """``robustops serve`` with 2 workers sharing the SQLite state file; every key's bucket
    holds ``BURST`` requests refilled at ``RATE``."""
    return _ready(_guards, "sqlite")


@pytest.fixture(scope="session")
def redis_guard(redis_url: str, _guards: dict[str, GuardServer]) -> GuardServer:
    """``robustops serve`` with 2 workers sharing buckets in Redis (``BURST``, ``RATE``)."""
    return _ready(_guards, "redis")
