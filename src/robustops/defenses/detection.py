"""Stateful detection of query-based attacks in progress, per client key.

A score- or decision-based attack (Square, HopSkipJump, NES, ...) sends its victim hundreds of
queries that are near-duplicates of one another: small changes of one image. A service that sees
every query of a client can notice. :class:`QueryDetector` keeps, for each client key, a window of
that client's recent queries and scores every new query by how many of them it nearly
duplicates, with two signals computed on every query:

* **Fingerprints** (Blacklight; Li et al., USENIX Security 2022). The input is flattened and
  quantized (``round(x / quantization_step)``), a window of ``window`` values slides over it, every
  window is hashed with a keyed hash, and the ``fingerprint_size`` largest distinct hashes are the
  fingerprint. Two queries *match* when their fingerprints share at least ``match_threshold``
  hashes. A small change (one square of Square, a little noise) leaves most windows, and so most
  of the top hashes, intact; two different images share almost none. Because the windows run over
  the flattened input, a shift by whole pixels keeps almost every window. Text is fingerprinted
  the same way over character (or word) shingles of the normalised text.
* **Embedding similarity.** The caller supplies an embedding of each query (``embed``, e.g. a
  layer of the model's features, or ``embedding=`` with every call); a query matches a held one
  when their cosine similarity is at least ``embedding_threshold``. This catches changes that move
  many quantization bins at once (a brightness change, a blur, an L2 attack's spread
  perturbation) yet leave the features where they were.

A held query counts as a *match* of the new one when either signal matches; the decision is
taken on the number of matches (:attr:`QueryDecision.matches`), that is the size of the near-duplicate
cluster the new query joins within the key's window. This, not "did it match anything", is what
separates an attack from an honest client that re-sends a document a few times: an attack's
queries form one cluster that grows by one with every query, a client's re-scans form clusters of
a few. :class:`DetectionPolicy` maps the count to an action (``allow``, ``log``, ``flag``,
``throttle``, ``block``) and holds an escalated key at its level for ``hold_seconds``.

**Data structures and cost.** Each key holds ring buffers of at most ``history`` queries: a
``sketch_bits``-bit sketch of each fingerprint (hash ``h`` sets bit ``h mod sketch_bits``), the
fingerprint's length, the embedding (unit norm, float32) and the time. A new query is compared
with every held one at once: shared hashes are counted as ``popcount(sketch_i & sketch_q)`` and
similarities as one matrix-vector product, both exact scans over the last ``history`` queries.
Nothing is fitted; inserting is one row write. The sketch count is exact but for chance
collisions of two different hashes on the same bit, which only add: about ``N² / B`` (1.2 for
``N = 50`` hashes in ``B = 2048`` bits) in expectation, small against the threshold of 25
(99.9% of pairs of different MNIST test digits share at most 21 hashes). Exact search over the last ``K``
queries is the right index at this size: at ``K = 128`` it costs microseconds, and unlike an
approximate index (HNSW, IVF) it needs no deletion when the ring overwrites its oldest entry and
has no recall loss an attacker could aim at.

**Constant work.** The cost of :meth:`QueryDetector.observe` does not depend on whether, or how
much, the query matches: both signals are always computed, over every slot of the key's buffers
(empty and expired slots included: their masks are applied after the arithmetic), with array
operations whose work is fixed by the shapes; the policy is a handful of comparisons; the record
is built the same way for every action. The shapes depend only on the input's size, the
configuration and the buffers' capacity, which grows by doubling with the number of queries the
key has sent (up to ``history``): quantities the client knows already. A per-key hash table of
postings (hash → queries) would make lookups ``O(N)`` on average but ``O(N + matches)`` in fact,
slower precisely on the matching queries an attacker wants to tell apart; the scan does not. What
the service does with the action (a 429, a block) is visible by design; how it words it, and that
it spends the same work before answering, is its job.

**Keys of the hash.** The hash of a window is a keyed multilinear hash,
``fmix64(Σ_j a_j · q_{i+j} + b mod 2⁶⁴)`` with odd coefficients ``a_j`` and offset ``b`` derived
(SHA-256, then PCG64) from ``secret``; words of text are first mapped to 64-bit ids with keyed
BLAKE2b. For two different windows the multilinear sum collides with probability about
``2⁻⁵⁶`` over the key, and which windows end up in the top ``N`` is a function of the key: an
attacker who does not know the secret can neither precompute colliding or non-colliding inputs
nor tell which parts of an input the fingerprint looks at. It is a universal hash, not a MAC: a
client that could observe hash values could learn the coefficients, but none is ever returned.
Use a random secret of at least 16 bytes, kept server-side; an int seed gives reproducible tests.

**Memory.** At most ``max_keys`` keys are held; the least recently used key is evicted beyond
that (its state is forgotten, so the cap should exceed the number of keys active within
``max_age``). A key holds at most ``history`` queries (older ones are overwritten) and ignores
held queries older than ``max_age`` seconds. :meth:`QueryDetector.memory_bound` gives the worst
case in bytes; a key's buffers start at 8 slots and double as it sends queries.

**Determinism and threads.** Given the secret, the decisions are a function of the sequence of
``(key, input, embedding, now)`` calls; pass ``now`` (seconds, any monotonic origin) for
reproducible runs, otherwise ``clock()`` is read. The key table is guarded by one lock, each key's
state by its own, so requests of different keys do not wait for each other's scans; the
fingerprint and the embedding are computed before any lock is taken.

Adaptive attacks exist: OARS (Feng et al., 2023) beats Blacklight on 77.6% of images by
transforming each query; spreading a campaign over many keys defeats any per-key state. This
module is one layer of a guard, not a proof of safety; ``benchmarks/detection.py`` measures a
simple adaptive attacker.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from robustops.errors import SpecError

__all__ = [
    "ACTIONS",
    "Action",
    "DetectionPolicy",
    "DetectorConfig",
    "Fingerprinter",
    "PreparedQuery",
    "QueryDecision",
    "QueryDetector",
]

Action = Literal["allow", "log", "flag", "throttle", "block"]
ACTIONS: tuple[Action, ...] = ("allow", "log", "flag", "throttle", "block")
"""The actions, mildest first; their index is their severity."""

Reason = Literal["fingerprint", "embedding", "held"]

U64 = npt.NDArray[np.uint64]
_MASK64 = (1 << 64) - 1
_FIRST_CAPACITY = 8


# -- configuration ----------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError.single(name, f"must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class DetectionPolicy:
    """Actions by the number of held queries of the key a new query matches.

    A query matching at least ``block_at`` held queries is blocked, else at least
    ``throttle_at`` throttled, ``flag_at`` flagged, ``log_at`` logged, and allowed otherwise. A
    threshold set to ``None`` disables its action. A key that reaches ``flag`` or higher stays at
    least at that level for ``hold_seconds`` after its last query that reached it (``0``: no
    hold), so an attacker cannot drop back to ``allow`` by sending one unrelated query.

    The defaults suit clients that send each input a few times at most (a re-scan, a retry):
    ``flag_at=5`` lets a client send an input and four near-duplicates of it before being
    flagged. Thresholds must not decrease from ``log_at`` to ``block_at``.
    """

    log_at: int | None = 1
    flag_at: int | None = 5
    throttle_at: int | None = 12
    block_at: int | None = 30
    hold_seconds: float = 600.0

    def __post_init__(self) -> None:
        last = 0
        for name in ("log_at", "flag_at", "throttle_at", "block_at"):
            value = getattr(self, name)
            if value is None:
                continue
            _positive_int(name, value)
            if value < last:
                raise SpecError.single(name, f"must not be below a milder action's ({last})")
            last = value
        if not (math.isfinite(self.hold_seconds) and self.hold_seconds >= 0):
            raise SpecError.single("hold_seconds", f"must be >= 0, got {self.hold_seconds!r}")

    def level(self, matches: int) -> int:
        """Severity (index into :data:`ACTIONS`) for a query matching ``matches`` held ones."""
        level = 0
        for i, at in enumerate((self.log_at, self.flag_at, self.throttle_at, self.block_at), 1):
            if at is not None and matches >= at:
                level = i
        return level


@dataclass(frozen=True)
class DetectorConfig:
    """Fingerprints, similarity, memory bounds and policy of a :class:`QueryDetector`.

    Attributes:
        quantization_step: bin width, in input units, of ``round(x / step)`` before hashing
            (0.2 on inputs in [0, 1]: Blacklight's step of 50 on 0..255 pixels).
        window: length of the hashed windows over a flattened tensor input, in values
            (Blacklight's 20; on MNIST 20 flags Square L∞ sooner than 50 at no cost in false
            flags, see BENCHMARKS.md).
        fingerprint_size: ``N``, the largest distinct window hashes kept per query.
        match_threshold: shared hashes for two full fingerprints to match (Blacklight: 25 of 50).
            Shorter fingerprints (short texts, tiny inputs) need the same fraction of the
            shorter one, at least 1.
        text_unit: ``"char"`` (character shingles) or ``"word"`` shingles for text inputs.
        text_window: shingle length, in characters or words.
        embedding_threshold: cosine similarity in ``(0, 1]`` at which two embeddings match.
        history: ``K``, the most queries held per key (a ring: the oldest is overwritten).
        max_age: seconds after which a held query no longer counts (``None``: never).
        max_keys: keys held at once; the least recently used is evicted beyond that.
        sketch_bits: bits of a fingerprint's sketch, a power of two >= 64.
        policy: the actions by match count.
    """

    quantization_step: float = 0.2
    window: int = 20
    fingerprint_size: int = 50
    match_threshold: int = 25
    text_unit: Literal["char", "word"] = "char"
    text_window: int = 5
    embedding_threshold: float = 0.98
    history: int = 128
    max_age: float | None = 3600.0
    max_keys: int = 4096
    sketch_bits: int = 2048
    policy: DetectionPolicy = field(default_factory=DetectionPolicy)

    def __post_init__(self) -> None:
        step = self.quantization_step
        if not (isinstance(step, int | float) and math.isfinite(step) and step > 0):
            raise SpecError.single("quantization_step", f"must be > 0, got {step!r}")
        for name in ("window", "fingerprint_size", "match_threshold", "text_window"):
            _positive_int(name, getattr(self, name))
        for name in ("history", "max_keys"):
            _positive_int(name, getattr(self, name))
        if self.match_threshold > self.fingerprint_size:
            raise SpecError.single(
                "match_threshold", f"must be <= fingerprint_size ({self.fingerprint_size})"
            )
        if self.text_unit not in ("char", "word"):
            raise SpecError.single("text_unit", f"must be 'char' or 'word', got {self.text_unit!r}")
        tau = self.embedding_threshold
        if not (isinstance(tau, int | float) and 0 < tau <= 1):
            raise SpecError.single("embedding_threshold", f"must be in (0, 1], got {tau!r}")
        if self.max_age is not None and not (math.isfinite(self.max_age) and self.max_age > 0):
            raise SpecError.single("max_age", f"must be > 0 or None, got {self.max_age!r}")
        bits = self.sketch_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 64 or bits & (bits - 1):
            raise SpecError.single("sketch_bits", f"must be a power of two >= 64, got {bits!r}")
        if not isinstance(self.policy, DetectionPolicy):
            raise SpecError.single("policy", "must be a DetectionPolicy")


# -- fingerprints -----------------------------------------------------------------------------


def _fmix64(h: U64) -> U64:
    """MurmurHash3's 64-bit finaliser, in place: a bijection that mixes every bit into all."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _secret_bytes(secret: bytes | str | int) -> bytes:
    if isinstance(secret, bool):
        raise SpecError.single("secret", "must be bytes, str or int, got a bool")
    if isinstance(secret, int):
        return b"seed:" + str(secret).encode()
    if isinstance(secret, str):
        return b"str:" + secret.encode()
    if isinstance(secret, bytes | bytearray):
        return b"bytes:" + bytes(secret)
    raise SpecError.single("secret", f"must be bytes, str or int, got {type(secret).__name__}")


class Fingerprinter:
    """Keyed Blacklight fingerprints of tensors and texts (stateless, thread-safe).

    Args:
        config: quantization, window lengths and fingerprint size.
        secret: key of the window hash (bytes, str or an int seed); see the module docstring.
    """

    def __init__(self, config: DetectorConfig, secret: bytes | str | int = 0) -> None:
        self.config = config
        root = hashlib.sha256(b"robustops.detection.v1\0" + _secret_bytes(secret)).digest()
        self._coef: dict[str, tuple[U64, np.uint64]] = {}
        for domain, length in (("tensor", config.window), ("text", config.text_window)):
            seed = hashlib.sha256(root + domain.encode()).digest()
            gen = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
            raw = gen.bit_generator.random_raw(length + 1)
            coef = np.asarray(raw[:length], dtype=np.uint64) | np.uint64(1)
            self._coef[domain] = (coef, np.uint64(int(raw[length])))
        self._word_key = hashlib.sha256(root + b"words").digest()[:32]

    def _window_hashes(self, symbols: U64, domain: str) -> U64:
        """Sorted keyed hashes ``(B, W)`` (never 0) of the windows of each row of ``symbols``
        ``(B, L)``, ``L >= 1``; a row shorter than the window is one window."""
        coef, offset = self._coef[domain]
        b, length = symbols.shape
        w = min(coef.size, length)
        symbols = np.ascontiguousarray(symbols)
        windows = as_strided(symbols, (b, length - w + 1, w), (8 * length, 8, 8), writeable=False)
        with np.errstate(over="ignore"):
            h = windows @ coef[:w]
            h += offset
            h = _fmix64(h)
        h[h == 0] = 1  # 0 marks an empty slot
        h.sort(axis=1)
        return h

    def _top(self, symbols: U64, domain: str) -> U64:
        """Sorted top-``N`` distinct keyed hashes ``(n,)`` (``n <= N``, never 0) of the windows
        of ``symbols`` ``(L,)`` (:meth:`_window_hashes`)."""
        if symbols.size == 0:
            return np.zeros(0, dtype=np.uint64)
        h = self._window_hashes(symbols[None], domain)[0]
        keep = np.empty(h.size, dtype=bool)
        keep[-1] = True
        np.not_equal(h[1:], h[:-1], out=keep[:-1])
        out: U64 = h[keep][-self.config.fingerprint_size :]
        return out

    def _symbols(self, x: Any) -> U64:
        """``x`` quantized to ``quantization_step`` as uint64 symbols, same shape (raises
        :class:`SpecError` on non-finite values)."""
        arr = _as_array(x)
        if not np.isfinite(arr).all():
            raise SpecError.single("input", "holds NaN or infinite values")
        q = np.floor(arr / self.config.quantization_step + 0.5)
        out: U64 = q.astype(np.int64).view(np.uint64)
        return out

    def tensor(self, x: Any) -> U64:
        """Fingerprint of one input of any shape (a NumPy array, a torch tensor or a nested
        sequence of numbers), flattened in C order: sorted distinct uint64 hashes ``(n,)``,
        ``n <= fingerprint_size``. Raises :class:`SpecError` on non-finite values."""
        return self._top(self._symbols(x).ravel(), "tensor")

    def tensors(self, xs: Any) -> list[U64]:
        """:meth:`tensor` of each row of ``xs`` ``(B, ...)`` (one input per row), computed for
        all rows at once: the same arrays, in far fewer NumPy calls."""
        symbols = self._symbols(xs)
        if symbols.ndim == 0 or symbols.shape[0] == 0:
            return []
        rows = symbols.reshape(symbols.shape[0], -1)
        if rows.shape[0] == 1:  # one row: the plain path has fewer NumPy calls
            return [self._top(rows[0], "tensor")]
        if rows.shape[1] == 0:
            return [np.zeros(0, dtype=np.uint64) for _ in range(rows.shape[0])]
        h = self._window_hashes(rows, "tensor")
        keep = np.ones(h.shape, dtype=bool)  # the last copy of each run of equal hashes
        np.not_equal(h[:, 1:], h[:, :-1], out=keep[:, :-1])
        from_end = np.cumsum(keep[:, ::-1], axis=1)[:, ::-1]  # distinct hashes from here on
        keep &= from_end <= self.config.fingerprint_size
        return np.split(h[keep], np.cumsum(keep.sum(axis=1))[:-1])

    def text(self, text: str) -> U64:
        """Fingerprint of ``text`` over its shingles, after NFKC normalisation, case folding and
        whitespace collapsing: sorted distinct uint64 hashes ``(n,)``, ``n <= fingerprint_size``
        (0 for an empty text)."""
        if not isinstance(text, str):
            raise SpecError.single("input", f"must be a str, got {type(text).__name__}")
        norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
        if self.config.text_unit == "char":
            symbols = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        else:
            ids = [
                int.from_bytes(
                    hashlib.blake2b(w.encode(), key=self._word_key, digest_size=8).digest(),
                    "little",
                )
                for w in re.findall(r"\w+", norm)
            ]
            symbols = np.asarray(ids, dtype=np.uint64)
        return self._top(symbols, "text")


def _as_array(x: Any) -> npt.NDArray[np.float64]:
    """``x`` as a float64 array (torch tensors are detached and moved to the CPU)."""
    detach = getattr(x, "detach", None)
    if callable(detach):
        x = detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError.single("input", f"is not an array of numbers ({exc})") from exc


# -- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryDecision:
    """What the detector decided for one query of one key (immutable).

    Attributes:
        key: the client key.
        action: one of :data:`ACTIONS`.
        reasons: the signals that matched (``"fingerprint"``, ``"embedding"``) and ``"held"``
            when the action comes from the key's hold rather than this query alone. For logs
            and metrics: never return them to the client.
        matches: held queries of the key (within its window) this one matches by either signal.
        fingerprint_matches: those sharing at least the threshold of fingerprint hashes.
        embedding_matches: those within the embedding threshold (0 without embeddings).
        held: queries of the key now held in its window, this one included.
    """

    key: str
    action: Action
    reasons: tuple[Reason, ...]
    matches: int
    fingerprint_matches: int
    embedding_matches: int
    held: int

    @property
    def severity(self) -> int:
        """Index of :attr:`action` in :data:`ACTIONS` (0 = allow ... 4 = block)."""
        return ACTIONS.index(self.action)


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """One query reduced to what the detector keeps (:meth:`QueryDetector.prepare`): the
    fingerprint's sketch ``(sketch_bits / 64,)`` uint64, the fingerprint's length and the unit
    embedding (``None`` without embeddings)."""

    sketch: U64
    length: int
    emb: npt.NDArray[np.float32] | None


class _KeyState:
    """Ring buffers of one key's recent queries (see the module docstring). Guarded by ``lock``."""

    def __init__(self, words: int, dim: int | None, history: int) -> None:
        self.lock = threading.Lock()
        cap = min(_FIRST_CAPACITY, history)
        self.sketch = np.zeros((cap, words), dtype=np.uint64)
        self.length = np.zeros(cap, dtype=np.int32)
        self.stamp = np.full(cap, -np.inf)
        self.emb = np.zeros((cap, dim), dtype=np.float32) if dim is not None else None
        self.sent = 0  # queries ever observed
        self.hold_level = 0
        self.hold_until = -np.inf
        self._and = np.empty_like(self.sketch)

    @property
    def capacity(self) -> int:
        return int(self.length.size)

    def grow(self, history: int) -> None:
        """Double the buffers (up to ``history``) when full and not yet at ``history``."""
        cap = self.capacity
        if self.sent < cap or cap >= history:
            return
        new = min(2 * cap, history)
        pad = new - cap
        self.sketch = np.concatenate([self.sketch, np.zeros((pad, self.sketch.shape[1]), "u8")])
        self.length = np.concatenate([self.length, np.zeros(pad, np.int32)])
        self.stamp = np.concatenate([self.stamp, np.full(pad, -np.inf)])
        if self.emb is not None:
            self.emb = np.concatenate([self.emb, np.zeros((pad, self.emb.shape[1]), np.float32)])
        self._and = np.empty_like(self.sketch)

    def nbytes(self) -> int:
        total = self.sketch.nbytes + self._and.nbytes + self.length.nbytes + self.stamp.nbytes
        return total + (self.emb.nbytes if self.emb is not None else 0)


# -- the detector -----------------------------------------------------------------------------


class QueryDetector:
    """Per-key detector of query-based attacks in progress (see the module docstring).

    Args:
        config: fingerprint, similarity, memory and policy settings.
        secret: key of the fingerprint hash: random bytes kept server-side in production, an
            int seed in tests.
        embed: optional function from one input (as passed to :meth:`observe`) to its embedding,
            a 1-D array of ``d`` floats; called on every query. Alternatively pass
            ``embedding=`` with each call (e.g. features the model computed anyway).
        embedding_dim: ``d``, when known up front; otherwise fixed by the first embedding.
        use_embeddings: whether every query must come with an embedding. Default: when
            ``embed`` or ``embedding_dim`` is given. Without embeddings only fingerprints count.
        clock: time source in seconds for calls without ``now`` (default ``time.monotonic``).

    Example::

        det = QueryDetector(DetectorConfig(), secret=os.urandom(32), embed=features)
        d = det.observe("client-7", image)          # image: (C, H, W) floats in [0, 1]
        if d.action in ("throttle", "block"): ...
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        *,
        secret: bytes | str | int = 0,
        embed: Callable[[Any], Any] | None = None,
        embedding_dim: int | None = None,
        use_embeddings: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else DetectorConfig()
        self.fingerprinter = Fingerprinter(self.config, secret)
        if embedding_dim is not None:
            _positive_int("embedding_dim", embedding_dim)
        self.embed = embed
        self.use_embeddings = (
            use_embeddings
            if use_embeddings is not None
            else (embed is not None or embedding_dim is not None)
        )
        self._dim = embedding_dim
        self.embedding_threshold = float(self.config.embedding_threshold)
        """The cosine similarity at which embeddings match (``config.embedding_threshold``
        unless set since, e.g. calibrated on held-out data)."""
        self._clock = clock
        self._words = self.config.sketch_bits // 64
        self._states: OrderedDict[str, _KeyState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        """Keys evicted so far (least recently used beyond ``max_keys``)."""

    # -- public API ---------------------------------------------------------------------------

    def observe(
        self, key: str, x: Any, *, embedding: Any = None, now: float | None = None
    ) -> QueryDecision:
        """Score one tensor query ``x`` (one input, any shape, e.g. ``(C, H, W)`` in the
        model's input units; no batch dimension) of ``key``, record it, and decide.

        ``embedding``: the query's embedding ``(d,)`` (else ``embed(x)`` is called when the
        detector uses embeddings). ``now``: the time in seconds (else ``clock()``)."""
        return self._observe(key, self.fingerprinter.tensor(x), x, embedding, now)

    def observe_text(
        self, key: str, text: str, *, embedding: Any = None, now: float | None = None
    ) -> QueryDecision:
        """As :meth:`observe`, for a text query (shingle fingerprints; ``embed`` gets the str)."""
        return self._observe(key, self.fingerprinter.text(text), text, embedding, now)

    def forget(self, key: str) -> bool:
        """Drop the state of ``key``; whether it was held."""
        with self._lock:
            return self._states.pop(key, None) is not None

    def clear(self) -> None:
        """Drop every key's state."""
        with self._lock:
            self._states.clear()

    def keys(self) -> list[str]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._states)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._states

    def memory_bytes(self) -> int:
        """Bytes of the buffers of every key held now (NumPy arrays only)."""
        with self._lock:
            states = list(self._states.values())
        return sum(s.nbytes() for s in states)

    def memory_bound(self, embedding_dim: int | None = None) -> int:
        """Worst-case bytes of the buffers: ``max_keys`` keys at ``history`` queries each.

        Per held query: the sketch twice (it and its scratch, ``2 · sketch_bits / 8``), the
        fingerprint length (4), the time (8) and the float32 embedding (``4 d``)."""
        dim = embedding_dim if embedding_dim is not None else (self._dim or 0)
        per_query = (
            2 * self.config.sketch_bits // 8 + 4 + 8 + (4 * dim if self.use_embeddings else 0)
        )
        return self.config.max_keys * self.config.history * per_query

    # -- internals ----------------------------------------------------------------------------

    def _embedding(self, x: Any, embedding: Any) -> npt.NDArray[np.float32] | None:
        if not self.use_embeddings:
            if embedding is not None:
                raise SpecError.single("embedding", "this detector does not use embeddings")
            return None
        if embedding is None:
            if self.embed is None:
                raise SpecError.single("embedding", "required: the detector uses embeddings")
            embedding = self.embed(x)
        e = _as_array(embedding).astype(np.float32).ravel()
        if not np.isfinite(e).all():
            raise SpecError.single("embedding", "holds NaN or infinite values")
        norm = float(np.linalg.norm(e))
        return e / norm if norm > 0 else e

    def _sized_embedding(self, x: Any, embedding: Any) -> npt.NDArray[np.float32] | None:
        """:meth:`_embedding`, of the detector's dimension (fixed by the first one)."""
        emb = self._embedding(x, embedding)
        if emb is not None:
            with self._lock:
                if self._dim is None:
                    self._dim = int(emb.size)
            if emb.size != self._dim:
                raise SpecError.single(
                    "embedding", f"has {emb.size} values, the detector uses {self._dim}"
                )
        return emb

    def _sketch(self, fp: U64) -> U64:
        """``(sketch_bits / 64,)`` words with bit ``h mod sketch_bits`` set for each hash."""
        bits = np.zeros(self.config.sketch_bits, dtype=bool)
        bits[(fp & np.uint64(self.config.sketch_bits - 1)).astype(np.intp)] = True
        out: U64 = np.packbits(bits).view(np.uint64)
        return out

    def _state(self, key: str) -> _KeyState:
        with self._lock:
            st = self._states.get(key)
            if st is None:
                if self.use_embeddings and self._dim is None:
                    raise AssertionError("embedding dimension unset")  # pragma: no cover
                st = _KeyState(
                    self._words, self._dim if self.use_embeddings else None, self.config.history
                )
                self._states[key] = st
                while len(self._states) > self.config.max_keys:
                    self._states.popitem(last=False)
                    self.evicted += 1
            else:
                self._states.move_to_end(key)
            return st

    def _observe(
        self, key: str, fp: U64, x: Any, embedding: Any, now: float | None
    ) -> QueryDecision:
        if not isinstance(key, str):
            raise SpecError.single("key", f"must be a str, got {type(key).__name__}")
        emb = self._sized_embedding(x, embedding)
        sketch = self._sketch(fp)
        t = float(self._clock() if now is None else now)
        if not math.isfinite(t):
            raise SpecError.single("now", f"must be finite, got {now!r}")
        st = self._state(key)
        with st.lock:
            return self._decide(key, st, sketch, int(fp.size), emb, t)

    # -- prepared queries (shared state) -------------------------------------------------------

    def prepare(self, x: Any, *, embedding: Any = None, text: bool = False) -> PreparedQuery:
        """The part of :meth:`observe` that needs no key state: the query's fingerprint sketch,
        its length and its unit embedding. Feed it to :meth:`decide_prepared` (this worker's
        query) or :meth:`replay` (a query another worker decided)."""
        fp = self.fingerprinter.text(x) if text else self.fingerprinter.tensor(x)
        return PreparedQuery(self._sketch(fp), int(fp.size), self._sized_embedding(x, embedding))

    def prepare_tensors(
        self, xs: Any, embeddings: Sequence[Any] | npt.NDArray[Any] | None = None
    ) -> list[PreparedQuery]:
        """:meth:`prepare` of each row of ``xs`` ``(B, ...)`` (tensor queries), fingerprinted
        together (:meth:`Fingerprinter.tensors`); ``embeddings``: one per row (or None)."""
        fps = self.fingerprinter.tensors(xs)
        return [
            PreparedQuery(
                self._sketch(fp),
                int(fp.size),
                self._sized_embedding(xs[i], embeddings[i] if embeddings is not None else None),
            )
            for i, fp in enumerate(fps)
        ]

    def decide_prepared(
        self, key: str, q: PreparedQuery, *, now: float, extra_level: int = 0
    ) -> QueryDecision:
        """As :meth:`observe` for a :meth:`prepare`-d query at time ``now``; ``extra_level``
        (a severity from another signal, e.g. a cross-key count) is a floor of the query's own
        level and holds like it."""
        if not math.isfinite(now):
            raise SpecError.single("now", f"must be finite, got {now!r}")
        st = self._state(key)
        with st.lock:
            return self._decide(key, st, q.sketch, q.length, q.emb, now, extra_level)

    def hold(self, key: str) -> tuple[int, float]:
        """The key's hold: ``(level, until)`` (``(0, -inf)`` for an unknown key)."""
        with self._lock:
            st = self._states.get(key)
        if st is None:
            return 0, -math.inf
        with st.lock:
            return st.hold_level, float(st.hold_until)

    def replay(
        self, key: str, q: PreparedQuery, *, now: float, hold_level: int, hold_until: float
    ) -> None:
        """Record a query of ``key`` decided elsewhere (another worker) without deciding: it
        joins the key's window, and the key's hold becomes ``(hold_level, hold_until)``, the
        hold that worker left. Constant work: a row write."""
        st = self._state(key)
        with st.lock:
            st.grow(self.config.history)
            self._record(st, q.sketch, q.length, q.emb, now)
            st.hold_level, st.hold_until = int(hold_level), float(hold_until)

    def _record(
        self,
        st: _KeyState,
        sketch: U64,
        length: int,
        emb: npt.NDArray[np.float32] | None,
        now: float,
    ) -> int:
        """Overwrite the oldest slot of ``st`` with the query; the slot."""
        slot = st.sent % st.capacity
        st.sketch[slot] = sketch
        st.length[slot] = length
        st.stamp[slot] = now
        if st.emb is not None and emb is not None and emb.size == st.emb.shape[1]:
            st.emb[slot] = emb
        st.sent += 1
        return slot

    def _decide(
        self,
        key: str,
        st: _KeyState,
        sketch: U64,
        length: int,
        emb: npt.NDArray[np.float32] | None,
        now: float,
        extra_level: int = 0,
    ) -> QueryDecision:
        """Compare with every slot of ``st`` (constant work for its capacity), record, decide."""
        cfg = self.config
        st.grow(cfg.history)
        # held and recent enough (an empty slot's time is -inf)
        live = st.stamp > (now - cfg.max_age if cfg.max_age is not None else -np.inf)
        # fingerprint: shared hashes per slot, against the threshold scaled to the shorter one
        np.bitwise_and(st.sketch, sketch, out=st._and)
        shared = np.bitwise_count(st._and).sum(axis=1, dtype=np.int32)
        shorter = np.minimum(st.length, length)
        need = np.maximum(
            np.ceil(shorter * (cfg.match_threshold / cfg.fingerprint_size)), 1
        ).astype(np.int32)
        fp_match = (shared >= need) & live & (st.length > 0) & (length > 0)
        if emb is not None and st.emb is not None:
            emb_match = (st.emb @ emb >= self.embedding_threshold) & live
        else:
            emb_match = np.zeros_like(fp_match)
        n_fp = int(fp_match.sum())
        n_emb = int(emb_match.sum())
        n_any = int((fp_match | emb_match).sum())
        # record: overwrite the oldest slot (slots fill in order, then wrap)
        slot = self._record(st, sketch, length, emb, now)
        held = int(live.sum()) + 1 - int(live[slot])
        # policy
        level = max(cfg.policy.level(n_any), extra_level)
        if level >= 2:
            base = st.hold_level if st.hold_until > now else 0
            st.hold_level = max(base, level)
            st.hold_until = now + cfg.policy.hold_seconds
        held_level = st.hold_level if st.hold_until > now else 0
        action = ACTIONS[max(level, held_level)]
        signals: tuple[tuple[Reason, bool], ...] = (
            ("fingerprint", n_fp > 0),
            ("embedding", n_emb > 0),
            ("held", held_level > level),
        )
        reasons = tuple(r for r, on in signals if on)
        return QueryDecision(key, action, reasons, n_any, n_fp, n_emb, held)
