"""Read a user's data source (:mod:`robustops.data.sources`) into a :class:`Dataset` or a
:class:`TextDataset`, fingerprinted and split.

* **Fingerprint**: sha256 streamed over the source's files in sorted order of their path
  relative to the source (for each file: its relative path, NUL, its size as 8 bytes
  little-endian, its bytes). It identifies the *files*, so it changes when any byte of them
  does, and not when the folder is moved. It is computed from the bytes read in this run, on
  every run, cache or no cache.
* **Index**: the labels (and a ``split_column`` or ``train/``/``test/`` folders) only, then the
  split: the source's own when it has one, else stratified by class with ``data.split_seed``
  and ``data.test_fraction``. Train samples keep their source order; test samples are ordered
  class 0, 1, …, K-1, 0, 1, … like the embedded sets (every prefix near-stratified).
* **Decode**:

  - images: each file is read once; its bytes are hashed into the fingerprint and decoded to
    uint8 pixels of a source-order array (the uint8 copy is a quarter of the float32 tensors
    it becomes); with the cache on, the bytes (up to 256 MiB in all) are kept between the
    fingerprint and a cache miss's decoding, beyond that read again and re-hashed (a file
    changed in between is an error);
  - tables: in chunks of rows (pyarrow batches or pandas CSV chunks) into a float32
    source-order array, then gathered into train and test (two copies of the table at the
    peak);
  - arrays: chunks read from the ``.npy`` stream written straight into the preallocated
    train or test tensor (one copy plus one chunk; arrays are not cached: they are already
    decoded).

  Image folders, manifests, CSV and Parquet tables keep their decoded values in a cache
  (:mod:`robustops.data.cache`) named by the content fingerprint and the decoding options:
  a later run on the same bytes reads and fingerprints the files, then takes the values from
  there instead of decoding.

Bad data raises :class:`DataIntegrityError` naming the file and the row (or line): NaN or
infinite values, wrong shapes, labels outside ``classes``, a class without samples, images that
do not decode, text that is not UTF-8, missing columns. Nothing is dropped silently: the only
things skipped are blank JSONL lines and hidden files (``.name``) of an image folder.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import os
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch

from robustops.data.cache import Entry, cache_from_env
from robustops.data.embedded import Dataset, _interleave_by_class
from robustops.data.sms_spam import TextDataset
from robustops.data.sources import (
    ArraysSource,
    CsvSource,
    DataSource,
    HfSavedSource,
    ImageFolderSource,
    ImageManifestSource,
    JsonlSource,
    ParquetSource,
    TextCsvSource,
)
from robustops.errors import DataIntegrityError, SpecError, shorten

__all__ = ["IMAGE_SUFFIXES", "fingerprint_files", "load_source"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File endings an image folder may hold."""

_CHUNK_BYTES = 1 << 20

_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_BLOCK_BYTES = 16 << 20
"""Most bytes of files read ahead of their decoding in one thread (:func:`_hash_files`)."""

_KEEP_BYTES = 256 << 20
"""Image files up to this many bytes in all are kept in memory between fingerprinting them and
decoding them (on a cache miss), so they are read once; larger sets are read twice."""

CacheOption = bool | str | Path | None
"""``load_source``'s ``cache``: ``None`` the environment's default (see
:mod:`robustops.data.cache`), ``False`` off, a path: that cache folder."""

log = logging.getLogger("robustops.data")


# ---------------------------------------------------------------------------- fingerprints


def fingerprint_files(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over ``(relative name, file)`` pairs in sorted name order, streamed (see the module
    docstring); a file that cannot be read raises :class:`DataIntegrityError` naming it."""
    h = hashlib.sha256()
    for name, path in sorted(files, key=lambda t: t[0]):
        try:
            size = path.stat().st_size
            h.update(name.encode("utf-8") + b"\0" + size.to_bytes(8, "little"))
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK_BYTES):
                    h.update(chunk)
        except OSError as exc:
            raise DataIntegrityError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return h.hexdigest()


def _one_file(path: Path) -> list[tuple[str, Path]]:
    if not path.is_file():
        raise DataIntegrityError(f"{path}: no such file")
    return [(path.name, path)]


# ---------------------------------------------------------------------------- labels and split


@dataclass(frozen=True)
class _Index:
    """What the index pass learns: labels ``(N,)`` int64, class names, and the source's own
    split (``is_test`` ``(N,)`` bool) if it has one."""

    labels: np.ndarray
    classes: tuple[str, ...]
    is_test: np.ndarray | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _class_names(values: Sequence[Any]) -> list[str]:
    """Sorted distinct label values as names (numerically when they are all integers)."""
    distinct = set(values)
    if all(_is_int(v) for v in distinct):
        return [str(v) for v in sorted(int(v) for v in distinct)]
    return sorted(str(v) for v in distinct)


def _labels(
    values: Sequence[Any], given: list[str] | None, where: str, row_name: Any
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map label values to class indices. ``given``: the spec's ``classes`` (a value outside
    them is an error naming the row, and so is a class without samples); default: the sorted
    distinct values. ``row_name(i)`` names row ``i`` in messages."""
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and not np.isfinite(v)) or v == "":
            raise DataIntegrityError(f"{where}: {row_name(i)}: the label is missing")
    names = list(given) if given is not None else _class_names(values)
    if len(names) < 2:
        raise DataIntegrityError(
            f"{where}: needs at least 2 classes, found {names} (a classifier needs two)"
        )
    lookup = {n: k for k, n in enumerate(names)}
    labels = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        k = lookup.get(str(v))
        if k is None:
            raise DataIntegrityError(
                f"{where}: {row_name(i)}: label {shorten(str(v), 80)!r} is not one of the "
                f"classes {names}"
            )
        labels[i] = k
    _check_classes(labels, tuple(names), where)
    return labels, tuple(names)


