"""The guard's attack-in-progress detection: a
:class:`~robustops.defenses.detection.QueryDetector` fed every input of every validated batch
under the request's API key name, with three signals and, across workers, one shared state.

* **Fingerprints** (Blacklight) of the quantized input (text: shingles), per key.
* **Embedding similarity**, per key: the input of the model's first ``nn.Linear`` (for a CNN the
  flattened last convolutional map; :class:`FeatureTap` captures it during the forward pass the
  guard runs anyway, so it costs no second pass), by a fixed very sparse random projection
  to ``embedding_dim`` values seeded from the detector secret, normalised to unit length and
  rounded to float16. A held query matches when the cosine is at least the threshold,
  calibrated at start-up on held-out clean inputs (:func:`calibrate_threshold`: the
  ``1 - embedding_pair_rate`` quantile of the cosines between pairs of distinct held-out
  inputs) unless ``embedding_threshold`` is set.
* **Cross-key similarity**: a ring of the last ``cross_key_window`` queries of *all* keys; a
  query whose embedding matches ``cross_key_flag_at`` (``throttle_at``, ``block_at``) or more of
  them sent by *other* keys is flagged (throttled, blocked) on its own key, which then holds that
  level like any other. It sees an attack spread round-robin over several keys, which per-key
  state cannot.

**Shared state** (:class:`SqliteDetectorLog`): with the ``sqlite`` state backend every worker
appends each query it decided (key, time, fingerprint sketch, embedding, the key's hold after
the decision) to one table of an SQLite file next to the rate-limit state, and before deciding
replays the rows the other workers appended since its last look. Reading, deciding and
appending happen in one ``BEGIN IMMEDIATE`` transaction, so the decisions are serialized across
workers and every worker decides on exactly the queries a single worker would have seen: a
campaign split over W workers is flagged at the same query as on one. A replayed row costs a
row write (no scan); the table keeps the last ``shared_rows`` rows, and a worker that starts
replays them, so a restart does not reset the keys' windows either. With the ``memory``
backend (one worker) nothing is shared. With ``redis`` (:class:`RedisDetectorLog`) the rows are
a Redis stream and a lock key serializes the workers' exchanges (workers on several hosts).

Timing: the model and every signal run on every query, each a scan of fixed-size buffers; the
transaction is the same statements for every decision. What varies with other keys' traffic
(rows replayed) does not depend on this key's decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from robustops.defenses.detection import (
    ACTIONS,
    DetectionPolicy,
    DetectorConfig,
    PreparedQuery,
    QueryDecision,
    QueryDetector,
)
from robustops.errors import SpecError
from robustops.io import atomic_write_bytes
from robustops.serving.config import DetectionConfig
from robustops.serving.limits import prepare_sqlite_file
from robustops.serving.validation import Batch

_GUARD_ACTION = {
    "allow": "ok",
    "log": "log",
    "flag": "flag",
    "throttle": "throttle",
    "block": "block",
}

F32 = npt.NDArray[np.float32]

OWN_PREFIX = "\x00own:"
"""Prefix of the detector's name for a key whose queries are the service's own (canary keys):
a key name can never hold NUL, so no client key collides with it."""


def detector_secret(state_dir: str | Path) -> bytes:
    """The fingerprint hash key: 32 random bytes in ``<state_dir>/detector.secret`` (mode
    0600), made on first use, so fingerprints cannot be precomputed from outside."""
    path = Path(state_dir) / "detector.secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # another worker made it first
            atomic_write_bytes(path, os.urandom(32), mode=0o600, exclusive=True)
        return path.read_bytes()


# -- embeddings ----------------------------------------------------------------------------------


def default_embedding_layer(module: nn.Module) -> str:
    """Name of the module's first ``nn.Linear`` (registration order), whose input is the
    embedding: the flattened last convolutional map of a CNN, the raw input of an MLP."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            return str(name)
    raise SpecError.single(
        "serve.detection.embedding_layer",
        f"{type(module).__name__} has no nn.Linear; name a layer whose input is the embedding",
    )


