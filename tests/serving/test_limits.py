"""Rate limits and the concurrency cap of the guard.

* :func:`take` and the three limiters (memory, SQLite, Redis) compute the same buckets: refill
  math, the cap at ``burst``, clock steps, Retry-After.
* The issue's test: a burst of 10× the limit from 32 concurrent clients against a real server
  with 2 workers admits exactly the allowed count per key, with the SQLite state file and with
  Redis.
* The per-worker concurrency cap (503) neither leaks a slot nor lets more requests into the
  model when clients hang up mid-request (also when the server cancels the handler on
  disconnect), on a real uvicorn server in this process with a model that blocks on demand.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import sqlite3
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import Tensor
from typer.testing import CliRunner

from robustops.cli import app as cli
from robustops.errors import SpecError
from robustops.serve import limiter_for, prepare_state, state_path
from robustops.serving.app import create_app
from robustops.serving.config import ServeConfig
from robustops.serving.guard import Guard
from robustops.serving.keys import KeyStore
from robustops.serving.limits import (
    Limiter,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
    SqliteLimiter,
    redact_url,
    take,
)
from robustops.serving.model import ServedModel

from .conftest import BURST, HAVE_PROC, RATE, SPEC, GuardServer, free_port

# --- the bucket step -------------------------------------------------------------------------


def test_take_refills_at_rate_up_to_burst() -> None:
    assert take(5.0, 0.0, 0.0, 2.0, 5) == (True, 4.0, 0.0)
    assert take(0.0, 0.0, 0.25, 2.0, 5) == (False, 0.5, 0.25)  # half a token: wait 0.25 s
    assert take(0.0, 0.0, 0.5, 2.0, 5) == (True, 0.0, 0.0)
    assert take(0.0, 0.0, 1000.0, 2.0, 5) == (True, 4.0, 0.0)  # refill stops at the burst
    assert take(0.0, 0.0, 0.0, 0.001, 20) == (False, 0.0, 1000.0)


def test_take_ignores_a_clock_step_back() -> None:
    # the clock went back 5 s: no refill (and no negative one), the bucket keeps its tokens
    assert take(3.0, 10.0, 5.0, 2.0, 5) == (True, 2.0, 0.0)
    assert take(0.25, 10.0, 5.0, 2.0, 5) == (False, 0.25, 0.375)


def test_admissions_over_time_are_burst_plus_rate_times_elapsed() -> None:
    clock = [0.0]
    limiter = MemoryLimiter(rate=4.0, burst=10, clock=lambda: clock[0])
    admitted = 0
    for step in range(10_000):  # 100 requests/s for 100 s against 4/s
        clock[0] = step * 0.01
        admitted += limiter.acquire("k")[0]
    assert admitted == 10 + math.floor(4.0 * 99.99)


# --- the three backends step the same buckets ----------------------------------------------

Step = Callable[[str, float], tuple[bool, float]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stepper(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Step]]:
    """A factory ``(rate, burst) -> step(key, now)`` for one backend, with the clock set by
    the caller (Redis: the script's test-only ``now`` argument instead of ``TIME``)."""
    made: list[Any] = []

    def factory(rate: float, burst: int) -> Step:
        clock = [0.0]
        if request.param == "memory":
            memory = MemoryLimiter(rate, burst, clock=lambda: clock[0])

            def step(key: str, now: float) -> tuple[bool, float]:
                clock[0] = now
                return memory.acquire(key)

            return step
        if request.param == "sqlite":
            lite = SqliteLimiter(tmp_path / f"s{len(made)}.db", rate, burst, clock=lambda: clock[0])
            made.append(lite)

            def lite_step(key: str, now: float) -> tuple[bool, float]:
                clock[0] = now
                return lite.acquire(key)

            return lite_step
        url = request.getfixturevalue("redis_url")
        remote = RedisLimiter(url, rate, burst, prefix=f"t:{request.node.name}:{len(made)}:")
        made.append(remote)
        return lambda key, now: remote.acquire(key, now=now)

    yield factory
    for m in made:
        if isinstance(m, SqliteLimiter):
            m.close()


def test_backends_refill_and_answer_retry_after_like_take(stepper: Callable[..., Step]) -> None:
    step = stepper(2.0, 5)
    assert [step("a", 0.0) for _ in range(6)] == [(True, 0.0)] * 5 + [(False, 0.5)]
    assert step("a", 0.25) == (False, 0.25)
    assert step("a", 0.5) == (True, 0.0)  # one token back after 1/rate s
    assert step("a", 0.5) == (False, 0.5)
    assert step("b", 0.5) == (True, 0.0)  # keys have their own buckets
    assert [step("a", 100.0)[0] for _ in range(6)] == [True] * 5 + [False]  # capped at burst


def test_backends_match_take_on_a_random_schedule(stepper: Callable[..., Step]) -> None:
    rng = random.Random(7)
    rate, burst = 3.7, 4
    step = stepper(rate, burst)
    buckets: dict[str, tuple[float, float]] = {}
    now = 1_700_000_000.0  # wall-clock sized numbers, as in production
    for _ in range(300):
        now += rng.expovariate(8.0)
        key = rng.choice("xyz")
        tokens, stamp = buckets.get(key, (float(burst), now))
        ok, left, retry = take(tokens, stamp, now, rate, burst)
        buckets[key] = (left, now)
        got_ok, got_retry = step(key, now)
        assert got_ok == ok
        assert got_retry == pytest.approx(retry, rel=1e-12, abs=1e-12)


def test_sqlite_buckets_are_exact_across_connections(tmp_path: Path) -> None:
    """8 threads, each with its own connection to the file (as the workers have), 600
    requests on 3 keys: exactly ``burst`` admitted per key."""
    path = tmp_path / "state.db"
    limiters = [SqliteLimiter(path, 0.001, 50) for _ in range(8)]
    jobs = [f"k{i % 3}" for i in range(600)]

    def run(i: int) -> list[tuple[str, bool]]:
        return [(k, limiters[i].acquire(k)[0]) for k in jobs[i::8]]

    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(run, range(8)) for r in part]
    admitted = Counter(k for k, ok in results if ok)
    assert admitted == {"k0": 50, "k1": 50, "k2": 50}
    for lim in limiters:
        lim.close()


