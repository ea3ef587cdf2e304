"""Per-key token buckets: ``burst`` requests at once, refilled at ``rate`` per second.

Every backend runs the same bucket step, :func:`take`, on a bucket stored as ``(tokens, stamp)``:
the tokens it held at time ``stamp``. What differs is where the bucket lives and whose clock
``now`` comes from:

* :class:`MemoryLimiter`: a dict in this process (one worker only: N workers with their own
  buckets admit N times the limit, the bug of slowapi#226).
* :class:`SqliteLimiter`: one row per key in an SQLite file that every worker on the host opens;
  each request reads, steps and writes its row in one ``BEGIN IMMEDIATE`` transaction, so the
  workers' steps are serialized and the count is exact. ``now`` is the wall clock
  (:func:`time.time`), which all processes of a host share and which, unlike the monotonic
  clock, still means the same after a reboot (the file outlives the service). The file must be
  on a local file system (SQLite's locks are not reliable over NFS): one host.
* :class:`RedisLimiter`: one hash per key in Redis, stepped by one Lua script per request (atomic
  on the server) with the server's clock (``TIME``), so workers on several hosts agree even when
  their own clocks do not. A bucket expires once it would be full again, which is the same as
  having no bucket. The call blocks the worker's event loop for one round trip (tens of µs on
  loopback; at most ``timeout``).

Clocks. A bucket's refill is ``max(0, now - stamp) * rate``, capped at ``burst``, and ``stamp``
becomes ``now``. If the clock steps back, the step refills nothing and the next steps count from
the earlier time (the gap is credited again later, once); if it steps forward, the bucket refills
at most to ``burst``. Either way a clock step admits at most one extra burst per key and never
locks a key out. ``now`` is read after the bucket's lock is held (inside the SQLite transaction,
inside the Lua script), so stamps follow the order the steps run in.

Failures. A shared limiter whose store cannot answer in time raises :class:`LimiterUnavailable`;
the service answers 503 (fail closed: a limit an attacker can switch off by slowing the store
down is no limit).
"""

from __future__ import annotations

import ipaddress
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

Clock = Callable[[], float]


class Limiter(Protocol):
    """Admits or refuses one request of a key."""

    def acquire(self, key: str) -> tuple[bool, float]:
        """``(admitted, retry_after_seconds)``; ``retry_after`` is 0 when admitted.

        Raises :class:`LimiterUnavailable` when the shared state cannot be reached in time."""
        ...


class RefundableLimiter(Limiter, Protocol):
    """A limiter that can also give a token back (the failed-authentication limit charges
    every attempt before the key derivation and refunds the ones that succeed)."""

    def refund(self, key: str) -> None:
        """Give one token back to ``key``'s bucket (never above ``burst``)."""
        ...


class LimiterUnavailable(RuntimeError):
    """The shared bucket store did not answer (locked too long, unreachable, broken)."""


AUTH_PREFIX = "auth-failures@"
"""Bucket names of the failed-authentication limit: ``auth-failures@<client address>`` (an API
key's name cannot contain ``@``, so these never meet a key's bucket in a shared store)."""