class FeatureTap:
    """The input of ``module``'s submodule ``layer`` as it runs, per thread: a forward
    pre-hook keeps the last batch it saw on the thread that ran it, :meth:`take` turns it into
    embeddings. The guard runs the model and then the detector on one thread, so the detector
    reads the features of the forward pass that answered the request (no second pass).

    The embedding of an input is a fixed very sparse random projection of its flattened
    feature row to ``dim`` values (seeded from ``seed``; none when the layer is an
    ``nn.Linear`` of at most ``dim`` inputs), normalised and rounded to
    float16 values (what the shared state stores, so every worker compares the same numbers).
    """

    def __init__(
        self, module: nn.Module, layer: str | None = None, *, dim: int = 256, seed: bytes = b""
    ) -> None:
        self.module = module
        self.layer = layer if layer is not None else default_embedding_layer(module)
        modules = dict(module.named_modules())
        if self.layer not in modules or not self.layer:
            raise SpecError.single(
                "serve.detection.embedding_layer",
                f"{type(module).__name__} has no submodule {self.layer!r}",
            )
        target = modules[self.layer]
        in_features = target.in_features if isinstance(target, nn.Linear) else None
        self.dim = in_features if in_features is not None and in_features <= dim else dim
        """Values per embedding: ``dim``, or the layer's input size when it is an
        ``nn.Linear`` with at most ``dim`` inputs (then not projected)."""
        self._seed = int.from_bytes(hashlib.sha256(b"embedding:" + seed).digest()[:8], "little")
        self._proj: tuple[Tensor, Tensor] | None = None
        self._proj_d = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handle = modules[self.layer].register_forward_pre_hook(self._hook)

    def _hook(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            self._local.last = args[0].detach()

    def _projection(self, d: int) -> tuple[Tensor, Tensor] | None:
        """A very sparse random projection (Li, Hastie & Church 2006) ``d -> dim``: output
        ``j`` is the sum of ``ceil(sqrt(d))`` features drawn at random, each with a random
        sign. Like a Gaussian projection it keeps cosines in expectation; it reads
        ``dim * sqrt(d)`` values instead of a ``(d, dim)`` matrix (14 000 instead of 800 000
        for a 3136-value map)."""
        if d == self.dim:
            return None
        with self._lock:
            if self._proj is None or self._proj_d != d:
                gen = torch.Generator().manual_seed(self._seed)
                k = math.ceil(math.sqrt(d))
                idx = torch.randint(0, d, (self.dim * k,), generator=gen)
                sign = torch.randint(0, 2, (self.dim, k), generator=gen).float() * 2 - 1
                self._proj, self._proj_d = (idx, sign), d
            return self._proj

    def project(self, feats: Tensor) -> F32:
        """Unit float16-rounded embeddings ``(N, dim)`` (float32) of feature rows ``(N, ...)``."""
        f = feats.detach().reshape(feats.shape[0], -1).float().cpu()
        proj = self._projection(f.shape[1])
        if proj is not None:
            idx, sign = proj
            f = (f[:, idx].reshape(f.shape[0], *sign.shape) * sign).sum(dim=2)
        e = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out: F32 = e.numpy().astype(np.float16).astype(np.float32)
        return out

    def take(self, n: int) -> F32 | None:
        """The embeddings of the last forward pass on this thread if it had ``n`` rows (it is
        then consumed), else None."""
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is None or last.shape[0] != n:
            return None
        return self.project(last)

    def embed(self, inputs: Tensor) -> F32:
        """Run the module on ``inputs`` ``(N, ...)`` and return their embeddings."""
        device = next(self.module.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            self.module(inputs.to(device))
        out = self.take(int(inputs.shape[0]))
        assert out is not None, f"{self.layer!r} did not run"
        return out

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


def calibrate_threshold(
    embeddings: F32, pair_rate: float, groups: npt.ArrayLike | None = None
) -> float:
    """The cosine at which two embeddings match: the ``1 - pair_rate`` quantile of the cosines
    between the pairs of distinct rows of ``embeddings`` ``(n, d)`` (unit rows of held-out
    clean inputs) in the same group (``groups`` ``(n,)``, e.g. the predicted class: the closest
    pairs of different inputs, what a client sending many inputs of one class produces; all
    pairs without groups, or when no group has two), so that about ``pair_rate`` of such pairs
    match."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise SpecError.single("calibration", "needs at least 2 held-out inputs")
    sims = e @ e.T
    pair = np.triu(np.ones(sims.shape, dtype=bool), k=1)
    if groups is not None:
        g = np.asarray(groups)
        pair &= g[:, None] == g[None, :]
    if not pair.any():  # no two inputs share a group: all pairs
        pair = np.triu(np.ones(sims.shape, dtype=bool), k=1)
    return float(min(np.quantile(sims[pair], 1.0 - pair_rate), 1.0))


# -- shared state ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One decided query as the shared state keeps it."""

    key: str
    stamp: float
    query: PreparedQuery
    hold_level: int
    hold_until: float


_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    stamp REAL NOT NULL,
    length INTEGER NOT NULL,
    sketch BLOB NOT NULL,
    emb BLOB,
    hold_level INTEGER NOT NULL,
    hold_until REAL NOT NULL
)
"""


class SqliteDetectorLog:
    """The detector's shared state: a table of decided queries in an SQLite file every worker
    of a host opens (WAL, ``synchronous=OFF``, like the rate-limit state). :meth:`exchange`
    reads the rows appended since this worker's last look, lets the caller decide, and appends
    the caller's rows, in one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, path: str | Path, *, keep_rows: int = 50_000, busy_timeout: float = 2.0):
        self.path = Path(path)
        self.keep_rows = keep_rows
        self.busy_timeout = busy_timeout
        self.last_id = 0
        self.errors = 0
        self._appended = 0
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def prepare(path: str | Path) -> None:
        """Create the file, or replace it when damaged (call once, before the workers)."""
        prepare_sqlite_file(path, "PRAGMA journal_mode=WAL", _LOG_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_LOG_SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db

    @contextlib.contextmanager
    def exchange(self) -> Iterator[tuple[list[Row], Callable[[list[Row]], None]]]:
        """``with log.exchange() as (new_rows, append):`` the rows other workers appended since
        the last exchange (oldest first); ``append(rows)`` adds this worker's. One transaction:
        no other worker appends in between. Callers hold their own lock around it."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "SELECT id, key, stamp, length, sketch, emb, hold_level, hold_until "
                "FROM queries WHERE id > ? ORDER BY id",
                (self.last_id,),
            )
            new = []
            for rid, key, stamp, length, sketch, emb, level, until in cur:
                self.last_id = rid
                e = np.frombuffer(emb, dtype=np.float16).astype(np.float32) if emb else None
                q = PreparedQuery(np.frombuffer(sketch, dtype=np.uint64).copy(), length, e)
                new.append(Row(key, stamp, q, level, until))
            mine: list[Row] = []
            yield new, mine.extend
            for r in mine:
                q = r.query
                emb16 = q.emb.astype(np.float16).tobytes() if q.emb is not None else None
                cur = db.execute(
                    "INSERT INTO queries (key, stamp, length, sketch, emb, hold_level, "
                    "hold_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r.key, r.stamp, q.length, q.sketch.tobytes(), emb16, r.hold_level,
                     r.hold_until),
                )  # fmt: skip
                self.last_id = int(cur.lastrowid or self.last_id)
            self._appended += len(mine)
            if self._appended >= 1000:
                self._appended = 0
                db.execute("DELETE FROM queries WHERE id <= ?", (self.last_id - self.keep_rows,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this process's connection."""
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None


_REDIS_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDetectorLog:
    """The detector's shared state in Redis (the ``redis`` state backend): the decided queries
    in a stream (``XADD`` with ``MAXLEN ~ keep_rows``), read from this worker's last id.
    :meth:`exchange` holds a lock key (``SET NX PX``, released by a compare-and-delete script)
    around read, decide and append, so the workers decide one after another as with SQLite.
    A lock not released within ``lock_ms`` (a worker died) expires."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "robustops:detector:",
        keep_rows: int = 50_000,
        timeout: float = 0.5,
        lock_ms: int = 2000,
        client: Any = None,
    ) -> None:
        import redis

        self.stream, self.lock_key = prefix + "queries", prefix + "lock"
        self.keep_rows, self.lock_ms, self.timeout = keep_rows, lock_ms, timeout
        self.errors = 0
        self.last_id = b"0-0"
        self._redis: Any = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._unlock = self._redis.register_script(_REDIS_UNLOCK)
        self._error_types: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    @contextlib.contextmanager
    def exchange(self) -> Iterator[tuple[list[Row], Callable[[list[Row]], None]]]:
        """As :meth:`SqliteDetectorLog.exchange`; raises ``sqlite3.OperationalError`` (the
        error the detector falls back on) when Redis does not answer or the lock stays taken
        for ``timeout`` seconds."""
        token = os.urandom(8).hex()
        deadline = time.monotonic() + self.timeout
        pause = 20e-6
        try:
            while not self._redis.set(self.lock_key, token, nx=True, px=self.lock_ms):
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("the detector lock in redis stayed taken")
                time.sleep(pause)
                pause = min(2 * pause, 1e-3)
        except self._error_types as exc:
            raise sqlite3.OperationalError(f"redis: {exc}") from exc
        try:
            try:
                entries = self._redis.xrange(self.stream, min=b"(" + self.last_id)
            except self._error_types as exc:
                raise sqlite3.OperationalError(f"redis: {exc}") from exc
            new = []
            for rid, f in entries:
                self.last_id = rid
                emb = f.get(b"emb", b"")
                e = np.frombuffer(emb, dtype=np.float16).astype(np.float32) if emb else None
                sketch = np.frombuffer(f[b"sketch"], dtype=np.uint64).copy()
                q = PreparedQuery(sketch, int(f[b"length"]), e)
                new.append(
                    Row(f[b"key"].decode(), float(f[b"stamp"]), q, int(f[b"hl"]), float(f[b"hu"]))
                )
            mine: list[Row] = []
            yield new, mine.extend
            try:
                pipe = self._redis.pipeline(transaction=False)
                for r in mine:
                    q = r.query
                    fields: dict[bytes, Any] = {
                        b"key": r.key.encode(),
                        b"stamp": repr(r.stamp),
                        b"length": q.length,
                        b"sketch": q.sketch.tobytes(),
                        b"emb": q.emb.astype(np.float16).tobytes() if q.emb is not None else b"",
                        b"hl": r.hold_level,
                        b"hu": repr(r.hold_until),
                    }
                    pipe.xadd(self.stream, fields, maxlen=self.keep_rows, approximate=True)
                ids = pipe.execute()
                if ids:
                    self.last_id = ids[-1]
            except self._error_types as exc:
                raise sqlite3.OperationalError(f"redis: {exc}") from exc
        finally:
            with contextlib.suppress(*self._error_types):
                self._unlock(keys=[self.lock_key], args=[token])

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


# -- the guard's detector ---------------------------------------------------------------------------


def _key_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


class _CrossKeyRing:
    """The last ``size`` embeddings of all keys, with their times and their keys' ids."""

    def __init__(self, size: int, dim: int) -> None:
        self.emb = np.zeros((size, dim), dtype=np.float32)
        self.stamp = np.full(size, -np.inf)
        self.key = np.zeros(size, dtype=np.int64)
        self.n = 0

    def matches(self, e: F32, threshold: float, since: float, key: int) -> int:
        """Held queries of keys other than ``key`` within ``threshold`` of ``e`` (a scan of
        every slot)."""
        return int(((self.emb @ e >= threshold) & (self.stamp > since) & (self.key != key)).sum())

    def add(self, e: F32 | None, now: float, key: int) -> None:
        if e is None or e.size != self.emb.shape[1]:
            return
        slot = self.n % self.emb.shape[0]
        self.emb[slot], self.stamp[slot], self.key[slot] = e, now, key
        self.n += 1


class GuardDetector:
    """Runs every input of a batch through the detector; the batch's action is the most
    severe of its inputs', its reasons those of that input.

    Args:
        config: the ``serve.detection`` settings.
        secret: the fingerprint hash key (:func:`detector_secret`), also the projection's seed.
        modality: ``image``, ``table`` or ``text`` (fingerprints of shingles, no embedding).
        tap: where embeddings come from (:class:`FeatureTap`); None: fingerprints only (the
            features the guard passes to :meth:`observe` are the abstainer's, the penultimate
            layer's at best, where different inputs of one class collapse together: not used).
        log: the shared state (:class:`SqliteDetectorLog`, :class:`RedisDetectorLog`); None:
            this process only.
        clock: wall-clock seconds (shared by the workers of a host).
    """

    def __init__(
        self,
        config: DetectionConfig,
        secret: bytes,
        modality: str,
        *,
        tap: FeatureTap | None = None,
        log: SqliteDetectorLog | RedisDetectorLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        policy = DetectionPolicy(
            log_at=config.log_at,
            flag_at=config.flag_at,
            throttle_at=config.throttle_at,
            block_at=config.block_at,
            hold_seconds=config.hold_seconds,
        )
        self.config = config
        self.text = modality == "text"
        self.tap = tap if not self.text else None
        use = self.tap is not None and config.embedding != "off"
        self.detector = QueryDetector(
            DetectorConfig(
                quantization_step=config.quantization_step,
                window=config.window,
                history=config.history,
                max_keys=config.max_keys,
                embedding_threshold=config.embedding_threshold or 0.98,
                policy=policy,
            ),
            secret=secret,
            embedding_dim=tap.dim if use and tap is not None else None,
            use_embeddings=use,
            clock=clock,
        )
        self.cross_policy = DetectionPolicy(
            log_at=None,
            flag_at=config.cross_key_flag_at,
            throttle_at=config.cross_key_throttle_at,
            block_at=config.cross_key_block_at,
            hold_seconds=config.hold_seconds,
        )
        self.cross = (
            _CrossKeyRing(config.cross_key_window, tap.dim) if use and tap is not None else None
        )
        self.log = log
        self.clock = clock
        self._lock = threading.Lock()
        self.calibration: dict[str, Any] = {}
        if log is not None:
            with contextlib.suppress(sqlite3.Error):
                self.sync()

    # -- set-up -----------------------------------------------------------------------------

    @property
    def uses_embeddings(self) -> bool:
        """Whether the embedding signals run."""
        return self.detector.use_embeddings

    def calibrate(self, held_out: Tensor) -> float:
        """Set the embedding threshold from held-out clean inputs ``(n, ...)`` (unless the
        config fixes it): :func:`calibrate_threshold` on the pairs the model puts in one
        class; returns it."""
        assert self.tap is not None
        device = next(self.tap.module.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            logits = self.tap.module(held_out.to(device))
        emb = self.tap.take(int(held_out.shape[0]))
        assert emb is not None, f"{self.tap.layer!r} did not run"
        classes = logits.argmax(dim=1).cpu().numpy()
        if emb.shape[0] >= 2:
            tau = calibrate_threshold(emb, self.config.embedding_pair_rate, classes)
        else:  # nothing to calibrate on: the library default
            tau = DetectorConfig.embedding_threshold
        if self.config.embedding_threshold is not None:
            tau_used = float(self.config.embedding_threshold)
        else:
            tau_used = tau
        self.detector.embedding_threshold = tau_used
        self.calibration = {
            "threshold": tau_used,
            "calibrated": tau,
            "pair_rate": self.config.embedding_pair_rate,
            "n": int(emb.shape[0]),
            "layer": self.tap.layer,
        }
        return tau_used

    def attach(self, tap: FeatureTap | None) -> None:
        """Read embeddings from ``tap`` from now on (a new model's, after an alias swap)."""
        old, self.tap = self.tap, tap if not self.text else None
        if old is not None and old is not tap:
            old.close()

    # -- per request ------------------------------------------------------------------------

    def _decide(self, key: str, q: PreparedQuery, now: float) -> tuple[QueryDecision, int, Row]:
        extra, n_cross = 0, 0
        if self.cross is not None and q.emb is not None:
            max_age = self.detector.config.max_age
            since = now - max_age if max_age is not None else -math.inf
            kid = _key_id(key)
            n_cross = self.cross.matches(q.emb, self.detector.embedding_threshold, since, kid)
            extra = self.cross_policy.level(n_cross)
            if not key.startswith(OWN_PREFIX):
                self.cross.add(q.emb, now, kid)
        d = self.detector.decide_prepared(key, q, now=now, extra_level=extra)
        level, until = self.detector.hold(key)
        return d, (n_cross if extra else 0), Row(key, now, q, level, until)

    def _replay(self, rows: list[Row]) -> None:
        for r in rows:
            self.detector.replay(
                r.key, r.query, now=r.stamp, hold_level=r.hold_level, hold_until=r.hold_until
            )
            if self.cross is not None and not r.key.startswith(OWN_PREFIX):
                self.cross.add(r.query.emb, r.stamp, _key_id(r.key))

    def sync(self) -> int:
        """Replay the rows other workers appended since the last look; how many."""
        if self.log is None:
            return 0
        with self._lock, self.log.exchange() as (new, _append):
            self._replay(new)
        return len(new)

    def observe(
        self, key: str, batch: Batch, embedding: Tensor | None, *, own: bool = False
    ) -> tuple[str, list[str]]:
        """See :class:`robustops.serving.guard.Detector`. The service's own queries (``own``)
        are kept under ``OWN_PREFIX + key`` in every worker's state (shared rows included), so
        they are judged per key as usual but never enter the cross-key ring."""
        return self.observe_many([(key, batch, own)], embedding)[0]

    def observe_many(
        self, items: Sequence[tuple[str, Batch, bool]], features: Tensor | None = None
    ) -> list[tuple[str, list[str]]]:
        """See :class:`robustops.serving.guard.BatchDetector`: the requests ``(key, batch,
        own)`` decided in order under one lock and one exchange with the shared state. The
        embeddings are those of the forward pass that just ran on this thread over all the
        batches' inputs together (else each batch's own pass); ``features`` is not used (see
        the class docstring)."""
        batches = [b for _, b, _ in items]
        embs = self._embeddings_many(batches)
        queries: list[PreparedQuery]
        if self.text:
            queries = [self.detector.prepare(t, text=True) for b in batches for t in b.raw]
        else:  # every input of the pass fingerprinted at once
            raw = [b.raw for b in batches]
            together = raw[0] if len(raw) == 1 else torch.cat(raw)  # type: ignore[arg-type]
            assert isinstance(together, Tensor)
            flat: F32 | None = None
            if all(e is not None for e in embs):
                flat = np.concatenate([e for e in embs if e is not None])
            queries = self.detector.prepare_tensors(together.numpy(), flat)
        queries = [  # the float16 values the shared state keeps, here too
            q
            if q.emb is None
            else PreparedQuery(q.sketch, q.length, q.emb.astype(np.float16).astype(np.float32))
            for q in queries
        ]
        starts = list(itertools.accumulate((b.n for b in batches), initial=0))
        prepared = [
            (OWN_PREFIX + key if own else key, queries[a:z])
            for (key, _, own), (a, z) in zip(items, itertools.pairwise(starts), strict=True)
        ]
        with self._lock:
            now = float(self.clock())
            decided: list[list[tuple[QueryDecision, int, Row]]] | None = None
            if self.log is not None:
                try:
                    with self.log.exchange() as (new, append):
                        self._replay(new)
                        decided = [[self._decide(k, q, now) for q in qs] for k, qs in prepared]
                        append([r for per in decided for _, _, r in per])
                except sqlite3.Error:  # shared state unreachable: decide on this worker's
                    self.log.errors += 1
            if decided is None:
                decided = [[self._decide(k, q, now) for q in qs] for k, qs in prepared]
        return [_verdict(per) for per in decided]

    def _embeddings_many(self, batches: Sequence[Batch]) -> list[F32 | None]:
        """Each batch's embeddings ``(n_i, dim)``, or None per batch without embeddings."""
        if not self.uses_embeddings:
            return [None] * len(batches)
        assert self.tap is not None
        sizes = [b.n for b in batches]
        together = self.tap.take(sum(sizes))
        if together is None:  # the forward pass ran elsewhere: run it here (same work either way)
            return [
                self.tap.embed(b.inputs) if isinstance(b.inputs, Tensor) else None for b in batches
            ]
        bounds = np.cumsum([0, *sizes])
        return [together[a:b] for a, b in itertools.pairwise(bounds)]


def _verdict(decided: list[tuple[QueryDecision, int, Row]]) -> tuple[str, list[str]]:
    """A request's action (its most severe input's) and that input's reasons."""
    worst, cross = max(((d, c) for d, c, _ in decided), key=lambda t: t[0].severity)
    reasons = [f"{r} ({worst.matches} near-duplicates)" for r in worst.reasons]
    if cross:
        reasons.append(f"cross-key embedding ({cross} similar recent queries of any key)")
    return _GUARD_ACTION[worst.action], reasons


__all__ = [
    "ACTIONS",
    "OWN_PREFIX",
    "FeatureTap",
    "GuardDetector",
    "RedisDetectorLog",
    "SqliteDetectorLog",
    "calibrate_threshold",
    "default_embedding_layer",
    "detector_secret",
]