def _labels_coded(
    codes: np.ndarray, distinct: Sequence[Any], given: list[str] | None, where: str, row_name: Any
) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`_labels` of the values ``distinct[codes[i]]`` (``codes[i] == -1``: missing),
    decided once per distinct value instead of once per row: the same checks in the same
    order, the same messages naming the first row concerned."""
    missing = np.array(
        [v is None or (isinstance(v, float) and not np.isfinite(v)) or v == "" for v in distinct]
        + [True],  # code -1
        dtype=bool,
    )
    hit = missing[codes]
    if hit.any():
        raise DataIntegrityError(f"{where}: {row_name(int(np.argmax(hit)))}: the label is missing")
    names = list(given) if given is not None else _class_names(list(distinct))
    if len(names) < 2:
        raise DataIntegrityError(
            f"{where}: needs at least 2 classes, found {names} (a classifier needs two)"
        )
    lookup = {n: k for k, n in enumerate(names)}
    index = np.array([lookup.get(str(v), -1) for v in distinct] + [-1], dtype=np.int64)
    labels = index[codes]
    if labels.size and int(labels.min()) < 0:
        i = int(np.argmax(labels < 0))
        v = distinct[int(codes[i])]
        raise DataIntegrityError(
            f"{where}: {row_name(i)}: label {shorten(str(v), 80)!r} is not one of the "
            f"classes {names}"
        )
    _check_classes(labels, tuple(names), where)
    return labels, tuple(names)


def _column_codes(column: Any) -> tuple[np.ndarray, list[Any]] | None:
    """A table's label column (a pandas Series) as ``(codes, distinct values)`` for
    :func:`_labels_coded`: codes ``-1`` for missing values (None, NaN), the distinct values as
    the per-row path reads them (plain Python values, integral floats as ints). Only for
    integer, float, bool and string columns, whose equal values read alike; ``None`` for any
    other (the per-row path decides those)."""
    import pandas as pd

    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return None
    kind = getattr(dtype, "kind", "O")
    strings = isinstance(dtype, pd.StringDtype) or (
        kind == "O" and pd.api.types.infer_dtype(column, skipna=True) == "string"
    )
    if kind not in "iufb" and not strings:
        return None
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), [_plain(v) for v in uniques]


def _check_classes(labels: np.ndarray, classes: tuple[str, ...], where: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DataIntegrityError(f"{where}: class(es) {empty} have no sample")


def _split_flags(values: Sequence[Any], where: str, row_name: Any) -> np.ndarray:
    flags = np.empty(len(values), dtype=bool)
    for i, v in enumerate(values):
        s = str(v).strip().lower()
        if s not in ("train", "test"):
            raise DataIntegrityError(
                f"{where}: {row_name(i)}: split value {shorten(str(v), 40)!r} is neither "
                "'train' nor 'test'"
            )
        flags[i] = s == "test"
    return flags


def _split(index: _Index, test_fraction: float, seed: int, where: str) -> tuple[np.ndarray, ...]:
    """Train and test positions: the source's own split, or a stratified one."""
    from sklearn.model_selection import train_test_split

    labels = index.labels
    if index.is_test is not None:
        tr, te = np.flatnonzero(~index.is_test), np.flatnonzero(index.is_test)
        if tr.size == 0 or te.size == 0:
            raise DataIntegrityError(f"{where}: the source's split leaves the train or test empty")
    else:
        counts = np.bincount(labels, minlength=len(index.classes))
        few = [index.classes[k] for k in np.flatnonzero(counts < 2)]
        if few:
            raise DataIntegrityError(
                f"{where}: class(es) {few} have fewer than 2 samples: a stratified split needs "
                "at least one in train and one in test"
            )
        try:
            tr, te = train_test_split(
                np.arange(labels.shape[0]),
                test_size=test_fraction,
                stratify=labels,
                random_state=seed,
            )
        except ValueError as exc:
            raise DataIntegrityError(f"{where}: cannot split stratified: {exc}") from exc
        tr = np.sort(tr)
    return tr, _interleave_by_class(te, labels[te])


class _Filler:
    """Preallocated train and test tensors, filled batch by batch in source order."""

    def __init__(self, shape: tuple[int, ...], n: int, tr: np.ndarray, te: np.ndarray) -> None:
        self.x_train = torch.empty((len(tr), *shape), dtype=torch.float32)
        self.x_test = torch.empty((len(te), *shape), dtype=torch.float32)
        self.slot = np.full(n, -1, dtype=np.int64)
        self.slot[tr] = np.arange(len(tr))
        self.slot[te] = np.arange(len(te))
        self.test = np.zeros(n, dtype=bool)
        self.test[te] = True

    def put(self, start: int, rows: np.ndarray) -> None:
        """Rows ``start … start + len(rows) - 1`` of the source, float32 ``(k, *shape)``."""
        pos = np.arange(start, start + rows.shape[0])
        is_test = self.test[pos]
        # numpy views of the tensors: a plain fancy-index copy (torch's masked indexing was
        # most of the time of a whole image-folder load)
        self.x_test.numpy()[self.slot[pos[is_test]]] = rows[is_test]
        self.x_train.numpy()[self.slot[pos[~is_test]]] = rows[~is_test]


def _tensor_dataset(
    name: str,
    index: _Index,
    shape: tuple[int, ...],
    batches: Iterator[tuple[int, np.ndarray]],
    fp: str,
    test_fraction: float,
    seed: int,
    info: dict[str, object],
    where: str,
) -> Dataset:
    """The split, with the batches written straight into the train and test tensors (one
    copy of the data)."""
    tr, te = _split(index, test_fraction, seed, where)
    fill = _Filler(shape, index.labels.shape[0], tr, te)
    for start, rows in batches:
        fill.put(start, rows)
    return _make_dataset(
        name, index, tr, te, fill.x_train, fill.x_test, fp, test_fraction, seed, info
    )


def _array_dataset(
    name: str,
    index: _Index,
    x: np.ndarray,
    convert: Callable[[np.ndarray], torch.Tensor],
    fp: str,
    test_fraction: float,
    seed: int,
    info: dict[str, object],
    where: str,
) -> Dataset:
    """The split of ``x`` (all samples in source order, possibly memory-mapped), each side
    gathered and passed through ``convert``."""
    tr, te = _split(index, test_fraction, seed, where)
    x = np.asarray(x)
    x_train, x_test = convert(x[tr]), convert(x[te])
    return _make_dataset(name, index, tr, te, x_train, x_test, fp, test_fraction, seed, info)


def _make_dataset(
    name: str,
    index: _Index,
    tr: np.ndarray,
    te: np.ndarray,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    fp: str,
    test_fraction: float,
    seed: int,
    info: dict[str, object],
) -> Dataset:
    own = index.is_test is not None
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(index.labels[tr]),
        x_test=x_test,
        y_test=torch.from_numpy(index.labels[te]),
        num_classes=len(index.classes),
        fingerprint=fp,
        split_seed=seed,
        test_fraction=float(len(te) / len(index.labels)) if own else test_fraction,
        classes=index.classes,
        source={**info, "split": "source" if own else "stratified"},
    )


