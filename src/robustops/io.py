"""Atomic file writes: every file RobustOps writes goes through here.

A writer puts its bytes in a temporary file with a unique name in the target's own folder
(:func:`tempfile.mkstemp`), flushes and fsyncs it, renames it over the target
(:func:`os.replace`, atomic on POSIX and Windows within one file system) and fsyncs the folder.
A reader therefore sees the old file or the new one, never half of one, even with several
writers racing on one path; a crash or a full disk leaves the old file and no temporary one.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` — for content in memory;
* :func:`atomic_path` — a context manager yielding a temporary path for writers that insist
  on a path of their own (``safetensors.torch.save_file``, ``matplotlib`` ``savefig``);
* :func:`check_writable` — the preflight check of an output path, before long work starts.

And the reading side of untrusted files: :func:`read_text_file` (bounded size, UTF-8 or a clear
error) and :func:`load_yaml` (``SafeLoader``, bounded size and alias expansion).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from robustops.errors import OutputError, SpecError, shorten

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_YAML_NODES",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "load_yaml",
    "read_text_file",
    "save_safetensors",
]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


def fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, mkdir: bool = True, mode: int | None = None, exclusive: bool = False
) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block ends normally, the file
    written there is fsynced and renamed to ``path``. On any exception the temporary file is
    removed and the exception propagates (``path`` is left as it was).

    ``mkdir`` creates the parent folders first. ``mode`` (e.g. ``0o600`` for a secret) is the
    temporary file's permission bits from the start, so the content is never readable under
    wider ones; by default what ``open()`` would give a new file. ``exclusive`` creates
    ``path`` only if it does not exist yet: the file is hard-linked into place instead of
    renamed, and :class:`FileExistsError` is raised (the temporary file removed) when another
    writer got there first — the content there is then never replaced. It needs a file system
    with hard links.
    """
    target = Path(path)
    folder = target.parent
    if mkdir:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _FILE_MODE if mode is None else mode)  # mkstemp makes it owner-only
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, target)  # FileExistsError when the target exists
            with contextlib.suppress(OSError):
                tmp.unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)


def save_safetensors(
    tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` through :func:`atomic_path`; a write error is raised as
    :class:`OSError` (with the OS error number when safetensors reports one, e.g. ENOSPC)
    instead of safetensors' own exception."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            save_file(dict(tensors), str(tmp), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"code: (\d+)", str(exc))
        num = int(code.group(1)) if code else errno.EIO
        raise OSError(num, f"{os.strerror(num)} (safetensors: {shorten(str(exc))})") from exc
    return target


def atomic_write_bytes(
    path: str | Path,
    data: bytes,
    *,
    mkdir: bool = True,
    mode: int | None = None,
    exclusive: bool = False,
) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``.
    ``mode`` and ``exclusive`` as in :func:`atomic_path`."""
    target = Path(path)
    with (
        atomic_path(target, mkdir=mkdir, mode=mode, exclusive=exclusive) as tmp,
        open(tmp, "wb") as fh,
    ):
        fh.write(data)
        fh.flush()
    return target


def atomic_write_text(
    path: str | Path, text: str, *, encoding: str = "utf-8", mkdir: bool = True
) -> Path:
    """Write ``text`` (``encoding``, UTF-8 by default) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding), mkdir=mkdir)


def check_writable(path: str | Path, option: str = "--out", *, folder: bool = False) -> Path:
    """Check, before any long work, that ``path`` can be written: raise :class:`OutputError`
    naming ``option`` when it is a folder (or, with ``folder=True``, a file), sits under a file,
    or its folder cannot be created or written to (a probe file is created there and removed).
    Creates missing parent folders; returns ``path``."""
    target = Path(path)
    if folder:
        if target.exists() and not target.is_dir():
            raise OutputError(option, target, "is a file, not a folder")
        where = target
    else:
        if target.is_dir():
            raise OutputError(option, target, "is a folder; name a file")
        where = target.parent
    for parent in [where, *where.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(option, target, f"{parent} is a file, not a folder")
            break
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".robustops-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(option, target, f"cannot write there ({exc.strerror or exc})") from None
    return target


# -- reading untrusted files ---------------------------------------------------------------------

MAX_DOCUMENT_BYTES = 1_000_000
"""Largest spec or policy file read (bytes)."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes a document may expand to, counting every alias as a copy of what it names
(a "billion laughs" bomb of a few hundred bytes expands to billions)."""


def read_text_file(path: str | Path, what: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> str:
    """The UTF-8 text of ``path``, a ``what`` (e.g. ``"spec"``) file; :class:`SpecError` at
    ``<file>`` when it is missing, larger than ``max_bytes`` or not UTF-8."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise SpecError([("<file>", f"cannot read {what}: {exc}")], source=str(p)) from None
    if len(data) > max_bytes:
        raise SpecError(
            [("<file>", f"the {what} is larger than {max_bytes:,} bytes; refusing to parse it")],
            source=str(p),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [("<file>", f"the {what} is not UTF-8 text (byte {exc.start}: {exc.reason})")],
            source=str(p),
        ) from None


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document expanding to more than :data:`MAX_YAML_NODES`
    nodes, before constructing any Python object from it."""

    max_nodes = MAX_YAML_NODES

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.max_nodes)
        return node


def _check_expansion(root: yaml.Node, limit: int) -> None:
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = 1  # a recursive alias counts once
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[key] = total
        return total

    if size(root) > limit:
        raise yaml.YAMLError(
            f"the document expands to more than {limit:,} nodes (aliases counted as copies); "
            "refusing to build it"
        )


def load_yaml(path: str | Path, what: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """Parse a YAML ``what`` file safely and boundedly: plain data only (``SafeLoader``), at most
    ``max_bytes`` bytes of UTF-8 and :data:`MAX_YAML_NODES` expanded nodes. Raises
    :class:`SpecError` at ``<file>``."""
    text = read_text_file(path, what, max_bytes=max_bytes)
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        raise SpecError(
            [("<file>", f"invalid YAML: {shorten(str(exc), 500)}")], source=str(path)
        ) from None
    except RecursionError:
        raise SpecError([("<file>", "invalid YAML: nested too deeply")], source=str(path)) from None