def test_sqlite_limiter_overhead_is_small(tmp_path: Path) -> None:
    limiter = SqliteLimiter(tmp_path / "state.db", 1e6, 10**9)
    for _ in range(200):  # warm up
        limiter.acquire("warm")
    times = []
    for i in range(2000):
        t = time.perf_counter()
        limiter.acquire(f"key{i % 50}")
        times.append(time.perf_counter() - t)
    limiter.close()
    median = statistics.median(times)
    print(f"SqliteLimiter.acquire: median {median * 1e6:.0f} µs")
    assert median < 1e-3  # typically tens of µs; loose for loaded CI machines


def test_sqlite_limiter_fails_closed_when_the_state_stays_locked(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    limiter = SqliteLimiter(path, 1.0, 5, busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable, match="locked"):
        limiter.acquire("k")
    assert time.monotonic() - started < 2.0
    other.execute("ROLLBACK")
    assert limiter.acquire("k") == (True, 0.0)
    limiter.close()
    other.close()


def test_prepare_replaces_a_damaged_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    assert SqliteLimiter.prepare(path) is False  # made
    path.write_bytes(b"this is not an SQLite file" * 200)
    assert SqliteLimiter.prepare(path) is True
    assert [p.name for p in tmp_path.glob("state.db.corrupt-*")]
    limiter = SqliteLimiter(path, 1.0, 2)
    assert limiter.acquire("k") == (True, 0.0)
    limiter.close()


def test_redis_buckets_expire_once_full_again(redis_url: str) -> None:
    import redis

    limiter = RedisLimiter(redis_url, 1000.0, 2, prefix="expiry:")
    assert limiter.expire_ms == math.ceil((2 / 1000.0 + 1.0) * 1000)
    assert limiter.acquire("k") == (True, 0.0)
    ttl = redis.Redis.from_url(redis_url).pttl("expiry:k")
    assert 0 < ttl <= limiter.expire_ms
    slow = RedisLimiter(redis_url, RATE, BURST, prefix="expiry-slow:")
    assert slow.expire_ms == math.ceil((BURST / RATE + 1.0) * 1000)


def test_redis_limiter_uses_the_server_clock(redis_url: str) -> None:
    limiter = RedisLimiter(redis_url, 0.001, 3, prefix="clock:")
    assert [limiter.acquire("k")[0] for _ in range(4)] == [True, True, True, False]
    ok, retry = limiter.acquire("k")
    assert not ok and 999.0 < retry <= 1000.0


def test_redis_limiter_fails_closed_when_redis_is_gone() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", 1.0, 5, timeout=0.2)
    with pytest.raises(LimiterUnavailable):
        limiter.acquire("k")


# --- choosing the backend --------------------------------------------------------------------


def _config(tmp_path: Path, **serve: Any) -> ServeConfig:
    return ServeConfig.model_validate({"state_dir": str(tmp_path / "guard"), **serve})


def test_limiter_for_picks_the_state_backend(tmp_path: Path) -> None:
    default = limiter_for(_config(tmp_path))
    assert isinstance(default, SqliteLimiter)
    assert default.path == tmp_path / "guard" / "state.db"
    default.close()
    chosen = limiter_for(_config(tmp_path, state={"path": str(tmp_path / "s.db")}))
    assert isinstance(chosen, SqliteLimiter) and chosen.path == tmp_path / "s.db"
    chosen.close()
    redis_cfg = _config(tmp_path, state={"backend": "redis", "redis_url": "redis://h:1/0"})
    assert isinstance(limiter_for(redis_cfg), RedisLimiter)  # connects on first use
    assert isinstance(limiter_for(_config(tmp_path, state={"backend": "memory"})), MemoryLimiter)


def test_memory_backend_is_refused_with_several_workers(tmp_path: Path) -> None:
    cfg = _config(tmp_path, workers=2, state={"backend": "memory"})
    with pytest.raises(SpecError) as err:
        limiter_for(cfg)
    assert err.value.errors[0][0] == "serve.state.backend"
    assert "2 workers would admit 2 times the limit" in str(err.value)
    single = _config(tmp_path, state={"backend": "memory"})
    with pytest.raises(SpecError, match=r"serve\.state\.backend"):
        prepare_state(single, 3)  # --workers 3 on the command line


def test_serve_refuses_memory_state_with_workers_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("ROBUSTOPS_SERVE", "PROMETHEUS_MULTIPROC_DIR"):  # run() sets them
        monkeypatch.setenv(var, "")
    spec = {
        **SPEC,
        "serve": {"state_dir": str(tmp_path / "guard"), "state": {"backend": "memory"}},
    }
    spec.pop("train")
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(cli, ["serve", "--spec", str(path), "--workers", "2"])
    assert result.exit_code == 2
    assert "serve.state.backend" in result.output


def test_unreachable_redis_is_refused_before_starting(tmp_path: Path) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    cfg = _config(tmp_path, state={"backend": "redis", "redis_url": url})
    with pytest.raises(SpecError) as err:
        prepare_state(cfg, 2)
    assert err.value.errors[0][0] == "serve.state.redis_url"
    assert "s3cret" not in str(err.value) and "user:***@127.0.0.1" in str(err.value)
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_state_path_default_and_override(tmp_path: Path) -> None:
    assert state_path(_config(tmp_path)) == tmp_path / "guard" / "state.db"
    assert state_path(_config(tmp_path, state={"path": "x.db"})) == Path("x.db")


# --- the burst test, through a real server with 2 workers -----------------------------

IMAGE = [[[0.5] * 8 for _ in range(8)]]


async def _hammer(url: str, keys: list[str], clients: int) -> list[tuple[str, int, str | None]]:
    """POST one image per entry of ``keys`` (the key to send) from ``clients`` concurrent
    clients, each opening a fresh connection per request (so the kernel spreads them over the
    workers); ``(key, status, Retry-After)`` per request."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for k in keys:
        queue.put_nowait(k)
    out: list[tuple[str, int, str | None]] = []
    body = json.dumps({"inputs": IMAGE})
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            while not queue.empty():
                key = queue.get_nowait()
                r = await c.post(
                    "/v1/predict",
                    content=body,
                    headers={"X-API-Key": key, "Content-Type": "application/json"},
                )
                out.append((key, r.status_code, r.headers.get("retry-after")))

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return out


@pytest.mark.parametrize("guard", ["sqlite_guard", "redis_guard"])
def test_burst_of_ten_times_the_limit_admits_exactly_the_limit_per_key(
    guard: str, request: pytest.FixtureRequest
) -> None:
    server: GuardServer = request.getfixturevalue(guard)
    backend = guard.removesuffix("_guard")
    assert server.workers == 2
    keys = [server.add_key(f"burst-{backend}-{i}") for i in range(2)]
    jobs = [k for k in keys for _ in range(10 * BURST)]
    random.Random(0).shuffle(jobs)
    before = server.cpu_ticks()
    started = time.monotonic()
    results = asyncio.run(_hammer(server.url, jobs, clients=32))
    elapsed = time.monotonic() - started
    after = server.cpu_ticks()

    assert len(results) == len(jobs)
    statuses = Counter((k, s) for k, s, _ in results)
    for k in keys:
        assert statuses[(k, 200)] == BURST, statuses
        assert statuses[(k, 429)] == 9 * BURST, statuses
    assert set(s for _, s, _ in results) == {200, 429}
    wait = math.ceil(1 / RATE)  # the bucket is empty: one token takes 1/rate s
    for _, status, retry in results:
        if status == 429:
            assert retry is not None and 1 <= int(retry) <= wait
    # both workers took part (each used CPU during the burst; Linux only)
    used = {pid: after[pid] - before.get(pid, 0) for pid in after}
    print(f"{backend}: {len(jobs)} requests in {elapsed:.2f} s; worker CPU ticks {used}")
    if HAVE_PROC:
        assert len(used) == 2 and all(v > 0 for v in used.values()), used


# --- the concurrency cap when clients hang up ------------------------------------------------


class _BlockingModel:
    """Logits of zeros, after waiting for ``gate``; counts the inputs in the model at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self, x: Tensor) -> Tensor:
        with self.lock:  # inputs, not calls: a batching pass may carry two requests in one call
            self.running += x.shape[0]
            self.peak = max(self.peak, self.running)
        try:
            self.gate.wait(30)
        finally:
            with self.lock:
                self.running -= x.shape[0]
        return torch.zeros(x.shape[0], 3)


