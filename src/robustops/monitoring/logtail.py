"""Incremental reading of the guard's request log folder.

The guard's workers each append JSON lines to their own ``<host>-<pid>-<start ms>.jsonl`` in one
folder, flushing after every line and never rewriting. :func:`read_new` reads, from byte offsets
the caller keeps per file, every complete new line of every file (a partial last line waits for
its newline), and returns the kept records in one merged order with the offsets reached.

Kept: ``predict`` events (canary ones too; :func:`robustops.monitoring.signals.is_monitored`
drops those later, after they have advanced the offsets) and ``model-swap`` events (a version
went live). Other events, blank lines and lines that are not a JSON object are skipped and
counted.

Order: within a file, line order; across files, by the records' ``ts`` within one read (ties by
file name and offset). Records of two workers that land in different reads are processed in
read order, so with several workers the exact interleaving depends on when the monitor read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KEPT_EVENTS", "LogRecord", "ReadResult", "read_new"]

log = logging.getLogger(__name__)

KEPT_EVENTS = frozenset({"predict", "model-swap"})
MAX_READ_BYTES = 8 << 20
"""Most bytes read from one file per call (the rest waits for the next call)."""
MAX_LINE_BYTES = 4 << 20
"""A line longer than this without a newline is skipped whole (a corrupt or hostile file)."""


@dataclass(frozen=True)
class LogRecord:
    """One kept log line: ``file`` (name inside the folder), ``end`` (byte offset just past its
    newline) and the parsed ``record``."""

    file: str
    end: int
    record: dict[str, Any]

    @property
    def ts(self) -> float:
        """The record's ``ts`` (Unix seconds), 0.0 when missing or not a finite number."""
        ts = self.record.get("ts")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
            return float(ts)
        return 0.0


@dataclass
class ReadResult:
    """What one :func:`read_new` call found: kept ``records`` in processing order, the byte
    ``offsets`` reached per file (past every complete line, kept or not), and how many lines
    were ``skipped`` (other events) or ``malformed``; ``more`` when a file holds more than was
    read (the ``max_bytes`` cap)."""

    records: list[LogRecord] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    malformed: int = 0
    more: bool = False


def _log_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".jsonl" and p.is_file())
    except FileNotFoundError:
        return []


def read_new(
    folder: str | Path, offsets: dict[str, int], *, max_bytes: int = MAX_READ_BYTES
) -> ReadResult:
    """Every complete line appended to ``folder``'s ``*.jsonl`` files since ``offsets`` (file
    name → byte offset; missing files start at 0). ``offsets`` is not changed; the returned
    :attr:`ReadResult.offsets` holds every file's new offset. A file now shorter than its
    offset was replaced (the contract says it never is): it is read again from 0, with a
    warning. At most ``max_bytes`` are read per file."""
    folder = Path(folder)
    out = ReadResult(offsets=dict(offsets))
    for path in _log_files(folder):
        name = path.name
        start = offsets.get(name, 0)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size < start:
            log.warning("request log %s shrank below offset %d: reading it again", path, start)
            start = 0
        if size == start:
            out.offsets[name] = start
            continue
        with open(path, "rb") as fh:
            fh.seek(start)
            chunk = fh.read(min(size - start, max_bytes))
        if size - start > max_bytes:
            out.more = True
        last_nl = chunk.rfind(b"\n")
        if last_nl < 0:
            if len(chunk) >= MAX_LINE_BYTES:  # a newline-less monster: skip what we read
                log.warning(
                    "request log %s: line at %d longer than %d bytes", path, start, MAX_LINE_BYTES
                )
                out.offsets[name] = start + len(chunk)
                out.malformed += 1
            else:
                out.offsets[name] = start
            continue
        pos = start
        for line in chunk[: last_nl + 1].split(b"\n")[:-1]:
            pos += len(line) + 1
            _keep(out, name, pos, line)
        out.offsets[name] = pos
    out.records.sort(key=lambda r: (r.ts, r.file, r.end))
    return out


def _keep(out: ReadResult, name: str, end: int, line: bytes) -> None:
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        out.malformed += 1
        return
    if not isinstance(record, dict):
        out.malformed += 1
        return
    if record.get("event") in KEPT_EVENTS:
        out.records.append(LogRecord(name, end, record))
    else:
        out.skipped += 1


def folder_exists(folder: str | Path) -> bool:
    """Whether the request log folder exists (the guard creates it when it starts)."""
    return os.path.isdir(folder)