class ClientAddresses:
    """The client address a request is charged to: the peer's, or, when the peer is one of
    the ``trusted`` proxies (addresses or CIDR networks), the rightmost address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (the entries left of it are the
    client's to write). An entry that is not an IP address stops the walk at the last trusted
    hop (which is then charged)."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def of(self, scope: Any) -> str:
        """The client address of the ASGI request ``scope``."""
        peer = scope.get("client")
        address = (_ip(peer[0]) or str(peer[0])) if peer else "unknown"
        if not self.networks or not self.trusts(address):
            return address
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers") or ()
            if name.lower() == b"x-forwarded-for"
        ]
        for hop in reversed(",".join(forwarded).split(",")):
            ip = _ip(hop)
            if ip is None:
                return address
            address = ip
            if not self.trusts(ip):
                return ip
        return address


def prepare_sqlite_file(path: str | Path, *statements: str) -> bool:
    """Make a shared SQLite state file usable before the workers start: when it passes
    ``PRAGMA quick_check`` (or is new), run ``statements`` (e.g. its schema) and return False;
    when it is damaged, move it and its ``-wal``/``-shm`` aside as
    ``<name>.corrupt-<time>`` and return True (the caller's next connection creates it anew)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        try:
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            if ok:
                for statement in statements:
                    db.execute(statement)
        finally:
            db.close()
    except sqlite3.DatabaseError:
        ok = False
    if ok:
        return False
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.replace(path.with_name(f"{path.name}{suffix}.corrupt-{stamp}"))
    return True


def _ip(text: str) -> str | None:
    """``text`` as an IP address in canonical form (an IPv4-mapped IPv6 address as IPv4;
    brackets and a port are not accepted), or None when it is not one."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def take(
    tokens: float, stamp: float, now: float, rate: float, burst: int
) -> tuple[bool, float, float]:
    """One token-bucket step: the bucket held ``tokens`` at time ``stamp``; at ``now`` it
    refills at ``rate``/s up to ``burst`` and gives one token if it has one. Returns
    ``(admitted, tokens_left, retry_after_seconds)``; the caller stores ``(tokens_left, now)``.
    ``retry_after`` is the time until the bucket holds one token again (0 when admitted)."""
    tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0, 0.0
    return False, tokens, (1.0 - tokens) / rate


def full_after(rate: float, burst: int) -> float:
    """Seconds after which an untouched bucket is full again: a bucket older than this can be
    forgotten (a missing bucket counts as full)."""
    return burst / rate


class MemoryLimiter:
    """Token buckets in this process only (the ``memory`` state backend; one worker). Past
    ``_KEEP`` buckets (one per client address, for the failed-authentication limit), the ones
    full again are forgotten, at most once a second."""

    _KEEP = 10_000

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._pruned = -math.inf

    def acquire(self, key: str) -> tuple[bool, float]:
        """See :class:`Limiter`."""
        with self._lock:
            now = self._clock()
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            ok, left, retry = take(tokens, stamp, now, self.rate, self.burst)
            self._buckets[key] = (left, now)
            if len(self._buckets) > self._KEEP and now - self._pruned >= 1.0:
                self._pruned = now
                horizon = now - full_after(self.rate, self.burst)
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] >= horizon}
        return ok, retry

    def refund(self, key: str) -> None:
        """See :class:`RefundableLimiter`."""
        with self._lock:
            if key in self._buckets:
                tokens, stamp = self._buckets[key]
                self._buckets[key] = (min(float(self.burst), tokens + 1.0), stamp)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    stamp REAL NOT NULL
) WITHOUT ROWID
"""
_SQLITE_STEP = (
    "INSERT INTO buckets (key, tokens, stamp) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, stamp = excluded.stamp"
)


class SqliteLimiter:
    """Token buckets in an SQLite file shared by every worker of a host (the ``sqlite`` state
    backend, the default).

    Each :meth:`acquire` is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before
    the row is read, so two workers never step the same bucket from the same state). The file
    is in WAL mode with ``synchronous=OFF``: commits never wait for the disk. That is safe for
    this state because it is ephemeral and self-healing: an operating-system crash or power
    loss can at worst lose the last updates (a bucket fuller than it was, at most one burst per
    key) or damage the file, which :meth:`prepare` finds and replaces when the service starts;
    an application crash loses nothing (SQLite's own guarantee with ``synchronous=OFF``). In
    exchange no request ever pays an ``fsync`` (milliseconds on a busy disk, at every WAL
    checkpoint with ``synchronous=NORMAL``).

    A worker waiting for another's transaction retries with short sleeps (from 20 µs, doubling
    to 1 ms; SQLite's own busy handler sleeps 1 ms at once) for up to ``busy_timeout`` seconds,
    then raises :class:`LimiterUnavailable`. Buckets untouched for longer than they take to
    refill are deleted now and then (a missing bucket is a full one).
    """

    _PRUNE_EVERY = 60.0

    def __init__(
        self,
        path: str | Path,
        rate: float,
        burst: int,
        *,
        clock: Clock = time.time,
        busy_timeout: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.rate, self.burst = rate, burst
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._pruned = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection()

    @staticmethod
    def prepare(path: str | Path) -> bool:
        """Make the state file usable before the workers start: create it, or replace it when
        it is damaged (moved aside as ``<name>.corrupt-<time>``). Returns True when it was
        replaced. Call it once, from the process that starts the workers."""
        if not prepare_sqlite_file(path, _SQLITE_SCHEMA):
            return False
        SqliteLimiter(path, 1.0, 1).close()
        return True

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (opened again after a fork: SQLite connections must not
        cross a fork)."""
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
            self._retrying(lambda: db.execute("PRAGMA journal_mode=WAL"))
            db.execute("PRAGMA synchronous=OFF")
            self._retrying(lambda: db.execute(_SQLITE_SCHEMA))
            self._db, self._pid = db, os.getpid()
        return self._db

    def _retrying(self, step: Callable[[], Any]) -> Any:
        """``step()``, retried while another connection holds the lock."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 20e-6
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise LimiterUnavailable(
                        f"the rate-limit state {self.path} stayed locked for {self.busy_timeout} s"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)

    def acquire(self, key: str) -> tuple[bool, float]:
        """See :class:`Limiter`."""
        with self._lock:
            try:
                db = self._connection()
                self._retrying(lambda: db.execute("BEGIN IMMEDIATE"))
                try:
                    now = self._clock()
                    row = db.execute(
                        "SELECT tokens, stamp FROM buckets WHERE key = ?", (key,)
                    ).fetchone()
                    tokens, stamp = (row[0], row[1]) if row else (float(self.burst), now)
                    ok, left, retry = take(tokens, stamp, now, self.rate, self.burst)
                    db.execute(_SQLITE_STEP, (key, left, now))
                    if now - self._pruned > self._PRUNE_EVERY:
                        self._pruned = now
                        horizon = now - full_after(self.rate, self.burst)
                        db.execute("DELETE FROM buckets WHERE stamp < ?", (horizon,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LimiterUnavailable(f"the rate-limit state {self.path}: {exc}") from exc
        return ok, retry

    def refund(self, key: str) -> None:
        """See :class:`RefundableLimiter` (one ``UPDATE``, atomic on its own)."""
        with self._lock:
            try:
                db = self._connection()
                self._retrying(
                    lambda: db.execute(
                        "UPDATE buckets SET tokens = min(?, tokens + 1.0) WHERE key = ?",
                        (float(self.burst), key),
                    )
                )
            except sqlite3.Error as exc:
                raise LimiterUnavailable(f"the rate-limit state {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close this process's connection."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None


# KEYS[1]: the bucket; ARGV: rate, burst, expiry (ms), and optionally `now` (tests only: the
# server's clock otherwise). The step is take()'s, line by line. Numbers cross into Redis as
# %.17g strings (exact doubles); a Lua number returned to the client would be cut to an integer.
_REDIS_STEP = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1]) or burst
local stamp = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local ok, retry = 0, 0
if tokens >= 1 then
    ok = 1
    tokens = tokens - 1
else
    retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'stamp', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {ok, string.format('%.17g', retry)}
"""

# KEYS[1]: the bucket; ARGV[1]: burst. One token back, capped at burst (a missing bucket is full).
_REDIS_REFUND = """
local t = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if t then
    redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', math.min(tonumber(ARGV[1]), t + 1)))
end
return 0
"""


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class RedisLimiter:
    """Token buckets in Redis (the ``redis`` state backend): workers on several hosts share
    them. One Lua script per request (``EVALSHA``) reads, steps and writes the key's hash
    atomically with the server's clock; the hash expires once the bucket would be full again
    (plus a second). Keys are ``<prefix><API key name>``. The client times out after
    ``timeout`` seconds, and the request gets 503 (:class:`LimiterUnavailable`)."""

    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        *,
        prefix: str = "robustops:bucket:",
        timeout: float = 0.5,
        client: Any = None,
    ) -> None:
        import redis

        self.url = redact_url(url)
        self.rate, self.burst, self.prefix = rate, burst, prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._redis = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._step = self._redis.register_script(_REDIS_STEP)
        self._refund = self._redis.register_script(_REDIS_REFUND)
        ten_years = 10 * 365 * 86400.0
        self.expire_ms = math.ceil((min(full_after(rate, burst), ten_years) + 1.0) * 1000)

    def ping(self) -> None:
        """Raise :class:`LimiterUnavailable` unless the server answers."""
        try:
            self._redis.ping()
        except self._errors as exc:
            raise LimiterUnavailable(f"redis at {self.url}: {exc}") from exc

    def acquire(self, key: str, *, now: float | None = None) -> tuple[bool, float]:
        """See :class:`Limiter` (``now`` replaces the server's clock: for tests)."""
        args: list[Any] = [repr(self.rate), self.burst, self.expire_ms]
        if now is not None:
            args.append(repr(now))
        try:
            ok, retry = self._step(keys=[self.prefix + key], args=args)
        except self._errors as exc:
            raise LimiterUnavailable(f"redis at {self.url}: {exc}") from exc
        return bool(ok), float(retry)

    def refund(self, key: str) -> None:
        """See :class:`RefundableLimiter`."""
        try:
            self._refund(keys=[self.prefix + key], args=[self.burst])
        except self._errors as exc:
            raise LimiterUnavailable(f"redis at {self.url}: {exc}") from exc
