"""API keys of the guard: stored only as salted scrypt hashes, compared in constant time.

A key reads ``rok_<id>_<secret>``: ``id`` (8 hex digits) finds its row without scanning, and
``secret`` (32 random bytes, URL-safe base64) is what the hash protects. The plaintext is shown
once, when the key is made, and never stored. Rows live in an SQLite file shared by every
worker of a service (``robustops keys add/list/revoke`` manage it).

Verifying a key costs one scrypt derivation (≈ 20 ms, on purpose; a presented value that does not
have a key's shape is refused without one); a worker remembers the keys
it verified (by the sha256 of the presented key, never the key itself) for ``cache_seconds``,
after which a cheap lookup checks the row is still active, so a revocation takes effect within
that time in every worker and a request pays scrypt at most once per key per worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from robustops.errors import RobustOpsError

ROLES = ("client", "canary", "admin")
"""``client`` may predict; ``canary`` is a client the monitoring loop uses for its probes;
``admin`` may also read the dashboard's data."""
_KEY = re.compile(r"^rok_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


class ApiKeyError(RobustOpsError):
    """A key cannot be made or revoked (bad name or role, a name in use, an unknown name)."""


@dataclass(frozen=True)
class KeyInfo:
    """Who a verified key belongs to."""

    key_id: str
    name: str
    role: str


def _derive(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 2**20, **_SCRYPT)


class KeyStore:
    """The API keys in the SQLite file ``path`` (created when missing)."""

    def __init__(self, path: str | Path, *, cache_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[KeyInfo, float]] = {}
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add(self, name: str, role: str = "client") -> str:
        """Make a key for ``name`` with ``role``; returns the plaintext key (shown only now)."""
        if not _NAME.match(name):
            raise ApiKeyError(f"name: {name!r} is not a valid key name (letters, digits, . _ -)")
        if role not in ROLES:
            raise ApiKeyError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        key_id = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        with self._connect() as db:
            try:
                db.execute(
                    "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (key_id, name, role, salt, _derive(secret, salt), time.time()),
                )
            except sqlite3.IntegrityError:
                raise ApiKeyError(f"name: a key called {name!r} exists; revoke it first") from None
        return f"rok_{key_id}_{secret}"

    def revoke(self, name: str) -> None:
        """Revoke the key called ``name`` (its row is kept, marked revoked, and its name freed)."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ?, name = name || '#revoked-' || key_id "
                "WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
            if cur.rowcount == 0:
                raise ApiKeyError(f"name: no active key called {name!r}")

    def list(self) -> list[tuple[str, str, float, float | None]]:
        """``(name, role, created_at, revoked_at)`` of every key, by name (Unix times)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT name, role, created_at, revoked_at FROM api_keys ORDER BY name"
            ).fetchall()
        return [(str(n), str(r), float(c), None if v is None else float(v)) for n, r, c, v in rows]

    def cached(self, presented: str | None) -> KeyInfo | None:
        """The owner of ``presented`` when this process verified it less than
        ``cache_seconds`` ago (no database, no derivation), else None (then call
        :meth:`verify`)."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and time.monotonic() - hit[1] < self.cache_seconds:
            return hit[0]
        return None

    def remembered(self, presented: str | None) -> bool:
        """Whether this process verified ``presented`` before and still remembers it (maybe
        for longer than ``cache_seconds``): :meth:`verify` then re-checks the row without a
        key derivation."""
        if not presented:
            return False
        digest = hashlib.sha256(presented.encode()).digest()
        with self._lock:
            return digest in self._cache

    def verify(self, presented: str | None) -> KeyInfo | None:
        """The owner of ``presented`` if it is an active key, else None (same work whether the
        id exists or not, so the answer's timing does not tell which ids exist)."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None:
            info, verified = hit
            if now - verified < self.cache_seconds:
                return info
            if self._active(info.key_id):
                with self._lock:
                    self._cache[digest] = (info, now)
                return info
            with self._lock:
                self._cache.pop(digest, None)
            return None
        m = _KEY.match(presented)
        if m is None:  # not a key's shape (which is public): no row can match, and a scrypt
            return None  # per malformed header would let anyone without a key burn the CPU
        key_id, secret = m.group(1), m.group(2)
        with self._connect() as db:
            row = db.execute(
                "SELECT name, role, salt, hash FROM api_keys "
                "WHERE key_id = ? AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        salt, stored = (row[2], row[3]) if row else (b"\0" * 16, b"\0" * 32)
        ok = hmac.compare_digest(_derive(secret, salt), stored) and row is not None
        if not ok:
            return None
        info = KeyInfo(key_id=key_id, name=str(row[0]), role=str(row[1]))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (info, now)
        return info

    def _active(self, key_id: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
        return row is not None
