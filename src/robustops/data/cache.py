"""A cache of decoded data sources: the second run on unchanged files skips the decoding.

What is cached: the decoded inputs of an image or table source in source order (images as
uint8 ``(N, C, H, W)``, exactly the pixels the decoder gave; tables as the checked and scaled
float32 ``(N, D)``), with the labels, the source's own split flags, the class names and the
content fingerprint, in one safetensors file (never pickle).

**Where.** ``$ROBUSTOPS_DATA_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustops/data``, else
``~/.cache/robustops/data``. ``ROBUSTOPS_DATA_CACHE=0`` (or ``off``, ``false``, ``no``) turns it
off, and so does ``load_source(..., cache=False)``. The folder is kept under
``$ROBUSTOPS_DATA_CACHE_MAX_GB`` (default 5) by deleting the least recently used entries.

**What the cache trusts: nothing about the files but their bytes.** An entry is named by a
sha256 over the content fingerprint of the source's files, the decoding options (kind, image
size and channels, columns, classes, the feature schema's definition) and the versions of the
decoders (this cache's format, numpy, Pillow or pandas/pyarrow). The content fingerprint is
the one recorded in results (:func:`robustops.data.fingerprint_files`), computed on every run
from the bytes read in that run, cache or no cache: file names, sizes and modification times
are never trusted, so a file edited in place with its size kept and its mtime forged back
(``os.utime``) gets a new fingerprint, hence another entry, and is decoded afresh. What a hit
saves is the decoding (and for tables the parsing and the schema checks), not the reading.

**Corruption.** The entry stores the sha256 of its own tensor bytes; a file that does not
parse, has the wrong shapes, or whose bytes do not hash to that value is reported (a
warning), deleted and rebuilt. That check is against accidents (a truncated write, a flipped
bit), not against someone who can write the cache folder: they could rewrite the checksum
too, as they could anything else in the user's home. Writes go to a temporary file renamed
into place, so a killed run never leaves half an entry under the real name; a cache folder
that cannot be written only costs the speed-up (a warning), never the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_FORMAT", "DataCache", "Entry", "cache_from_env"]

CACHE_FORMAT = 1
"""Bumped whenever what a loader writes for the same files and options changes."""

log = logging.getLogger("robustops.data.cache")

_DTYPES = {"U8": np.uint8, "I64": np.int64, "F32": np.float32, "BOOL": np.bool_}
_OFF = {"0", "off", "false", "no"}


@dataclass(frozen=True)
class Entry:
    """A cache entry read back: ``fingerprint`` (the content sha256 of the source files when it
    was written), ``arrays`` (views of the bytes read) and ``meta`` (JSON)."""

    fingerprint: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def _versions(kind: str) -> dict[str, str]:
    out = {"format": str(CACHE_FORMAT), "numpy": np.__version__}
    if kind in ("image-folder", "image-manifest"):
        import PIL

        out["pillow"] = PIL.__version__
    else:
        import pandas as pd

        out["pandas"] = pd.__version__
        with contextlib.suppress(ImportError):
            import pyarrow

            out["pyarrow"] = pyarrow.__version__
    return out


class DataCache:
    """The cache folder ``root`` (created on the first write), kept under ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int = 5 << 30) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------------ keys

    @staticmethod
    def key(kind: str, options: Mapping[str, Any], fingerprint: str) -> str:
        """The entry's name: the content fingerprint of the source's files (computed from the
        bytes read in this run), the decoding options and the decoders' versions."""
        head = {
            "kind": kind,
            "options": options,
            "versions": _versions(kind),
            "fingerprint": fingerprint,
        }
        return hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    # ------------------------------------------------------------------------ read

    def get(self, key: str) -> Entry | None:
        """The entry under ``key``, or ``None`` when there is none; a corrupt one is deleted
        (with a warning) and ``None`` returned."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = _read(path)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("data cache: %s is corrupt (%s); deleting it and decoding again", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
        return entry

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self.path(key).unlink()

    # ------------------------------------------------------------------------ write

    def put(
        self, key: str, fingerprint: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
    ) -> bool:
        """Write an entry (atomically); ``False`` with a warning when the folder cannot be
        written. Then prune the folder to ``max_bytes``."""
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        total = sum(v.nbytes for v in tensors.values())
        if total > self.max_bytes:
            log.info("data cache: %d bytes exceed the cache's limit; not cached", total)
            return False
        metadata = {
            "fingerprint": fingerprint,
            "payload_sha256": _payload_sha256(tensors),
            "meta": json.dumps(dict(meta), sort_keys=True),
            "format": str(CACHE_FORMAT),
        }
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, self.path(key))
            tmp = None
        except OSError as exc:
            log.warning(
                "data cache: cannot write to %s (%s); continuing without it", self.root, exc
            )
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self.prune()
        return True

    def prune(self) -> None:
        """Delete the least recently used entries until the folder holds at most
        ``max_bytes``; stale temporary files (older than an hour) go too."""
        try:
            found = []
            now = time.time()
            for p in self.root.iterdir():
                st = p.stat()
                if p.name.startswith(".tmp-"):
                    if now - st.st_mtime > 3600:
                        p.unlink()
                    continue
                if p.suffix == ".safetensors":
                    found.append((st.st_mtime, st.st_size, p))
            total = sum(s for _, s, _ in found)
            for _, size, p in sorted(found):
                if total <= self.max_bytes:
                    break
                p.unlink()
                total -= size
        except OSError as exc:  # another process pruning at the same time
            log.debug("data cache: pruning %s: %s", self.root, exc)


def cache_from_env(option: bool | str | Path | None = None) -> DataCache | None:
    """The cache to use: ``option`` ``False`` → none, a path → that folder, ``True`` or
    ``None`` → the environment's (``None`` also honours ``ROBUSTOPS_DATA_CACHE=0``)."""
    if option is False:
        return None
    if option is None and os.environ.get("ROBUSTOPS_DATA_CACHE", "").strip().lower() in _OFF:
        return None
    raw = os.environ.get("ROBUSTOPS_DATA_CACHE_MAX_GB", "").strip() or "5"
    try:
        max_gb = float(raw)
    except ValueError:
        log.warning("ROBUSTOPS_DATA_CACHE_MAX_GB=%r is not a number; using 5", raw)
        max_gb = 5.0
    if isinstance(option, (str, Path)) and not isinstance(option, bool):
        return DataCache(Path(option), int(max_gb * (1 << 30)))
    env = os.environ.get("ROBUSTOPS_DATA_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "robustops" / "data"
    return DataCache(root, int(max_gb * (1 << 30)))


# ---------------------------------------------------------------------------- the file format


def _payload_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode() + b"\0")
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _read(path: Path) -> Entry:
    """Parse a safetensors file by hand (8-byte header length, JSON header, raw bytes), read
    in one go (sequential reads beat page faults on a memory map), and check the stored
    payload sha256. Raises ``ValueError`` (or ``OSError``, ``KeyError``) on anything wrong."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = bytearray(size)
        if fh.readinto(buf) != size:
            raise ValueError("shorter than its size")
    if size < 8:
        raise ValueError("shorter than a safetensors header")
    (n,) = struct.unpack_from("<Q", buf)
    if n > min(size - 8, 1 << 24):
        raise ValueError("header length out of range")
    header = json.loads(bytes(buf[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != str(CACHE_FORMAT):
        raise ValueError("not a robustops data cache entry of this format")
    start = 8 + n
    whole = np.frombuffer(buf, dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        shape = tuple(int(s) for s in spec["shape"])
        lo, hi = (int(v) for v in spec["data_offsets"])
        if not 0 <= lo <= hi or start + hi > size:
            raise ValueError(f"tensor {name!r} lies outside the file")
        count = int(np.prod(shape)) if shape else 1
        if count * dtype.itemsize != hi - lo:
            raise ValueError(f"tensor {name!r}: shape and byte range disagree")
        arrays[name] = whole[start + lo : start + hi].view(dtype).reshape(shape)
    if _payload_sha256(arrays) != meta.get("payload_sha256"):
        raise ValueError("its tensors do not hash to the stored payload sha256")
    fp = meta["fingerprint"]
    if not isinstance(fp, str) or len(fp) != 64:
        raise ValueError("no fingerprint")
    return Entry(fingerprint=fp, arrays=arrays, meta=json.loads(meta["meta"]))