# ---------------------------------------------------------------------------- text checks


def _check_utf8(path: Path) -> None:
    """Stream ``path`` line by line; the first line that is not UTF-8 raises, naming it."""
    try:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataIntegrityError(
                        f"{path}: line {lineno} is not valid UTF-8 (byte {exc.start} of the "
                        "line); save the file as UTF-8"
                    ) from None
    except OSError as exc:
        raise DataIntegrityError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _csv_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a UTF-8 CSV with a header; missing columns and short rows
    raise :class:`DataIntegrityError` naming the file (and the line)."""
    _check_utf8(path)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, strict=True)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataIntegrityError(
                f"{path}: missing column(s) {missing}; the header has {shorten(str(header))}"
            )
        try:
            for row in reader:
                if any(row.get(c) is None for c in columns):
                    raise DataIntegrityError(
                        f"{path}: line {reader.line_num}: fewer fields than the header"
                    )
                yield reader.line_num, row
        except csv.Error as exc:
            raise DataIntegrityError(f"{path}: line {reader.line_num}: {exc}") from exc


# ---------------------------------------------------------------------------- images


def _workers() -> int:
    """Decoding threads: ``$ROBUSTOPS_DATA_THREADS``, else 1 below 4 CPUs (measured on a busy
    2-vCPU machine, two threads decoded MNIST PNGs no faster and 320×320 JPEGs 30 % slower:
    the cores were taken), else up to 4."""
    env = os.environ.get("ROBUSTOPS_DATA_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    cpus = os.cpu_count() or 1
    return 1 if cpus < 4 else min(4, cpus)


def _read_file(path: str | Path) -> bytes:
    """The file's bytes (``os.read``: a third of the time of ``open().read()`` on small
    files); an unreadable file raises :class:`DataIntegrityError` naming it."""
    try:
        fd = os.open(path, _O_READ)
        try:
            parts = []
            while chunk := os.read(fd, _CHUNK_BYTES):
                parts.append(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DataIntegrityError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


@functools.cache
def _pil() -> tuple[Any, Any]:
    """Pillow's ``Image`` module and ``UnidentifiedImageError``, imported on first use (an
    import statement per image cost more than a small PNG's decoding does in Python)."""
    from PIL import Image, UnidentifiedImageError

    return Image, UnidentifiedImageError


def _decode_image(
    path: str | Path, data: bytes, channels: int, size: tuple[int, int]
) -> np.ndarray:
    """One image (its file's bytes) as uint8 ``(C, H, W)``: converted to grey (``L``) or
    ``RGB``, resized (bilinear) to ``size`` ``(H, W)`` when it differs. Pillow releases the GIL
    while it decodes, converts and resizes, so several threads decode at once."""
    Image, UnidentifiedImageError = _pil()
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # convert() to the mode an image already has only copies it (Pillow returns
            # self.copy()): skipped, a fifth of the decoding time of small grey PNGs
            im = opened if opened.mode == mode else opened.convert(mode)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            raw = im.tobytes()  # decodes; the bytes np.asarray(im) would wrap, without its detour
        shape = (size[0], size[1]) if channels == 1 else (size[0], size[1], 3)
        a = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataIntegrityError(f"{path}: not a decodable image ({shorten(str(exc))})") from None
    except Image.DecompressionBombError as exc:
        raise DataIntegrityError(f"{path}: refused, too many pixels ({exc})") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _to_unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels as float32 in [0, 1] (``k / 255`` in float32, the same on every path)."""
    out = pixels.astype(np.float32)
    out /= np.float32(255.0)
    return torch.from_numpy(out)


_Named = tuple[str, "str | Path", int]
"""A file to fingerprint: its name in the fingerprint, its path, its source position (or -1)."""


def _hash_files(
    named: Sequence[_Named],
    decode: Callable[[str | Path, bytes], np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> str:
    """The fingerprint of :func:`fingerprint_files` over ``named``, each file read once; with
    ``decode``, every file with a position ``>= 0`` is also decoded from the bytes just read
    into ``out[position]``. In one thread, files are read and hashed a block at a time (64
    files or 16 MiB), then the block is decoded: 13 % less CPU than alternating file by file
    on 5 000 MNIST PNGs (each loop keeps its code and data in the caches). With more than one
    decoding thread (:func:`_workers`) files go to a pool in tasks of 32, in fingerprint
    order, at most ``4 × threads`` tasks ahead of the hashing, so memory holds that many
    files' bytes at most."""
    order = sorted(named, key=lambda t: t[0])
    per_task = 32

    def work(items: Sequence[_Named]) -> list[tuple[bytes, np.ndarray | None]]:
        done = []
        for _, path, pos in items:
            data = _read_file(path)
            done.append((data, decode(path, data) if decode is not None and pos >= 0 else None))
        return done

    h = hashlib.sha256()
    threads = _workers() if decode is not None else 1  # reading alone is faster in one
    if threads == 1:
        block: list[tuple[str | Path, int, bytes]] = []
        held = 0
        for k, (name, path, pos) in enumerate(order):
            data = _read_file(path)
            h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
            h.update(data)
            if decode is not None and out is not None and pos >= 0:
                block.append((path, pos, data))
                held += len(data)
            if block and (len(block) >= 64 or held >= _BLOCK_BYTES or k == len(order) - 1):
                assert decode is not None and out is not None
                for p, i, b in block:
                    out[i] = decode(p, b)
                block, held = [], 0
        return h.hexdigest()
    tasks = [order[i : i + per_task] for i in range(0, len(order), per_task)]
    ahead = 4 * threads
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        pending = deque(pool.submit(work, t) for t in tasks[:ahead])
        for k, items in enumerate(tasks):
            if k + ahead < len(tasks):
                pending.append(pool.submit(work, tasks[k + ahead]))
            for (name, _, pos), (data, arr) in zip(items, pending.popleft().result(), strict=True):
                h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
                h.update(data)
                if arr is not None and out is not None:
                    out[pos] = arr
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error: drop what is queued
    return h.hexdigest()


