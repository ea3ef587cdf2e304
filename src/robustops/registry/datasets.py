"""Registered data sets: a named, versioned file in the artifact store with its lineage.

A data set version (:class:`~robustops.registry.models.DatasetVersion`) is one file stored by
its sha256 (the *fingerprint* a training spec or a canary run cites), its ``kind`` (``canary``:
the fixed inputs the canary job attacks; ``reviewed``: human-labelled harvested inputs; any
other lower-case word), its format, its number of samples and a free ``lineage`` JSON object
(where the samples came from: the source spec and result hashes, sample indices, request ids,
reviewer). Registering the same bytes again under the same name gives back the existing
version; anything else becomes the next version number of that name. Every registration is one
audited write (action ``dataset``; its payload holds the sha256 of the lineage's canonical JSON,
and the lineage itself when that is at most 4096 characters).

References: ``NAME@N``, ``NAME@latest`` or ``NAME`` (the latest version).

Python::

    reg = Registry.open(home)
    ds = reg.register_dataset("ada", "mnist-canary", "canary", "canary.json",
                              meta={"result_sha256": "…", "indices": [3, 17, …]})
    ds.ref, ds.content_sha256, ds.n_samples
    reg.dataset("mnist-canary@1"); reg.dataset_path(ds)   # the stored, verified file
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from robustops.registry.audit import canonical_json
from robustops.registry.models import DatasetVersion
from robustops.registry.store import RegistryError

if TYPE_CHECKING:
    from robustops.registry.service import Registry

__all__ = [
    "FORMATS",
    "count_samples",
    "dataset_path",
    "get_dataset",
    "list_datasets",
    "parse_dataset_ref",
    "register_dataset",
]

FORMATS = ("json", "jsonl", "safetensors", "npz", "csv", "parquet")
"""File formats a data set may have (from the file's suffix unless given)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_LINEAGE_INLINE = 4096  # characters of canonical JSON kept in the audit event itself


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(
            f"dataset: {name!r} is not a valid name (letters, digits, '.', '_', '-'; ≤ 128)"
        )
    return name


def parse_dataset_ref(text: str) -> tuple[str, int | None]:
    """``(name, version)`` of ``NAME@N``, ``NAME@latest`` or ``NAME`` (version None: latest)."""
    name, at, v = text.partition("@")
    _check_name(name)
    if not at or v == "latest":
        return name, None
    if not v.isdigit() or int(v) < 1:
        raise RegistryError(f"dataset: {text!r} must be NAME@N, NAME@latest or NAME")
    return name, int(v)


def count_samples(path: Path, fmt: str) -> int:
    """Samples in a data set file: a JSON list's length, or the length of the ``samples``
    (else ``labels``) list of a JSON object; JSONL lines; the first dimension of a safetensors
    file's first tensor or an npz file's first array (by name; never unpickled). Other formats
    need ``n_samples`` given."""
    try:
        if fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, list):
                return len(data)
            if isinstance(data, dict):
                for key in ("samples", "labels"):
                    if isinstance(data.get(key), list):
                        return len(data[key])
        elif fmt == "jsonl":
            with path.open(encoding="utf-8") as fh:
                return sum(1 for line in fh if line.strip())
        elif fmt == "npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as arrays:
                names = sorted(arrays.files)
                if names and arrays[names[0]].ndim:
                    return int(arrays[names[0]].shape[0])
        elif fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = sorted(f.keys())
                if keys:
                    return int(f.get_slice(keys[0]).get_shape()[0])
    except (OSError, ValueError) as exc:
        raise RegistryError(f"dataset: cannot read {path} as {fmt}: {exc}") from None
    raise RegistryError(f"n_samples: cannot count the samples of {path} ({fmt}); pass n_samples")


