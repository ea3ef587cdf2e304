"""The guard's request log files: one JSON object per line, one file per worker process.

Each worker appends to ``<folder>/<hostname>-<pid>-<start unix ms>.jsonl`` (opened on the first
line it writes, line-buffered, flushed after every line, never rewritten), so several workers
and several hosts never write to the same file and a reader can follow every file by its
offset. A reader must wait for a line's newline: the last line may be partial while it is
being written. ``event`` says what a line is: ``predict`` (one request; the fields are in
docs/guard.md) or ``model-swap`` / ``model-swap-failed`` (the worker followed a registry alias
to another version, or could not).

A failed write (disk full, folder removed) never fails the request: it is counted
(``on_error``) and logged once on stderr; the next line tries again (reopening the file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

try:
    import orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None  # type: ignore[assignment]

log = logging.getLogger("robustops.guard")


def dumps(record: dict[str, Any]) -> str:
    """The compact JSON line of ``record`` (without the newline). With orjson (the ``serve``
    extra; about five times faster) non-ASCII characters are written as UTF-8 rather than
    escaped, and a NaN or infinity as null; what orjson cannot write (an integer past 64 bits)
    goes through the standard library, which refuses NaN."""
    if orjson is not None:
        try:
            return orjson.dumps(record, default=_fallback).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            pass
    return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_fallback)


def _fallback(value: Any) -> Any:
    return str(value)


class RequestLog:
    """Appends JSON lines to this worker process's file in ``folder`` (None: writes nothing).

    ``on_error`` is called once per failed write (a metric counts it). Thread-safe: requests
    write from the event loop, a model swap from its loading thread."""

    def __init__(
        self, folder: str | Path | None, on_error: Callable[[], None] | None = None
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.on_error = on_error
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self._warned = False
        self._failed = False
        self.errors = 0

    def _open(self) -> IO[str]:
        """This process's file, opened (or, after a fork or a failure, reopened) now."""
        if self._file is not None and self._pid == os.getpid():
            return self._file
        assert self.folder is not None
        if self._pid != os.getpid() or self.path is None:
            started = int(time.time() * 1000)
            self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{started}.jsonl"
            self._pid = os.getpid()
        self.folder.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a", buffering=1, encoding="utf-8")
        if self._failed and f.tell() > 0:
            # A failed write may have left part of a line: end it, so that the next line
            # starts on its own (readers skip the broken one).
            with self.path.open("rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        self._failed = False
        self._file = f
        return f

    def write(self, line: str) -> bool:
        """Append one line (``line`` without its newline); False when it could not be written."""
        if self.folder is None:
            return True
        with self._lock:
            try:
                f = self._open()
                f.write(line + "\n")
                f.flush()
                return True
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                self.errors += 1
                self._failed = True
                self._close_quietly()
                warn = not self._warned
                self._warned = True
        if self.on_error is not None:
            self.on_error()
        if warn:
            log.error(
                dumps(
                    {
                        "event": "request-log-error",
                        "ts": time.time(),
                        "path": str(self.path or self.folder),
                        "error": error,
                        "note": "requests are still answered; further failures are only counted",
                    }
                )
            )
        return False

    def event(self, record: dict[str, Any], *, error: bool = False) -> None:
        """Log a non-request event both on stderr (the JSON log) and in the file."""
        line = dumps(record)
        (log.error if error else log.info)(line)
        self.write(line)

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file (a later write reopens it)."""
        with self._lock:
            self._close_quietly()