def _read_and_hash(named: Sequence[_Named], keep: int) -> tuple[str, dict[int, bytes] | None]:
    """The fingerprint of ``named`` (as :func:`fingerprint_files`), and the bytes of the files
    with a position, by position, while they add up to at most ``keep`` bytes (else ``None``:
    decoding will read them again)."""
    h = hashlib.sha256()
    kept: dict[int, bytes] | None = {}
    total = 0
    for name, path, pos in sorted(named, key=lambda t: t[0]):
        data = _read_file(path)
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
        if kept is not None and pos >= 0:
            total += len(data)
            if total > keep:
                kept = None  # too much to hold: decoding reads the files again
            else:
                kept[pos] = data
    return h.hexdigest(), kept


def _decode_kept(
    named: Sequence[_Named],
    kept: dict[int, bytes],
    decode: Callable[[str | Path, bytes], np.ndarray],
    out: np.ndarray,
) -> None:
    """Decode the bytes :func:`_read_and_hash` kept into ``out`` (in threads when
    :func:`_workers` says so)."""
    jobs = [(path, pos) for _, path, pos in named if pos >= 0]
    threads = _workers()
    if threads == 1:
        for path, pos in jobs:
            out[pos] = decode(path, kept[pos])
        return

    def work(part: list[tuple[str | Path, int]]) -> None:
        for path, pos in part:
            out[pos] = decode(path, kept[pos])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for f in [pool.submit(work, jobs[i : i + 32]) for i in range(0, len(jobs), 32)]:
            f.result()


def _cache_options(src: Any) -> dict[str, Any]:
    """What decides the decoded values besides the files: the source's options without its
    paths (the fingerprint holds the names relative to the source)."""
    drop = {"path", "x", "y", "chunk_rows"}
    opts = {k: v for k, v in _info(src).items() if k not in drop}
    schema = opts.get("schema")
    if isinstance(schema, str):
        from robustops.tabular import get_schema

        with contextlib.suppress(SpecError):
            opts["schema_definition"] = get_schema(schema).model_dump_json()
    return opts


def _image_dataset(
    src: ImageFolderSource | ImageManifestSource,
    name: str,
    index: _Index,
    named: Sequence[_Named],
    test_fraction: float,
    seed: int,
    where: str,
    cache_option: CacheOption,
    report: dict[str, Any] | None,
) -> Dataset:
    """Read, fingerprint and decode the images ``named`` (``(fingerprint name, path, source
    position or -1)``), or take the decoded pixels from the cache entry of the fingerprint of
    the bytes read now; then split."""
    n = index.labels.shape[0]
    shape = (src.channels, *src.size)
    decode = functools.partial(_decode_image, channels=src.channels, size=src.size)
    cache = cache_from_env(cache_option)
    pixels: np.ndarray | None = None
    if cache is None:
        status = "off"
        pixels = np.empty((n, *shape), dtype=np.uint8)
        fp = _hash_files(named, decode, pixels)  # one read per file: hashed, then decoded
    else:
        fp, kept = _read_and_hash(named, _KEEP_BYTES)
        key = cache.key(src.kind, _cache_options(src), fp)
        entry = cache.get(key)
        if entry is not None:
            x, y = entry.arrays.get("x"), entry.arrays.get("labels")
            if (
                x is not None
                and x.dtype == np.uint8
                and x.shape == (n, *shape)
                and y is not None
                and np.array_equal(y, index.labels)
            ):
                pixels = x
            else:  # cannot be written by this code for this key: treated as corrupt
                log.warning("data cache: entry %s does not fit %s; rebuilding it", key, where)
        status = "hit" if pixels is not None else "miss"
        if pixels is None:
            pixels = np.empty((n, *shape), dtype=np.uint8)
            if kept is not None:
                _decode_kept(named, kept, decode, pixels)
            elif _hash_files(named, decode, pixels) != fp:
                raise DataIntegrityError(f"{where}: files changed while they were read; run again")
            cache.put(key, fp, {"x": pixels, "labels": index.labels}, {"kind": src.kind})
    if report is not None:
        report.update({"cache": status, "cache_dir": str(cache.root) if cache else None})
    return _array_dataset(name, index, pixels, _to_unit, fp, test_fraction, seed, _info(src), where)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataIntegrityError(f"{root}: no such folder")
    subs = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p.name for p in subs if not p.is_dir()]
    if stray:
        raise DataIntegrityError(
            f"{root}: files {shorten(str(stray))} sit beside the class folders; every image "
            "belongs in its class's sub-folder"
        )
    return subs


def _folder_images(folder: Path) -> list[os.DirEntry[str]]:
    """The files under ``folder`` (recursively, not following linked folders), hidden ones
    (``.name``) skipped, in path order; one ``scandir`` per folder, no ``stat`` per file."""
    files: list[os.DirEntry[str]] = []
    stack = [str(folder)]
    nested = False
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir() and not e.is_symlink():
                    stack.append(e.path)
                    nested = True
                elif not e.name.startswith(".") and e.is_file():
                    files.append(e)
    if nested:  # the order of sorted(Path): by path components
        files.sort(key=lambda e: os.path.normcase(e.path).split(os.sep))
    else:
        files.sort(key=lambda e: os.path.normcase(e.name))
    bad = [e.path for e in files if e.name[e.name.rfind(".") :].lower() not in IMAGE_SUFFIXES]
    if bad:
        raise DataIntegrityError(
            f"{folder}: {len(bad)} file(s) are not images by their ending (first: "
            f"{os.path.relpath(bad[0], folder)!r}); accepted: {sorted(IMAGE_SUFFIXES)}"
        )
    return files


def _load_image_folder(
    src: ImageFolderSource,
    name: str,
    test_fraction: float,
    seed: int,
    cache: CacheOption = None,
    report: dict[str, Any] | None = None,
) -> Dataset:
    root = src.path
    parts = [root / "train", root / "test"] if src.split_folders else [root]
    files: list[os.DirEntry[str]] = []
    values: list[str] = []
    flags: list[bool] = []
    found: list[list[str]] = []
    for part in parts:
        folders = _class_folders(part)
        found.append([p.name for p in folders])
        for folder in folders:
            imgs = _folder_images(folder)
            if not imgs:
                raise DataIntegrityError(f"{folder}: class folder {folder.name!r} has no image")
            files += imgs
            values += [folder.name] * len(imgs)
            flags += [part.name == "test" and src.split_folders] * len(imgs)
    if src.split_folders and found[0] != found[1]:
        raise DataIntegrityError(
            f"{root}: train/ has classes {found[0]} but test/ has {found[1]}; they must match"
        )
    where = str(root)
    labels, classes = _labels(values, src.classes, where, lambda i: files[i].path)
    index = _Index(labels, classes, np.array(flags) if src.split_folders else None)
    cut = len(os.path.join(str(root), ""))  # every path is str(root), os.sep, the relative path
    named: list[_Named] = [(e.path[cut:], e.path, i) for i, e in enumerate(files)]
    if os.sep != "/":  # fingerprint names are POSIX paths
        named = [(n.replace(os.sep, "/"), p, i) for n, p, i in named]
    return _image_dataset(src, name, index, named, test_fraction, seed, where, cache, report)