def register_dataset(
    reg: Registry,
    actor: str,
    name: str,
    kind: str,
    path: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    n_samples: int | None = None,
    fmt: str | None = None,
    description: str = "",
) -> DatasetVersion:
    """Register the file ``path`` as the next version of data set ``name`` (engineer or above).

    ``kind``: what the set is for (``canary``, ``reviewed``, …; lower case). ``meta``: the
    lineage stored with it (JSON object). ``n_samples``: counted from the file when omitted
    (:func:`count_samples`). ``fmt``: from the suffix when omitted (:data:`FORMATS`). The file
    is copied into the artifact store before the row is written; the same bytes registered
    again under the same name give back the existing version (nothing is written)."""
    _check_name(name)
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise RegistryError(f"kind: {kind!r} must be a lower-case word (e.g. canary, reviewed)")
    src = Path(path)
    if not src.is_file():
        raise RegistryError(f"path: {src} is not a file")
    fmt = fmt or src.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise RegistryError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    lineage = dict(meta or {})
    try:
        json.dumps(lineage, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"meta: not JSON data ({exc})") from None
    if n_samples is None:
        n_samples = count_samples(src, fmt)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise RegistryError(f"n_samples: must be an int >= 0, got {n_samples!r}")
    with reg.store.read() as s:
        reg._require(s, actor, "engineer")
    sha, size = reg.store.artifacts.put_file(src)
    with reg.store.write(actor) as tx:
        s = tx.session
        reg._require(s, actor, "engineer")
        same = s.scalars(
            select(DatasetVersion).where(
                DatasetVersion.name == name, DatasetVersion.content_sha256 == sha
            )
        ).first()
        if same is not None:
            return same
        number = (
            s.execute(
                select(func.max(DatasetVersion.version)).where(DatasetVersion.name == name)
            ).scalar_one()
            or 0
        ) + 1
        row = DatasetVersion(
            name=name,
            version=number,
            kind=kind,
            content_sha256=sha,
            size=size,
            format=fmt,
            n_samples=n_samples,
            lineage=lineage,
            description=description,
            created_by=actor,
            created_at=tx.at,
        )
        s.add(row)
        s.flush()
        lineage_json = canonical_json(lineage)
        payload: dict[str, Any] = {
            "kind": kind,
            "content_sha256": sha,
            "size": size,
            "format": fmt,
            "n_samples": n_samples,
            "lineage_sha256": hashlib.sha256(lineage_json.encode()).hexdigest(),
        }
        if len(lineage_json) <= _LINEAGE_INLINE:  # a long one (request ids) only by its hash
            payload["lineage"] = lineage
        tx.log("dataset", row.ref, payload)
        return row


def get_dataset(reg: Registry, ref: str) -> DatasetVersion:
    """The data set version ``ref`` names (:class:`RegistryError` when there is none)."""
    name, version = parse_dataset_ref(ref)
    with reg.store.read() as s:
        q = select(DatasetVersion).where(DatasetVersion.name == name)
        q = (
            q.where(DatasetVersion.version == version)
            if version is not None
            else q.order_by(DatasetVersion.version.desc()).limit(1)
        )
        row = s.scalars(q).first()
        if row is None:
            known = s.scalars(
                select(DatasetVersion.version).where(DatasetVersion.name == name)
            ).all()
            hint = f"known versions: {sorted(known)}" if known else f"no data set called {name!r}"
            raise RegistryError(f"dataset: {ref} not found ({hint})")
        return row


def list_datasets(
    reg: Registry, *, name: str | None = None, kind: str | None = None
) -> list[DatasetVersion]:
    """Registered data set versions (of one name, of one kind), by name and version."""
    with reg.store.read() as s:
        q = select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.version)
        if name:
            q = q.where(DatasetVersion.name == name)
        if kind:
            q = q.where(DatasetVersion.kind == kind)
        return list(s.scalars(q))


def dataset_path(reg: Registry, ds: DatasetVersion) -> Path:
    """The stored file of ``ds``, re-hashed first (:class:`RegistryError` when altered)."""
    try:
        reg.store.artifacts.verify(ds.content_sha256)
    except Exception as exc:
        raise RegistryError(f"dataset: the file of {ds.ref}: {exc}") from None
    return reg.store.artifacts.path(ds.content_sha256)
