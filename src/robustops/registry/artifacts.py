"""The content-addressed artifact store: every file is named by the sha256 of its bytes.

Layout: ``<root>/sha256/ab/abcdef…`` (the first two hex digits as a folder). A file is copied
into a unique temporary name in ``<root>/tmp``, hashed on the way, fsynced and renamed to its
content name, so a crash leaves either no file or a whole one (a leftover temporary file is
never read and :meth:`ArtifactStore.sweep` removes it). Rows are committed only after their
artifacts exist, so no row ever names a missing file; a file without a row (a crash between the
two) is complete and harmless, and :meth:`ArtifactStore.orphans` lists them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from robustops.errors import DataIntegrityError
from robustops.io import fsync_dir

_CHUNK = 1 << 20


class ArtifactStore:
    """Files named by their content hash under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Where the artifact with hex digest ``sha256`` lives (whether or not it exists)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a hex sha256: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Whether the artifact is stored."""
        return self.path(sha256).is_file()

    @contextlib.contextmanager
    def _staging(self) -> Iterator[tuple[int, Path]]:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="put.", suffix=".part")
        tmp = Path(name)
        try:
            yield fd, tmp
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _commit(self, fd: int, tmp: Path, sha: str) -> Path:
        os.fsync(fd)
        os.close(fd)
        target = self.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or not self._intact(sha):  # an altered copy is replaced
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        return target

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its hex sha256 (storing the same bytes twice is a no-op)."""
        sha = hashlib.sha256(data).hexdigest()
        if self.has(sha) and self._intact(sha):
            return sha
        with self._staging() as (fd, tmp):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._commit(fd, tmp, sha)
        return sha

    def put_file(self, source: str | Path, expected_sha256: str | None = None) -> tuple[str, int]:
        """Copy ``source`` into the store, hashing it in the same pass; returns (hex sha256,
        size in bytes). ``expected_sha256``, when given, must match the bytes read (else
        :class:`DataIntegrityError`, and nothing is stored)."""
        h = hashlib.sha256()
        size = 0
        with self._staging() as (fd, tmp), open(source, "rb") as src:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := src.readinto(buf):
                h.update(view[:n])
                out = view[:n]
                while out:
                    out = out[os.write(fd, out) :]
                size += n
            sha = h.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise DataIntegrityError(
                    f"{source}: sha256 is {sha}, not the expected {expected_sha256}"
                )
            self._commit(fd, tmp, sha)
        return sha, size

    def read_bytes(self, sha256: str) -> bytes:
        """The artifact's bytes, checked against its name (:class:`DataIntegrityError` when the
        file was altered or is missing)."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataIntegrityError(f"artifact {sha256} is missing from {self.root}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DataIntegrityError(f"artifact {path} does not match its sha256 (altered)")
        return data

    def verify(self, sha256: str) -> None:
        """Re-hash the stored file; :class:`DataIntegrityError` when missing or altered."""
        path = self.path(sha256)
        if not path.is_file():
            raise DataIntegrityError(f"artifact {sha256} is missing from {self.root}")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != sha256:
            raise DataIntegrityError(f"artifact {path} does not match its sha256 (altered)")

    def _intact(self, sha256: str) -> bool:
        try:
            self.verify(sha256)
        except DataIntegrityError:
            return False
        return True

    def stored(self) -> Iterator[str]:
        """The hex digests of every stored artifact."""
        base = self.root / "sha256"
        if base.is_dir():
            for folder in sorted(base.iterdir()):
                for f in sorted(folder.iterdir()):
                    yield f.name

    def orphans(self, referenced: Iterable[str]) -> list[str]:
        """Stored artifacts no row references (complete files left by an interrupted call)."""
        keep = set(referenced)
        return [s for s in self.stored() if s not in keep]

    def partial_files(self) -> list[Path]:
        """Temporary files left by a process killed mid-copy (never read as artifacts)."""
        tmp = self.root / "tmp"
        return sorted(tmp.glob("put.*.part")) if tmp.is_dir() else []

    def sweep(self) -> int:
        """Remove leftover temporary files; returns how many. Only safe while no other
        process is writing to the store."""
        parts = self.partial_files()
        for p in parts:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return len(parts)