def _load_image_manifest(
    src: ImageManifestSource,
    name: str,
    test_fraction: float,
    seed: int,
    cache: CacheOption = None,
    report: dict[str, Any] | None = None,
) -> Dataset:
    csv_path = src.path
    base = csv_path.parent
    cols = [src.path_column, src.label_column, *([src.split_column] if src.split_column else [])]
    files: list[Path] = []
    values: list[str] = []
    splits: list[str] = []
    lines: list[int] = []
    for lineno, row in _csv_rows(csv_path, cols):
        rel = row[src.path_column].strip()
        pure = PurePosixPath(rel.replace("\\", "/"))
        if not rel or pure.is_absolute() or ".." in pure.parts:
            raise DataIntegrityError(
                f"{csv_path}: line {lineno}: image path {shorten(rel, 80)!r} must be relative to "
                "the manifest's folder, without '..'"
            )
        f = base / pure
        if not f.is_file():
            raise DataIntegrityError(f"{csv_path}: line {lineno}: no image file {rel!r}")
        files.append(f)
        values.append(row[src.label_column])
        lines.append(lineno)
        if src.split_column:
            splits.append(row[src.split_column])
    if not files:
        raise DataIntegrityError(f"{csv_path}: the manifest lists no image")
    where = str(csv_path)
    row_name = lambda i: f"line {lines[i]}"  # noqa: E731
    labels, classes = _labels(values, src.classes, where, row_name)
    is_test = _split_flags(splits, where, row_name) if src.split_column else None
    named = [
        ("manifest", csv_path, -1),
        *((f"images/{f.relative_to(base).as_posix()}", f, i) for i, f in enumerate(files)),
    ]
    index = _Index(labels, classes, is_test)
    return _image_dataset(src, name, index, named, test_fraction, seed, where, cache, report)


# ---------------------------------------------------------------------------- arrays


class _NpyStream:
    """An ``.npy`` array read row chunk by row chunk from a binary stream (never unpickled)."""

    def __init__(self, fh: IO[bytes], where: str) -> None:
        fmt = np.lib.format
        try:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        except ValueError as exc:
            raise DataIntegrityError(f"{where}: not a .npy array ({exc})") from None
        if dtype.hasobject:
            raise DataIntegrityError(
                f"{where}: holds Python objects (it would need pickle, which is never loaded); "
                "save a numeric array"
            )
        if fortran and len(shape) > 1:
            raise DataIntegrityError(
                f"{where}: is stored in Fortran order; save np.ascontiguousarray(x) instead"
            )
        self.fh, self.where = fh, where
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype: np.dtype[Any] = dtype
        self.row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        n = self.shape[0] if self.shape else 0
        for start in range(0, n, rows):
            k = min(rows, n - start)
            want = k * self.row_items * self.dtype.itemsize
            buf = self.fh.read(want)
            if len(buf) != want:
                raise DataIntegrityError(f"{self.where}: truncated after row {start}")
            yield start, np.frombuffer(buf, dtype=self.dtype).reshape((k, *self.shape[1:]))