def _cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """Wrap ``app`` so that a client hanging up cancels the request's task (as some servers
    and middlewares do), instead of letting it finish."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        inner = asyncio.ensure_future(app(scope, inbox.get, send))

        async def pump() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    inner.cancel()
                    return
                await inbox.put(message)

        watcher = asyncio.ensure_future(pump())
        try:
            await inner
        except asyncio.CancelledError:
            if not inner.cancelled():
                raise
        finally:
            watcher.cancel()

    return wrapped


@contextmanager
def _uvicorn(app: ASGIApp) -> Iterator[int]:
    """``app`` on a real uvicorn server in a thread of this process; yields its port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def _guard_app(
    tmp_path: Path, model: Any, limiter: Limiter, max_concurrency: int, *, batching: bool = True
) -> Any:
    served = ServedModel(
        name="blocking", modality="image", logits=model, num_classes=3, input_shape=(4,)
    )
    cfg = ServeConfig.model_validate(
        {
            "state_dir": str(tmp_path),
            "limits": {"max_concurrency": max_concurrency},
            "detection": {"enabled": False},
            "abstention": {"enabled": False},
            "batching": {"enabled": batching},
        }
    )
    keys = KeyStore(tmp_path / "keys.db")
    return create_app(Guard(served, cfg), keys, limiter), keys.add("client")


