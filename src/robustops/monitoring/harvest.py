"""Harvesting: the guard's request log into a human review queue (SQLite).

:func:`harvest` reads the request log folder (``serve.request_log``: one JSON-lines file per
guard worker, appended to and flushed line by line, never rewritten) from where it stopped last
time, and puts into the :class:`ReviewQueue` every input of a non-canary ``predict`` record that
was

- **flagged**: the request's ``action`` is ``flag``, ``throttle`` or ``block`` (also when the
  guard stopped it before the model ran: then it has no ``predictions``, the per-input hash is
  computed here as the guard does, :func:`input_sha256`, and the model's answer is filled in
  if the same input is seen answered later);
- **abstained**: its ``predictions[i].abstain`` is true (the abstainer already decided);
- **out of distribution**: its ``predictions[i].score`` is above the given threshold
  (``monitor.harvest.ood_threshold``; none: this reason is not used),

and only when the record carries the ``input`` list (``serve.log_inputs: true``). Inputs are
deduplicated by their content sha256 (``predictions[i].sha256``): an input seen again bumps its
count, adds its reasons, keys and request ids (at most ``max_request_ids`` kept, the first
ones) and moves ``last_seen``.

Reading is incremental: the queue keeps, per log file, the byte offset after the last complete
line it consumed, in the same transaction as the items that line produced (a crash re-reads
nothing twice and loses nothing). A partial last line (a worker mid-write) is left for the next
harvest. A line that is complete but not valid JSON, or a record missing a field, is counted as
``bad`` and skipped.

Labels (:meth:`ReviewQueue.label`, :meth:`ReviewQueue.skip`) are appended to a history table
and never overwritten: an item's current label is its newest label event.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robustops.errors import RobustOpsError

__all__ = [
    "FLAG_ACTIONS",
    "HarvestStats",
    "LabelEvent",
    "QueueItem",
    "ReviewError",
    "ReviewQueue",
    "harvest",
    "input_sha256",
]

FLAG_ACTIONS = frozenset({"flag", "throttle", "block"})
"""Guard actions that send a request's inputs to review."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (
    file TEXT PRIMARY KEY,
    offset INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    input TEXT NOT NULL,
    model TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    predicted INTEGER,
    confidence REAL,
    score REAL,
    reasons TEXT NOT NULL,
    flags TEXT NOT NULL,
    keys TEXT NOT NULL,
    request_ids TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES items(id),
    action TEXT NOT NULL,
    label INTEGER,
    reviewer TEXT NOT NULL,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS labels_item ON labels(item_id, id);