def _array_streams(src: ArraysSource) -> tuple[list[tuple[str, Path]], Any, Any, list[Any]]:
    """The files to fingerprint, the x and y streams, and what to close."""
    if src.path is not None:
        if not src.path.is_file():
            raise DataIntegrityError(f"{src.path}: no such file")
        try:
            zf = zipfile.ZipFile(src.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataIntegrityError(f"{src.path}: not a readable .npz ({exc})") from None
        members = set(zf.namelist())
        missing = [k for k in ("x", "y") if f"{k}.npy" not in members]
        if missing:
            zf.close()
            raise DataIntegrityError(
                f"{src.path}: missing array(s) {missing}; it holds "
                f"{sorted(m.removesuffix('.npy') for m in members)} (save with np.savez(path, x=…, y=…))"
            )
        fx, fy = zf.open("x.npy"), zf.open("y.npy")
        files = [(src.path.name, src.path)]
        closers: list[Any] = [fx, fy, zf]
        return files, (fx, f"{src.path}[x]"), (fy, f"{src.path}[y]"), closers
    assert src.x is not None and src.y is not None
    for f in (src.x, src.y):
        if not f.is_file():
            raise DataIntegrityError(f"{f}: no such file")
    fx, fy = src.x.open("rb"), src.y.open("rb")
    return [("x", src.x), ("y", src.y)], (fx, str(src.x)), (fy, str(src.y)), [fx, fy]


def _load_arrays(src: ArraysSource, name: str, test_fraction: float, seed: int) -> Dataset:
    files, (fx, wx), (fy, wy), closers = _array_streams(src)
    try:
        fp = fingerprint_files(files)
        ys = _NpyStream(fy, wy)
        if len(ys.shape) != 1 or ys.dtype.kind not in "iu":
            raise DataIntegrityError(
                f"{wy}: labels must be a 1-D integer array, got shape {ys.shape} dtype {ys.dtype}"
            )
        y = np.concatenate([c for _, c in ys.chunks(1 << 20)] or [np.empty(0, ys.dtype)])
        y = y.astype(np.int64)
        xs = _NpyStream(fx, wx)
        if len(xs.shape) not in (2, 4) or xs.shape[0] != y.shape[0]:
            raise DataIntegrityError(
                f"{wx}: inputs must be (N, C, H, W) images or (N, D) rows with N = {y.shape[0]} "
                f"(the labels), got shape {xs.shape}"
            )
        if xs.dtype.kind not in "iuf" or xs.dtype.kind == "b":
            raise DataIntegrityError(f"{wx}: dtype {xs.dtype} is not numeric")
        k = len(src.classes) if src.classes is not None else int(y.max(initial=-1)) + 1
        bad = np.flatnonzero((y < 0) | (y >= k))
        if bad.size:
            raise DataIntegrityError(
                f"{wy}: row {int(bad[0])}: label {int(y[bad[0]])} is outside the classes 0…{k - 1}"
            )
        classes = tuple(src.classes) if src.classes is not None else tuple(map(str, range(k)))
        if len(classes) < 2:
            raise DataIntegrityError(f"{wy}: needs at least 2 classes")
        _check_classes(y, classes, wy)
        image = len(xs.shape) == 4
        rows = max(1, (8 << 20) // max(1, xs.row_items * 4))

        def batches() -> Iterator[tuple[int, np.ndarray]]:
            for start, chunk in xs.chunks(rows):
                v = chunk.astype(np.float32)
                if xs.dtype == np.uint8:
                    v /= 255.0
                ok = np.isfinite(v).reshape(v.shape[0], -1).all(axis=1)
                if image:
                    ok &= ((v >= 0) & (v <= 1)).reshape(v.shape[0], -1).all(axis=1)
                if not ok.all():
                    i = start + int(np.flatnonzero(~ok)[0])
                    what = "NaN, infinite or outside [0, 1]" if image else "NaN or infinite"
                    raise DataIntegrityError(f"{wx}: row {i}: values are {what}")
                yield start, v

        return _tensor_dataset(
            name,
            _Index(y, classes),
            tuple(int(s) for s in xs.shape[1:]),
            batches(),
            fp,
            test_fraction,
            seed,
            _info(src),
            wx,
        )
    finally:
        for c in closers:
            c.close()


# ---------------------------------------------------------------------------- tables


def _table_features(src: CsvSource | ParquetSource, header: list[str]) -> tuple[list[str], Any]:
    from robustops.tabular import get_schema

    schema = None
    if src.schema_name is not None:
        try:
            schema = get_schema(src.schema_name)
        except SpecError as exc:
            raise SpecError.single("data.source.schema", exc.errors[0][1]) from None
    if src.features is not None:
        features = list(src.features)
    elif schema is not None:
        features = schema.names
    else:
        features = [c for c in header if c not in (src.label, src.split_column)]
    if schema is not None and features != schema.names:
        raise SpecError.single(
            "data.source.features",
            f"schema {schema.name!r} expects the columns {schema.names} in that order",
        )
    missing = [
        c for c in [src.label, *features, *filter(None, [src.split_column])] if c not in header
    ]
    if missing:
        raise DataIntegrityError(
            f"{src.path}: missing column(s) {missing}; the header has {shorten(str(header))}"
        )
    return features, schema


def _table_rows(
    df: Any, features: list[str], start: int, schema: Any, where: str, csv_lines: bool
) -> np.ndarray:
    """A chunk of rows as float32 ``(k, D)``, checked (finite, numeric, the schema) and scaled
    by the schema when there is one."""
    import pandas as pd

    def row_name(i: int) -> str:
        return f"row {i} (line {i + 2})" if csv_lines else f"row {i}"

    if isinstance(df, np.ndarray):  # already numeric (:func:`_arrow_rows`)
        return _checked_rows(df, features, start, schema, where, row_name)
    sub = df[features]
    try:
        raw: np.ndarray = sub.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        for col in features:
            num = pd.to_numeric(sub[col], errors="coerce")
            bad = np.flatnonzero(num.isna().to_numpy() & sub[col].notna().to_numpy())
            if bad.size:
                i = int(bad[0])
                raise DataIntegrityError(
                    f"{where}: {row_name(start + i)}, column {col!r}: "
                    f"{shorten(str(sub[col].iloc[i]), 60)!r} is not a number"
                ) from None
        raise
    return _checked_rows(raw, features, start, schema, where, row_name)


def _checked_rows(
    raw: np.ndarray,
    features: list[str],
    start: int,
    schema: Any,
    where: str,
    row_name: Callable[[int], str],
) -> np.ndarray:
    """Float64 rows ``(k, D)`` checked (finite, the schema) as float32, scaled by the schema
    when there is one."""
    finite = np.isfinite(raw)
    if not finite.all():
        i, j = (int(v) for v in np.argwhere(~finite)[0])
        raise DataIntegrityError(
            f"{where}: {row_name(start + i)}, column {features[j]!r}: value is missing, NaN or "
            "infinite"
        )
    if schema is None:
        return raw.astype(np.float32)
    scaled: np.ndarray
    scaled, v = schema.check_raw(raw)  # whole columns at once; validate() for the message
    if v is not None:
        raise DataIntegrityError(
            f"{where}: {row_name(start + v.row)}, column {v.feature!r}: {v.reason} "
            f"(schema {schema.name!r})"
        )
    return scaled.astype(np.float32)


def _arrow_rows(batch: Any, features: list[str]) -> np.ndarray | None:
    """The ``features`` of a pyarrow record batch as float64 ``(k, D)`` straight from the Arrow
    buffers (no DataFrame), when every one is an integer or floating column without nulls:
    the values ``to_pandas()[features].to_numpy(dtype=float64)`` gives. ``None`` otherwise
    (the pandas path then converts, and names bad values)."""
    import pyarrow as pa

    out = np.empty((len(features), batch.num_rows), dtype=np.float64)
    for j, name in enumerate(features):
        i = batch.schema.get_field_index(name)  # -1 when missing or not unique
        if i < 0:
            return None
        col = batch.column(i)
        if col.null_count or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            return None
        out[j] = col.to_numpy(zero_copy_only=False)  # cast to float64 as numpy casts
    return out.T  # column-major: each column copied in one contiguous run


def _load_table(
    src: CsvSource | ParquetSource,
    name: str,
    test_fraction: float,
    seed: int,
    cache_option: CacheOption = None,
    report: dict[str, Any] | None = None,
) -> Dataset:
    path = src.path
    if not path.is_file():
        raise DataIntegrityError(f"{path}: no such file")
    where = str(path)
    fp = fingerprint_files(_one_file(path))
    cache = cache_from_env(cache_option)
    status, key = "off", None
    if cache is not None:
        key = cache.key(src.kind, _cache_options(src), fp)
        entry = cache.get(key)
        status = "miss"
        if entry is not None:
            got = _table_from_entry(entry, fp, src)
            if got is not None:
                index, x, features = got
                if report is not None:
                    report.update({"cache": "hit", "cache_dir": str(cache.root)})
                info = {**_info(src), "features": features}
                return _array_dataset(
                    name, index, x, _float_rows, fp, test_fraction, seed, info, where
                )
            log.warning("data cache: entry %s does not fit %s; rebuilding it", key, where)
    import pandas as pd

    is_csv = isinstance(src, CsvSource)
    if is_csv:
        _check_utf8(path)
        header = [str(c) for c in pd.read_csv(path, nrows=0).columns]

        def chunks(cols: list[str]) -> Iterator[Any]:
            try:
                yield from pd.read_csv(path, usecols=cols, chunksize=src.chunk_rows)
            except (ValueError, pd.errors.ParserError) as exc:
                raise DataIntegrityError(f"{path}: {shorten(str(exc))}") from None

    else:
        pq = _pyarrow_parquet()
        try:
            pfile = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid and OSError kinds
            raise DataIntegrityError(
                f"{path}: not a readable Parquet file ({shorten(str(exc))})"
            ) from None
        header = list(pfile.schema_arrow.names)

        def chunks(cols: list[str]) -> Iterator[Any]:
            for batch in pfile.iter_batches(batch_size=src.chunk_rows, columns=cols):
                fast = _arrow_rows(batch, features) if cols == features else None
                yield batch.to_pandas() if fast is None else fast

    features, schema = _table_features(src, header)
    meta_cols = [src.label, *([src.split_column] if src.split_column else [])]
    columns: list[Any] = []
    splits: list[Any] = []
    for df in chunks(meta_cols):
        columns.append(df[src.label])
        if src.split_column:
            splits += df[src.split_column].tolist()

    def row_name(i: int) -> str:
        return f"row {i} (line {i + 2})" if is_csv else f"row {i}"

    coded = _column_codes(pd.concat(columns, ignore_index=True)) if len(columns) else None
    if coded is not None:
        labels, classes = _labels_coded(*coded, src.classes, where, row_name)
    else:
        values = [None if _missing(v) else _plain(v) for column in columns for v in column.tolist()]
        labels, classes = _labels(values, src.classes, where, row_name)
    is_test = _split_flags(splits, where, row_name) if src.split_column else None
    x = np.empty((labels.shape[0], len(features)), dtype=np.float32)
    start = 0
    for df in chunks(features):
        rows = _table_rows(df, features, start, schema, where, is_csv)
        x[start : start + rows.shape[0]] = rows
        start += rows.shape[0]
    if start != labels.shape[0]:  # the file changed between the two passes
        raise DataIntegrityError(f"{path}: changed while it was read; run again")
    if cache is not None and key is not None:
        if fingerprint_files(_one_file(path)) != fp:  # never cache values of other bytes
            raise DataIntegrityError(f"{path}: changed while it was read; run again")
        arrays = {"x": x, "labels": labels}
        if is_test is not None:
            arrays["is_test"] = is_test
        cache.put(key, fp, arrays, {"classes": list(classes), "features": features})
    if report is not None:
        report.update({"cache": status, "cache_dir": str(cache.root) if cache else None})
    info = {**_info(src), "features": features}
    index = _Index(labels, classes, is_test)
    return _array_dataset(name, index, x, _float_rows, fp, test_fraction, seed, info, where)


def _float_rows(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def _table_from_entry(
    entry: Entry, fp: str, src: CsvSource | ParquetSource
) -> tuple[_Index, np.ndarray, list[str]] | None:
    """The index, the rows and the feature names of a cache entry, or ``None`` when its
    fingerprint is not ``fp`` or anything in it does not fit."""
    if entry.fingerprint != fp:
        return None
    x, y, t = (entry.arrays.get(k) for k in ("x", "labels", "is_test"))
    classes, features = entry.meta.get("classes"), entry.meta.get("features")
    if x is None or y is None or not isinstance(classes, list) or not isinstance(features, list):
        return None
    n = y.shape[0]
    if (
        x.dtype != np.float32
        or x.shape != (n, len(features))
        or y.dtype != np.int64
        or y.ndim != 1
        or (n and (int(y.min()) < 0 or int(y.max()) >= len(classes)))
        or (t is None) != (src.split_column is None)
        or (t is not None and (t.dtype != np.bool_ or t.shape != (n,)))
    ):
        return None
    index = _Index(np.array(y), tuple(str(c) for c in classes), None if t is None else np.array(t))
    return index, x, [str(f) for f in features]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _plain(v: Any) -> Any:
    """A label value as a plain Python value (a float that is an integer becomes an int)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise DataIntegrityError("Parquet sources need pyarrow: pip install pyarrow") from exc
    return pq


# ---------------------------------------------------------------------------- texts


def _text_dataset(
    name: str,
    texts: list[str],
    index: _Index,
    fp: str,
    test_fraction: float,
    seed: int,
    info: dict[str, object],
    where: str,
) -> TextDataset:
    tr, te = _split(index, test_fraction, seed, where)
    y = torch.from_numpy(index.labels)
    own = index.is_test is not None
    return TextDataset(
        name=name,
        texts_train=[texts[i] for i in tr],
        y_train=y[torch.from_numpy(tr)].contiguous(),
        texts_test=[texts[i] for i in te],
        y_test=y[torch.from_numpy(te)].contiguous(),
        classes=index.classes,
        fingerprint=fp,
        split_seed=seed,
        test_fraction=float(len(te) / len(texts)) if own else test_fraction,
        deduplicated=False,
        source={**info, "split": "source" if own else "stratified"},
    )


def _load_text_csv(src: TextCsvSource, name: str, test_fraction: float, seed: int) -> TextDataset:
    path = src.path
    if not path.is_file():
        raise DataIntegrityError(f"{path}: no such file")
    cols = [src.text, src.label, *([src.split_column] if src.split_column else [])]
    texts: list[str] = []
    values: list[str] = []
    splits: list[str] = []
    lines: list[int] = []
    for lineno, row in _csv_rows(path, cols):
        texts.append(row[src.text])
        values.append(row[src.label])
        lines.append(lineno)
        if src.split_column:
            splits.append(row[src.split_column])
    return _finish_texts(src, name, texts, values, splits, lines, test_fraction, seed)


def _load_jsonl(src: JsonlSource, name: str, test_fraction: float, seed: int) -> TextDataset:
    path = src.path
    if not path.is_file():
        raise DataIntegrityError(f"{path}: no such file")
    texts: list[str] = []
    values: list[Any] = []
    splits: list[Any] = []
    lines: list[int] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataIntegrityError(
                    f"{path}: line {lineno} is not valid UTF-8 (byte {exc.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataIntegrityError(f"{path}: line {lineno}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DataIntegrityError(f"{path}: line {lineno}: not a JSON object")
            keys = [src.text, src.label, *([src.split_column] if src.split_column else [])]
            missing = [k for k in keys if k not in rec]
            if missing:
                raise DataIntegrityError(f"{path}: line {lineno}: missing key(s) {missing}")
            text, label = rec[src.text], rec[src.label]
            if not isinstance(text, str):
                raise DataIntegrityError(f"{path}: line {lineno}: {src.text!r} is not a string")
            if not (isinstance(label, str) or _is_int(label)):
                raise DataIntegrityError(
                    f"{path}: line {lineno}: label {shorten(repr(label), 60)} must be a string or "
                    "an integer"
                )
            texts.append(text)
            values.append(label)
            lines.append(lineno)
            if src.split_column:
                splits.append(rec[src.split_column])
    return _finish_texts(src, name, texts, values, splits, lines, test_fraction, seed)


def _finish_texts(
    src: TextCsvSource | JsonlSource,
    name: str,
    texts: list[str],
    values: list[Any],
    splits: list[Any],
    lines: list[int],
    test_fraction: float,
    seed: int,
) -> TextDataset:
    where = str(src.path)
    if not texts:
        raise DataIntegrityError(f"{where}: holds no text")

    def row_name(i: int) -> str:
        return f"line {lines[i]}"

    labels, classes = _labels(values, src.classes, where, row_name)
    is_test = _split_flags(splits, where, row_name) if src.split_column else None
    fp = fingerprint_files(_one_file(src.path))
    return _text_dataset(
        name, texts, _Index(labels, classes, is_test), fp, test_fraction, seed, _info(src), where
    )


# ---------------------------------------------------------------------------- Hugging Face


def _load_hf_saved(
    src: HfSavedSource, name: str, test_fraction: float, seed: int
) -> Dataset | TextDataset:
    try:
        import datasets
    except ImportError:
        raise DataIntegrityError(
            "hf-saved sources need the Hugging Face `datasets` package: pip install 'robustops[hf]'"
        ) from None
    root = src.path
    if not root.is_dir():
        raise DataIntegrityError(f"{root}: no such folder")
    fp = fingerprint_files(
        (p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()
    )
    try:
        obj = datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises FileNotFoundError and its own kinds
        raise DataIntegrityError(
            f"{root}: not a dataset saved with save_to_disk ({shorten(str(exc))})"
        ) from None
    where = str(root)
    if isinstance(obj, datasets.DatasetDict):
        if set(obj) != {"train", "test"}:
            raise DataIntegrityError(
                f"{where}: holds splits {sorted(obj)}; give one Dataset or exactly train and test"
            )
        parts = [obj["train"], obj["test"]]
        ds = datasets.concatenate_datasets(parts)
        is_test: np.ndarray | None = np.r_[
            np.zeros(len(parts[0]), bool), np.ones(len(parts[1]), bool)
        ]
    else:
        ds, is_test = obj, None
    cols = [src.label, *([src.text] if src.text else (src.features or []))]
    if src.split_column:
        cols.append(src.split_column)
    missing = [c for c in cols if c not in ds.column_names]
    if missing:
        raise DataIntegrityError(f"{where}: missing column(s) {missing}; it has {ds.column_names}")
    feature = ds.features[src.label]
    values: list[Any] = list(ds[src.label])
    given = src.classes
    if given is None and isinstance(feature, datasets.ClassLabel):
        given = list(feature.names)
        values = [
            feature.names[v] if _is_int(v) and 0 <= v < len(feature.names) else v for v in values
        ]
    row_name = lambda i: f"row {i}"  # noqa: E731
    labels, classes = _labels(values, given, where, row_name)
    if src.split_column:
        is_test = _split_flags(list(ds[src.split_column]), where, row_name)
    index = _Index(labels, classes, is_test)
    info = _info(src)
    if src.text is not None:
        texts = list(ds[src.text])
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataIntegrityError(f"{where}: row {i}: {src.text!r} is not a string")
        return _text_dataset(name, texts, index, fp, test_fraction, seed, info, where)
    features = list(src.features or [])
    batch = 10_000

    def batches() -> Iterator[tuple[int, np.ndarray]]:
        import pandas as pd

        for start in range(0, len(ds), batch):
            df = pd.DataFrame(ds[start : start + batch])
            yield start, _table_rows(df, features, start, None, where, False)

    return _tensor_dataset(
        name, index, (len(features),), batches(), fp, test_fraction, seed, info, where
    )


# ---------------------------------------------------------------------------- entry point


def _info(src: Any) -> dict[str, object]:
    out: dict[str, object] = src.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def load_source(
    source: DataSource,
    *,
    name: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache: CacheOption = None,
    report: dict[str, Any] | None = None,
) -> Dataset | TextDataset:
    """Read ``source`` (its paths already resolved), fingerprint it and split it; a
    :class:`TextDataset` for ``text-csv``, ``jsonl`` and ``hf-saved`` with a ``text`` column, a
    :class:`Dataset` otherwise. ``name`` labels the data set in results.

    Image folders, image manifests, CSV and Parquet tables keep their decoded values in a
    cache (:mod:`robustops.data.cache`): ``cache`` ``None`` uses the environment's (on unless
    ``ROBUSTOPS_DATA_CACHE=0``), ``False`` turns it off, a path names the folder. Their files
    are read and fingerprinted on every run either way. ``report``, a dict, receives
    ``cache``: ``"hit"`` (decoded values taken from the cache), ``"miss"`` (decoded and
    cached) or ``"off"`` (no cache, or a source kind it does not cover)."""
    if not 0.0 < test_fraction < 1.0:
        raise SpecError.single("data.test_fraction", f"must be in (0, 1), got {test_fraction!r}")
    if isinstance(source, ImageFolderSource):
        return _load_image_folder(source, name, test_fraction, seed, cache, report)
    if isinstance(source, ImageManifestSource):
        return _load_image_manifest(source, name, test_fraction, seed, cache, report)
    if report is not None:
        report["cache"] = "off"
    if isinstance(source, ArraysSource):
        return _load_arrays(source, name, test_fraction, seed)
    if isinstance(source, (CsvSource, ParquetSource)):
        return _load_table(source, name, test_fraction, seed, cache, report)
    if isinstance(source, TextCsvSource):
        return _load_text_csv(source, name, test_fraction, seed)
    if isinstance(source, JsonlSource):
        return _load_jsonl(source, name, test_fraction, seed)
    return _load_hf_saved(source, name, test_fraction, seed)
