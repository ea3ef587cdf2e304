"""The limit on failed authentications per client address (``limits.auth_failures_per_minute``).

Without it a client could send any number of well-formed wrong keys, each costing a scrypt
derivation (a CPU denial of service and an online guessing channel). Each address has a token
bucket in the shared state: an attempt that may need a derivation takes a token first, a valid
key gives it back, and an empty bucket answers 429 with ``Retry-After`` before any derivation.
Behind a reverse proxy the address comes from ``X-Forwarded-For``, only when the peer is one of
``limits.trusted_proxies``.

The real-server tests send from several loopback addresses (127.0.0.2, 127.0.0.3, …: Linux
routes all of 127/8 to the loopback interface) to one ``robustops serve`` with 2 workers.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import robustops.serving.keys as keys_module
from robustops.serving.app import create_app
from robustops.serving.config import LimitsConfig, ServeConfig
from robustops.serving.keys import KeyStore
from robustops.serving.limits import (
    AUTH_PREFIX,
    ClientAddresses,
    MemoryLimiter,
    SqliteLimiter,
)
from serving.server_helpers import stub_guard

from .conftest import HAVE_PROC, GuardServer, launch_server

BURST = 6
"""Failed authentications an address may make on the test server (refilled at 0.06 a minute:
nothing refills during the test)."""
IMAGE = {"inputs": [[[0.5] * 8 for _ in range(8)]]}  # the digits MLP's
STUB = {"inputs": [[0.5] * 8]}  # the stub model's


# --- the client address ----------------------------------------------------------------------


def _scope(peer: str, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", f.encode("latin-1")) for f in forwarded]
    return {"client": (peer, 40000), "headers": [(b"host", b"x"), *headers]}


def test_the_peer_is_the_client_unless_it_is_a_trusted_proxy() -> None:
    none = ClientAddresses()
    assert none.of(_scope("10.0.0.5", "1.2.3.4")) == "10.0.0.5"  # no proxy trusted: ignored
    proxies = ClientAddresses(["10.0.0.0/24", "192.0.2.1"])
    assert proxies.of(_scope("172.16.0.9", "1.2.3.4")) == "172.16.0.9"  # not a proxy
    assert proxies.of(_scope("10.0.0.5", "1.2.3.4")) == "1.2.3.4"
    # the rightmost address that is not a trusted proxy; the ones left of it are the client's
    assert proxies.of(_scope("10.0.0.5", "6.6.6.6, 1.2.3.4, 192.0.2.1")) == "1.2.3.4"
    assert proxies.of(_scope("10.0.0.5", "6.6.6.6", "1.2.3.4")) == "1.2.3.4"  # two headers
    # nothing forwarded, or only proxies: the last trusted hop is charged
    assert proxies.of(_scope("10.0.0.5")) == "10.0.0.5"
    assert proxies.of(_scope("10.0.0.5", "10.0.0.7")) == "10.0.0.7"
    # an entry that is not an address stops the walk at the last trusted hop
    assert proxies.of(_scope("10.0.0.5", "1.2.3.4, garbage")) == "10.0.0.5"
    assert proxies.of(_scope("10.0.0.5", "1.2.3.4:80, 192.0.2.1")) == "192.0.2.1"
    # canonical forms: an IPv4-mapped IPv6 peer is its IPv4 address
    assert proxies.of(_scope("::ffff:10.0.0.5", "2001:DB8::1")) == "2001:db8::1"
    assert none.of({"client": None, "headers": []}) == "unknown"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert LimitsConfig(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxies
    with pytest.raises(ValueError, match="not an IP address or network"):
        LimitsConfig(trusted_proxies=["proxy.internal"])


# --- refunds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_refund_gives_one_token_back_up_to_the_burst(backend: str, tmp_path: Path) -> None:
    clock = [1000.0]
    limiter: Any = (
        MemoryLimiter(1e-9, 2, clock=lambda: clock[0])
        if backend == "memory"
        else SqliteLimiter(tmp_path / "state.db", 1e-9, 2, clock=lambda: clock[0])
    )
    assert [limiter.acquire("a")[0] for _ in range(3)] == [True, True, False]
    limiter.refund("a")
    assert [limiter.acquire("a")[0] for _ in range(2)] == [True, False]
    limiter.refund("a")
    limiter.refund("a")
    limiter.refund("a")  # capped at the burst
    assert [limiter.acquire("a")[0] for _ in range(3)] == [True, True, False]
    limiter.refund("never-seen")  # a missing bucket is full: nothing to give back
    assert limiter.acquire("never-seen")[0]


def test_memory_buckets_full_again_are_forgotten_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    limiter = MemoryLimiter(1.0, 2, clock=lambda: clock[0])  # full again after 2 s
    monkeypatch.setattr(MemoryLimiter, "_KEEP", 5)
    for i in range(5):
        limiter.acquire(f"old-{i}")
    clock[0] = 10.0
    limiter.acquire("new-0")  # 6 buckets: the 5 full ones are dropped
    assert set(limiter._buckets) == {"new-0"}
    for i in range(1, 6):
        limiter.acquire(f"new-{i}")
    assert len(limiter._buckets) == 6  # none is full again yet: all kept
    assert [limiter.acquire("new-0")[0], limiter.acquire("new-0")[0]] == [True, False]


def test_redis_refund_gives_one_token_back(redis_url: str) -> None:
    from robustops.serving.limits import RedisLimiter

    limiter = RedisLimiter(redis_url, 1e-6, 2, prefix="test:refund:")
    assert [limiter.acquire("a")[0] for _ in range(3)] == [True, True, False]
    limiter.refund("a")
    limiter.refund("a")
    limiter.refund("a")
    assert [limiter.acquire("a")[0] for _ in range(3)] == [True, True, False]


# --- in process: no derivation once the bucket is empty ---------------------------------------


def test_an_empty_bucket_refuses_before_any_key_derivation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ServeConfig.model_validate({"state_dir": str(tmp_path)})
    keys = KeyStore(tmp_path / "keys.db")
    good = keys.add("good")
    derivations = Counter[str]()
    derive = keys_module._derive

    def counting(secret: str, salt: bytes) -> bytes:
        derivations["n"] += 1
        return derive(secret, salt)

    monkeypatch.setattr(keys_module, "_derive", counting)
    auth = MemoryLimiter(1e-9, 3)
    app = create_app(stub_guard(cfg), keys, MemoryLimiter(1e9, 10**9), auth_limiter=auth)
    wrong = {"X-API-Key": "rok_00000000_" + "A" * 43}
    with TestClient(app) as client:
        # a valid key gives its token back: it never counts against the address
        for _ in range(5):
            assert client.post("/v1/predict", json=STUB, headers={"X-API-Key": good}).is_success
            keys._cache.clear()  # a fresh verification (and derivation) every time
        assert client.post("/v1/predict", json=STUB, headers={"X-API-Key": good}).is_success
        assert derivations["n"] == 6  # and now this worker remembers it
        statuses = [client.post("/v1/predict", json=STUB, headers=wrong) for _ in range(10)]
        assert [r.status_code for r in statuses] == [401] * 3 + [429] * 7
        assert derivations["n"] == 6 + 3  # none for the refused ones
        assert statuses[-1].headers["retry-after"].isdigit()
        assert statuses[-1].json() == {"detail": "too many failed authentications"}
        # the other routes that need a key are limited the same way
        assert client.get("/v1/model", headers=wrong).status_code == 429
        # a key this worker verified recently is still answered (no derivation needed)
        assert client.post("/v1/predict", json=STUB, headers={"X-API-Key": good}).is_success
        assert derivations["n"] == 9
        # the open routes are not limited
        assert client.get("/healthz").status_code == 200
    assert auth.acquire(AUTH_PREFIX + "testclient")[0] is False


# --- a real server with 2 workers --------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_guard(
    tmp_path_factory: pytest.TempPathFactory, digits_weights: Path
) -> Iterator[GuardServer]:
    """``robustops serve`` with 2 workers, the SQLite state file, ``BURST`` failed
    authentications per address, 127.0.0.3 a trusted proxy."""
    if not sys.platform.startswith("linux"):
        pytest.skip("sends from 127.0.0.2 and up, which only Linux routes to loopback")
    serve = {
        "limits": {
            "auth_failures_per_minute": 0.06,
            "auth_failure_burst": BURST,
            "trusted_proxies": ["127.0.0.3"],
        },
        "state": {"backend": "sqlite"},
        "detection": {"enabled": False},
    }
    server = launch_server(tmp_path_factory.mktemp("auth"), digits_weights, serve, workers=2)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _send(
    server: GuardServer,
    source: str,
    key: str,
    *,
    forwarded: str | None = None,
    path: str = "/v1/predict",
) -> httpx.Response:
    """One request from local address ``source`` on a fresh connection (so either worker may
    take it)."""
    headers = {"X-API-Key": key}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.url, transport=transport, timeout=60) as c:
        if path == "/v1/predict":
            return c.post(path, json=IMAGE, headers=headers)
        return c.get(path, headers=headers)


def _flood(server: GuardServer, source: str, n: int, **kw: Any) -> list[httpx.Response]:
    """``n`` well-formed wrong keys from ``source``, 16 at a time."""
    wrong = [f"rok_{i:08x}_" + "W" * 43 for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda k: _send(server, source, k, **kw), wrong))


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_flood_of_wrong_keys_is_cut_off_after_the_allowance_across_workers(
    auth_guard: GuardServer,
) -> None:
    server = auth_guard
    good = server.add_key("auth-good")
    admin = server.add_key("auth-admin", "admin")
    before = server.cpu_ticks()
    started = time.monotonic()
    answers = _flood(server, "127.0.0.1", 60)
    elapsed = time.monotonic() - started
    used = {pid: t - before.get(pid, 0) for pid, t in server.cpu_ticks().items()}
    statuses = Counter(r.status_code for r in answers)
    # exactly the allowance got a key check, shared by both workers
    assert statuses == {401: BURST, 429: 60 - BURST}, statuses
    for r in answers:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json() == {"detail": "too many failed authentications"}
    print(f"60 wrong keys in {elapsed:.2f} s; worker CPU ticks {used}")
    if HAVE_PROC:
        assert len(used) == 2 and all(v > 0 for v in used.values()), used
    # the right key from the same address is refused too (it would need a derivation) ...
    assert _send(server, "127.0.0.1", good).status_code == 429
    # ... but from another address it is unaffected, on both workers
    assert all(_send(server, "127.0.0.2", good).status_code == 200 for _ in range(6))
    # counted (every worker's counts merged) and logged
    text = _send(server, "127.0.0.2", admin, path="/metrics").text
    assert _metric(text, "robustops_guard_auth_failures_total", result="unauthorized") == BURST
    assert _metric(text, "robustops_guard_auth_failures_total", result="limited") == 60 - BURST + 1
    assert _metric(
        text, "robustops_guard_requests_total", status="429", decision="auth-limited"
    ) == (60 - BURST + 1)
    log = server.log_path.read_text()
    assert '"event":"auth-limited"' in log and '"client":"127.0.0.1"' in log
    # a line per worker and 10 s, not one a request
    assert 1 <= log.count('"event":"auth-limited"') <= 6


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(auth_guard: GuardServer) -> None:
    server = auth_guard
    good = server.add_key("proxied-good")
    # through the trusted proxy (127.0.0.3): each forwarded client has its own bucket
    via_proxy = Counter(
        r.status_code for r in _flood(server, "127.0.0.3", 10, forwarded="198.51.100.7")
    )
    assert via_proxy == {401: BURST, 429: 10 - BURST}, via_proxy
    assert _send(server, "127.0.0.3", good, forwarded="198.51.100.8").status_code == 200
    wrong = "rok_00000000_" + "X" * 43
    assert _send(server, "127.0.0.3", wrong, forwarded="198.51.100.8").status_code == 401
    # the proxy itself is not charged for its clients
    assert _send(server, "127.0.0.3", good).status_code == 200
    # from an address that is not a trusted proxy, X-Forwarded-For is ignored: a client
    # cannot get a fresh bucket by naming another address
    direct = Counter(
        r.status_code for r in _flood(server, "127.0.0.4", 10, forwarded="198.51.100.9")
    )
    assert direct == {401: BURST, 429: 10 - BURST}, direct
    assert _send(server, "127.0.0.4", wrong, forwarded="198.51.100.10").status_code == 429