"""

Status = Literal["pending", "labelled", "skipped"]


class ReviewError(RobustOpsError):
    """A review queue, a label, a Label Studio file or a reviewed data set is invalid; the
    message names the item, task or field."""


@dataclass(frozen=True)
class LabelEvent:
    """One entry of an item's label history: ``action`` ``label`` (with a class index) or
    ``skip``; ``at`` Unix seconds; ``source`` ``cli``, ``labelstudio`` or ``api``."""

    id: int
    item_id: int
    action: str
    label: int | None
    reviewer: str
    at: float
    source: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {
            "id": self.id,
            "item_id": self.item_id,
            "action": self.action,
            "label": self.label,
            "reviewer": self.reviewer,
            "at": self.at,
            "source": self.source,
            "note": self.note,
        }


@dataclass(frozen=True)
class QueueItem:
    """One distinct input waiting for (or having had) review.

    Attributes:
        id: queue item id (stable).
        sha256: the input's content sha256 as the guard logged it (float32 C-order tensor bytes
            of the validated input, or the UTF-8 text).
        modality: ``"tensor"`` (nested lists of numbers) or ``"text"``.
        input: the input as received (a nested list of numbers, or a string).
        model: served version label when first seen; ``weights_sha256`` its weights.
        predicted, confidence, score: the model's label, temperature-scaled top-class
            probability and anomaly score when first seen (``score`` may be ``None``).
        reasons: why it was harvested, sorted (``flag``, ``abstain``, ``ood``).
        flags: detector reasons of the flagging requests; ``keys`` API key names.
        request_ids: ids of the requests carrying it (the first ``max_request_ids``).
        count: how many times it was seen in harvested requests.
        first_seen, last_seen: request times, Unix seconds.
        history: label events, oldest first.
    """

    id: int
    sha256: str
    modality: str
    input: Any
    model: str
    weights_sha256: str
    predicted: int | None
    confidence: float | None
    score: float | None
    reasons: list[str]
    flags: list[str]
    keys: list[str]
    request_ids: list[str]
    count: int
    first_seen: float
    last_seen: float
    history: list[LabelEvent] = field(default_factory=list)

    @property
    def current(self) -> LabelEvent | None:
        """The newest label event (a label or a skip), or ``None`` before any review."""
        return self.history[-1] if self.history else None

    @property
    def label(self) -> int | None:
        """The current human label (``None`` when pending or skipped last)."""
        c = self.current
        return c.label if c is not None and c.action == "label" else None

    @property
    def status(self) -> Status:
        """``pending`` (never reviewed), ``labelled`` or ``skipped`` (by the newest event)."""
        c = self.current
        if c is None:
            return "pending"
        return "labelled" if c.action == "label" else "skipped"

    def to_json(self, *, with_input: bool = True) -> dict[str, Any]:
        """JSON-ready copy (``with_input`` False leaves the input out)."""
        out: dict[str, Any] = {
            "id": self.id,
            "sha256": self.sha256,
            "modality": self.modality,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "predicted": self.predicted,
            "confidence": self.confidence,
            "score": self.score,
            "reasons": self.reasons,
            "flags": self.flags,
            "keys": self.keys,
            "request_ids": self.request_ids,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "status": self.status,
            "label": self.label,
            "history": [h.to_json() for h in self.history],
        }
        if with_input:
            out["input"] = self.input
        return out


@dataclass
class HarvestStats:
    """What one :func:`harvest` pass did: files read, complete lines consumed, ``predict``
    records seen, records skipped as canary traffic or without inputs, ``bad`` lines, inputs
    queued (``new`` items and ``seen_again`` bumps), partial last lines left, and files another
    harvester consumed at the same time (``raced``: their lines were left to it)."""

    files: int = 0
    lines: int = 0
    records: int = 0
    canary: int = 0
    without_inputs: int = 0
    bad: int = 0
    new: int = 0
    seen_again: int = 0
    partial: int = 0
    raced: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dict(self.__dict__)


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


class ReviewQueue:
    """The review queue: a SQLite file (created on first use, WAL mode) of harvested items,
    their label history, the per-file read offsets of the request log, and a ``meta`` table
    (e.g. the class names)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise ReviewError(f"{self.path}: not a review queue ({exc})") from None
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db:
            yield db

    # ------------------------------------------------------------------ meta and offsets

    def get_meta(self, key: str) -> Any:
        """The JSON value stored under ``key``, or ``None``."""
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        """Store JSON ``value`` under ``key``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, _dumps(value)),
            )

    def offsets(self) -> dict[str, int]:
        """Byte offset consumed so far per log file name."""
        with self._read() as db:
            return {r["file"]: r["offset"] for r in db.execute("SELECT file, offset FROM offsets")}

    # ------------------------------------------------------------------ items

    def _upsert(
        self, db: sqlite3.Connection, found: _Found, max_request_ids: int
    ) -> Literal["new", "again"]:
        row = db.execute(
            "SELECT id, reasons, flags, keys, request_ids, first_seen, last_seen FROM items "
            "WHERE sha256 = ?",
            (found.sha256,),
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO items(sha256, modality, input, model, weights_sha256, predicted, "
                "confidence, score, reasons, flags, keys, request_ids, count, first_seen, "
                "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (
                    found.sha256,
                    found.modality,
                    _dumps(found.input),
                    found.model,
                    found.weights_sha256,
                    found.predicted,
                    found.confidence,
                    found.score,
                    _dumps(sorted(set(found.reasons))),
                    _dumps(sorted(set(found.flags))),
                    _dumps([found.key]),
                    _dumps([found.request_id][:max_request_ids]),
                    found.ts,
                    found.ts,
                ),
            )
            return "new"
        reasons = sorted({*json.loads(row["reasons"]), *found.reasons})
        flags = sorted({*json.loads(row["flags"]), *found.flags})
        keys = json.loads(row["keys"])
        if found.key not in keys and len(keys) < max_request_ids:
            keys.append(found.key)
        rids = json.loads(row["request_ids"])
        if found.request_id not in rids and len(rids) < max_request_ids:
            rids.append(found.request_id)
        db.execute(
            "UPDATE items SET reasons = ?, flags = ?, keys = ?, request_ids = ?, "
            "count = count + 1, first_seen = ?, last_seen = ?, predicted = COALESCE(predicted, ?), "
            "confidence = COALESCE(confidence, ?), score = COALESCE(score, ?) WHERE id = ?",
            (
                _dumps(reasons),
                _dumps(flags),
                _dumps(keys),
                _dumps(rids),
                min(row["first_seen"], found.ts),
                max(row["last_seen"], found.ts),
                found.predicted,
                found.confidence,
                found.score,
                row["id"],
            ),
        )
        return "again"

    def items(
        self,
        *,
        status: Status | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[QueueItem]:
        """Items (with their history), most-seen first then oldest; filtered by ``status``
        and/or ``ids``; at most ``limit``."""
        with self._read() as db:
            rows = db.execute("SELECT * FROM items ORDER BY count DESC, id ASC").fetchall()
            hist: dict[int, list[LabelEvent]] = {}
            for h in db.execute("SELECT * FROM labels ORDER BY id"):
                hist.setdefault(h["item_id"], []).append(_event(h))
        wanted = None if ids is None else set(ids)
        out = []
        for r in rows:
            if wanted is not None and r["id"] not in wanted:
                continue
            item = _item(r, hist.get(r["id"], []))
            if status is not None and item.status != status:
                continue
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
        return out

    def get(self, item_id: int) -> QueueItem:
        """One item by id (:class:`ReviewError` when there is none)."""
        found = self.items(ids=[item_id])
        if not found:
            raise ReviewError(f"item {item_id}: no such item in {self.path}")
        return found[0]

    def by_sha256(self, sha256: str) -> QueueItem | None:
        """The item holding the input with content hash ``sha256``, or ``None``."""
        with self._read() as db:
            row = db.execute("SELECT id FROM items WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else self.get(int(row["id"]))

    def counts(self) -> dict[str, int]:
        """Items per status, and ``total``."""
        out = {"pending": 0, "labelled": 0, "skipped": 0}
        for it in self.items():
            out[it.status] += 1
        out["total"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ labels

    def label(
        self,
        item_id: int,
        label: int,
        *,
        reviewer: str,
        num_classes: int | None = None,
        source: str = "cli",
        note: str = "",
        at: float | None = None,
    ) -> LabelEvent:
        """Record the human label ``label`` (a class index) for ``item_id`` by ``reviewer`` at
        ``at`` (default now); earlier labels stay in the history."""
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ReviewError(f"item {item_id}: label must be a class index ≥ 0, got {label!r}")
        if num_classes is not None and label >= num_classes:
            raise ReviewError(
                f"item {item_id}: label {label} is outside the classes 0…{num_classes - 1}"
            )
        return self._event(item_id, "label", label, reviewer, source, note, at)

    def skip(
        self,
        item_id: int,
        *,
        reviewer: str,
        source: str = "cli",
        note: str = "",
        at: float | None = None,
    ) -> LabelEvent:
        """Record that ``reviewer`` skipped ``item_id`` (it leaves the reviewed data set until
        labelled again)."""
        return self._event(item_id, "skip", None, reviewer, source, note, at)

    def _event(
        self,
        item_id: int,
        action: str,
        label: int | None,
        reviewer: str,
        source: str,
        note: str,
        at: float | None,
    ) -> LabelEvent:
        reviewer = reviewer.strip()
        if not reviewer:
            raise ReviewError(f"item {item_id}: reviewer: give the reviewer's name")
        when = time.time() if at is None else float(at)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise ReviewError(f"item {item_id}: no such item in {self.path}")
            cur = db.execute(
                "INSERT INTO labels(item_id, action, label, reviewer, at, source, note) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item_id, action, label, reviewer, when, source, note),
            )
            assert cur.lastrowid is not None
            return LabelEvent(
                int(cur.lastrowid), item_id, action, label, reviewer, when, source, note
            )


def _event(h: sqlite3.Row) -> LabelEvent:
    return LabelEvent(
        id=h["id"],
        item_id=h["item_id"],
        action=h["action"],
        label=h["label"],
        reviewer=h["reviewer"],
        at=h["at"],
        source=h["source"],
        note=h["note"],
    )


def _item(r: sqlite3.Row, history: list[LabelEvent]) -> QueueItem:
    return QueueItem(
        id=r["id"],
        sha256=r["sha256"],
        modality=r["modality"],
        input=json.loads(r["input"]),
        model=r["model"],
        weights_sha256=r["weights_sha256"],
        predicted=r["predicted"],
        confidence=r["confidence"],
        score=r["score"],
        reasons=json.loads(r["reasons"]),
        flags=json.loads(r["flags"]),
        keys=json.loads(r["keys"]),
        request_ids=json.loads(r["request_ids"]),
        count=r["count"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        history=history,
    )


# ---------------------------------------------------------------------------- reading the log


@dataclass(frozen=True)
class _Found:
    sha256: str
    modality: str
    input: Any
    model: str
    weights_sha256: str
    predicted: int | None
    confidence: float | None
    score: float | None
    reasons: tuple[str, ...]
    flags: tuple[str, ...]
    key: str
    request_id: str
    ts: float


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _modality(x: Any) -> str | None:
    """``text`` for a string, ``tensor`` for nested lists of finite numbers, else ``None``."""
    if isinstance(x, str):
        return "text"
    stack = [x]
    seen_number = False
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif _num(v) is not None:
            seen_number = True
        else:
            return None
    return "tensor" if seen_number else None


def input_sha256(x: Any) -> str:
    """The content sha256 of one input as the guard computes it: the UTF-8 bytes of a text, or
    the float32 C-order bytes of a tensor (used when a record has no per-input hash: a request
    blocked before the model ran)."""
    if isinstance(x, str):
        return hashlib.sha256(x.encode("utf-8")).hexdigest()
    return hashlib.sha256(
        np.ascontiguousarray(np.asarray(x, dtype=np.float32)).tobytes()
    ).hexdigest()


def _findings(
    rec: dict[str, Any], *, flagged: bool, abstained: bool, ood_threshold: float | None
) -> list[_Found]:
    """The inputs of one ``predict`` record that go to review (raises KeyError/TypeError/
    ValueError on a malformed record)."""
    inputs = rec["input"]
    preds = rec.get("predictions")
    if not isinstance(inputs, list):
        raise ValueError("`input` is not a list")
    action = rec["action"]
    request_flagged = flagged and action in FLAG_ACTIONS
    if not isinstance(preds, list) or len(preds) != len(inputs):
        if not request_flagged:
            return []  # the model did not run and the guard saw nothing: nothing to review
        preds = [{} for _ in inputs]  # blocked or throttled before the model: the inputs count
    flags = tuple(str(f) for f in rec.get("flags") or [])
    out = []
    for x, p in zip(inputs, preds, strict=True):
        if not isinstance(p, dict):
            raise ValueError("a `predictions` entry is not an object")
        reasons = []
        if request_flagged:
            reasons.append("flag")
        if abstained and p.get("abstain") is True:
            reasons.append("abstain")
        score = _num(p.get("score"))
        if ood_threshold is not None and score is not None and score > ood_threshold:
            reasons.append("ood")
        if not reasons:
            continue
        modality = _modality(x)
        if modality is None:
            raise ValueError("an input is neither a text nor (nested lists of) numbers")
        sha = p.get("sha256")
        if not isinstance(sha, str) or not sha:
            sha = input_sha256(x)
        label = p.get("label")
        out.append(
            _Found(
                sha256=sha,
                modality=modality,
                input=x,
                model=str(rec["model"]),
                weights_sha256=str(rec.get("weights_sha256") or ""),
                predicted=label if isinstance(label, int) and not isinstance(label, bool) else None,
                confidence=_num(p.get("confidence")),
                score=score,
                reasons=tuple(reasons),
                flags=flags if request_flagged else (),
                key=str(rec["key"]),
                request_id=str(rec["request_id"]),
                ts=float(rec["ts"]),
            )
        )
    return out


def harvest(
    log_dir: str | Path,
    queue: ReviewQueue,
    *,
    flagged: bool = True,
    abstained: bool = True,
    ood_threshold: float | None = None,
    max_request_ids: int = 20,
    include_canary: bool = False,
    max_bytes_per_file: int = 64 << 20,
) -> HarvestStats:
    """Read the new complete lines of every ``*.jsonl`` file in ``log_dir`` into ``queue``
    (see the module docstring); canary traffic (``role`` ``canary``: the monitoring loop's own
    attacks) is left out unless ``include_canary``. At most ``max_bytes_per_file`` bytes are
    read from one file per call (the rest on the next call). Returns what was done."""
    folder = Path(log_dir)
    if not folder.is_dir():
        raise ReviewError(f"request_log: {folder} is not a folder (serve.request_log)")
    if max_request_ids < 1:
        raise ReviewError("max_request_ids: must be ≥ 1")
    stats = HarvestStats()
    done = queue.offsets()
    with queue._read() as db:
        lines_done = {r["file"]: r["lines"] for r in db.execute("SELECT file, lines FROM offsets")}
    for path in sorted(folder.glob("*.jsonl")):
        stats.files += 1
        start = done.get(path.name, 0)
        size = path.stat().st_size
        if size < start:
            raise ReviewError(
                f"{path}: the file is shorter ({size} bytes) than what was already harvested "
                f"({start} bytes); request log files must only grow"
            )
        if size == start:
            continue
        with path.open("rb") as fh:
            fh.seek(start)
            chunk = fh.read(min(size - start, max_bytes_per_file))
        end = chunk.rfind(b"\n") + 1
        if end < len(chunk) and len(chunk) == size - start:
            stats.partial += 1
        found: list[_Found] = []
        lines = chunk[:end].split(b"\n")[:-1] if end else []
        for n, raw in enumerate(lines):
            if not raw.strip():
                continue
            stats.lines += 1
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
                if rec.get("event") != "predict":
                    continue
                stats.records += 1
                if rec.get("role") == "canary" and not include_canary:
                    stats.canary += 1
                    continue
                if "input" not in rec:
                    stats.without_inputs += 1
                    continue
                found.extend(
                    _findings(
                        rec, flagged=flagged, abstained=abstained, ood_threshold=ood_threshold
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                stats.bad += 1
                if len(stats.bad_examples) < 5:
                    where = f"{path.name}: line {lines_done.get(path.name, 0) + n + 1}"
                    stats.bad_examples.append(f"{where}: {exc}")
        with queue._tx() as db:
            now_at = db.execute(
                "SELECT offset FROM offsets WHERE file = ?", (path.name,)
            ).fetchone()
            if (now_at["offset"] if now_at else 0) != start:
                stats.raced += 1  # another harvester took these lines meanwhile: count once
                continue
            for f in found:
                if queue._upsert(db, f, max_request_ids) == "new":
                    stats.new += 1
                else:
                    stats.seen_again += 1
            db.execute(
                "INSERT INTO offsets(file, offset, lines, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(file) DO UPDATE SET offset = excluded.offset, "
                "lines = offsets.lines + excluded.lines, updated_at = excluded.updated_at",
                (path.name, start + end, len(lines), time.time()),
            )
    return stats