def _raw_predict(port: int, key: str) -> socket.socket:
    """Send a whole predict request on a new connection and return the socket, unread."""
    body = json.dumps({"inputs": [0.5, 0.5, 0.5, 0.5]}).encode()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head.encode() + body)
    return s


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("batching", [False, True], ids=["threads", "batching"])
@pytest.mark.parametrize("server_kind", ["finishes", "cancels"])
def test_concurrency_cap_holds_and_never_leaks_when_clients_hang_up(
    tmp_path: Path, server_kind: str, batching: bool
) -> None:
    """The cap counts requests from admission until their model work ends, whoever runs it:
    the thread pool or the batcher's two threads."""
    model = _BlockingModel()
    app, key = _guard_app(
        tmp_path, model, MemoryLimiter(1e4, 10_000), max_concurrency=2, batching=batching
    )
    if server_kind == "cancels":
        app = _cancel_on_disconnect(app)
    with (
        _uvicorn(app) as port,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=10
        ) as c,
    ):
        predict = {"inputs": [0.5, 0.5, 0.5, 0.5]}
        for _ in range(3):
            model.gate.clear()
            hung = [_raw_predict(port, key) for _ in range(2)]
            _until(lambda: model.running == 2)
            busy = c.post("/v1/predict", json=predict)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            for s in hung:  # both clients hang up while the model runs their requests
                s.close()
            time.sleep(0.3)  # the server notices (and, when it cancels, cancels the handlers)
            # the model still runs both: their slots stay taken, nothing more gets in
            assert c.post("/v1/predict", json=predict).status_code == 503
            assert model.peak == 2
            model.gate.set()
            _until(lambda: model.running == 0)
        # every slot came back: two requests at once both reach the model and get answers
        model.gate.clear()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(c.post, "/v1/predict", json=predict) for _ in range(2)]
            _until(lambda: model.running == 2)
            model.gate.set()
            assert [f.result().status_code for f in futures] == [200, 200]
        assert model.peak == 2


class _DownLimiter:
    def acquire(self, key: str) -> tuple[bool, float]:
        raise LimiterUnavailable("state store down")


def test_an_unavailable_limiter_answers_503_not_admission(tmp_path: Path) -> None:
    model = _BlockingModel()
    model.gate.set()
    app, key = _guard_app(tmp_path, model, _DownLimiter(), max_concurrency=2)
    with _uvicorn(app) as port:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/predict",
            json={"inputs": [0.5, 0.5, 0.5, 0.5]},
            headers={"X-API-Key": key},
            timeout=10,
        )
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert model.peak == 0  # nothing reached the model
