"""Human review of harvested inputs, and the reviewed data set they become.

- :func:`image_array` / :func:`image_preview`: a tensor input as a 2-D grey image and as a
  small Unicode block picture for the terminal (28×28 MNIST, 8×8 digits, any ``(C, H, W)``,
  ``(H, W)`` or flat square input).
- :func:`visible_text`: a text with every invisible character shown as ``⟨U+200B⟩`` and every
  look-alike from another script followed by its code point (``frе⟨U+0435⟩e``).
- :func:`parse_label`: a reviewer's answer (class index or class name) as a class index.
- :func:`write_reviewed_dataset`: the labelled items as a versioned data set: tensors as a
  ``reviewed.npz`` (arrays ``x`` ``(N, *input_shape)`` float32 in [0, 1] and ``y`` ``(N,)``
  int64: the ``arrays`` source format, readable with ``np.load(allow_pickle=False)``) or texts
  as ``reviewed.jsonl`` (``{"text", "label"}`` lines: the ``jsonl`` source format, labels as
  class names), plus ``manifest.json`` (the data file's sha256, counts, the queue item and
  request ids behind it, reviewers, the log folder, the creation time).

A training spec adds the data set with ``data.extra_train: [{path: DIR/reviewed.npz, sha256:
…}]`` (see :mod:`robustops.data.extra`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import unicodedata
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustops.io import atomic_path, atomic_write_text
from robustops.monitoring.harvest import QueueItem, ReviewError, ReviewQueue

__all__ = [
    "DATA_FILES",
    "image_array",
    "image_preview",
    "parse_label",
    "visible_text",
    "write_reviewed_dataset",
]

DATA_FILES = {"tensor": "reviewed.npz", "text": "reviewed.jsonl"}
"""The data file of a reviewed data set, by modality."""

_RAMP = " ░▒▓█"


def image_array(x: Any, *, item: int | str = "?") -> np.ndarray:
    """A tensor input (nested lists) as a 2-D float array ``(H, W)`` for display: ``(C, H, W)``
    averaged over channels (RGB kept as ``(H, W, 3)``), ``(1, H, W)`` squeezed, a flat input of
    square length reshaped. Raises :class:`ReviewError` naming ``item`` when it is no image."""
    a = np.asarray(x, dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side != a.size or side < 2:
            raise ReviewError(f"item {item}: a flat input of {a.size} values is not a square image")
        return a.reshape(side, side)
    if a.ndim == 3 and a.shape[0] == 3:
        return np.asarray(np.moveaxis(a, 0, -1))
    if a.ndim == 3:
        return np.asarray(a.mean(axis=0))
    if a.ndim == 2:
        return a
    raise ReviewError(f"item {item}: input of shape {a.shape} is not an image")


def _unit(a: np.ndarray) -> np.ndarray:
    """Values scaled to [0, 1]: kept when already there, else min-max (0-255 data too)."""
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    if lo >= 0.0 and hi <= 255.0:
        return a / 255.0
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def image_preview(x: Any, *, item: int | str = "?", max_width: int = 28) -> str:
    """A Unicode picture of a tensor input: two characters per pixel from the ramp
    `` ░▒▓█`` (darkest blank), one line per row; images wider than ``max_width`` pixels are
    downsampled by an integer factor (block means). Framed with ``┌─┐`` corners."""
    a = image_array(x, item=item)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    a = _unit(a)
    step = max(1, math.ceil(a.shape[1] / max_width))
    if step > 1:
        h, w = (a.shape[0] // step) * step, (a.shape[1] // step) * step
        a = a[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    idx = np.clip(np.rint(a * (len(_RAMP) - 1)), 0, len(_RAMP) - 1).astype(int)
    width = 2 * a.shape[1]
    rows = ["┌" + "─" * width + "┐"]
    rows += ["│" + "".join(_RAMP[i] * 2 for i in r) + "│" for r in idx]
    rows.append("└" + "─" * width + "┘")
    return "\n".join(rows)


def _suspicious_chars() -> tuple[frozenset[str], Any]:
    from robustops.text.sanitize import CONFUSABLES, INVISIBLE

    return INVISIBLE, CONFUSABLES


def visible_text(text: str) -> str:
    """``text`` with what a reviewer could not see made visible: each invisible character
    (format characters, variation selectors, controls; :data:`robustops.text.INVISIBLE`)
    replaced by ``⟨U+200B ZERO WIDTH SPACE⟩``; each homoglyph (:data:`robustops.text.CONFUSABLES`)
    and each other non-ASCII letter outside Latin kept and followed by
    ``⟨U+0435 CYRILLIC SMALL LETTER IE⟩``; non-ASCII whitespace shown as its code point."""
    invisible, confusables = _suspicious_chars()
    out: list[str] = []
    for ch in text:
        if ch in "\n\t " or (ch.isascii() and ch.isprintable()):
            out.append(ch)
            continue
        name = unicodedata.name(ch, "")
        tag = f"⟨U+{ord(ch):04X}{' ' + name if name else ''}⟩"
        if ch in invisible or unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn") or ch.isspace():
            out.append(tag)
        elif ch in confusables or (ch.isalpha() and "LATIN" not in name):
            out.append(ch + tag)
        else:
            out.append(ch)
    return "".join(out)


def parse_label(answer: str, classes: Sequence[str], *, item: int | str = "?") -> int:
    """A reviewer's answer as a class index: a class name (exact, then case-insensitive) or an
    index in ``[0, len(classes))``. Raises :class:`ReviewError` naming the item otherwise."""
    a = answer.strip()
    if a in classes:
        return list(classes).index(a)
    lower = [c.lower() for c in classes]
    if a.lower() in lower and lower.count(a.lower()) == 1:
        return lower.index(a.lower())
    if a.lstrip("-").isdigit():
        k = int(a)
        if 0 <= k < len(classes):
            return k
        raise ReviewError(f"item {item}: label {k} is outside the classes 0…{len(classes) - 1}")
    raise ReviewError(
        f"item {item}: label {answer!r} is neither a class index nor a class name {list(classes)}"
    )


# ---------------------------------------------------------------------------- data set


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A deterministic ``.npz`` (fixed member times, sorted members, deflated): the
    same arrays give the same bytes, hence the same sha256."""
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(arrays[name]))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tensor_rows(items: list[QueueItem], input_shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(input_shape)
    rows = []
    for it in items:
        a = np.asarray(it.input, dtype=np.float32)
        if a.size != size:
            raise ReviewError(
                f"item {it.id}: input has {a.size} values, the model's input shape "
                f"{list(input_shape)} needs {size}"
            )
        if not np.isfinite(a).all():
            raise ReviewError(f"item {it.id}: input has NaN or infinite values")
        if len(input_shape) == 3 and (a.min() < 0.0 or a.max() > 1.0):
            raise ReviewError(
                f"item {it.id}: image values must be in [0, 1] (as the model is served), got "
                f"[{float(a.min()):g}, {float(a.max()):g}]"
            )
        rows.append(a.reshape(input_shape))
    return np.stack(rows) if rows else np.zeros((0, *input_shape), np.float32)


def write_reviewed_dataset(
    queue: ReviewQueue,
    out_dir: str | Path,
    *,
    name: str,
    classes: Sequence[str],
    modality: str,
    input_shape: Sequence[int] | None = None,
    log_folder: str | None = None,
    spec_name: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Write every labelled item of ``queue`` (current label; skipped and pending items left
    out) to ``out_dir`` as a data set (see the module docstring) and return its manifest.

    ``classes``: class names by index (the spec's data); ``modality`` ``tensor`` or ``text``;
    ``input_shape``: one input's shape for tensors (``(C, H, W)`` or ``(D,)``; each input is
    reshaped to it, its size must match). Items are ordered by id. A data file already in
    ``out_dir`` with other content is an error (a data set version is never overwritten; write
    a new one to another folder). Raises :class:`ReviewError` when nothing is labelled or an
    item does not fit."""
    if modality not in DATA_FILES:
        raise ReviewError(f"modality: must be 'tensor' or 'text', got {modality!r}")
    labelled = sorted(queue.items(status="labelled"), key=lambda it: it.id)
    items = [it for it in labelled if it.modality == modality]
    if not items:
        raise ReviewError(f"{queue.path}: no labelled {modality} items to write")
    k = len(classes)
    for it in items:
        assert it.label is not None
        if it.label >= k:
            raise ReviewError(f"item {it.id}: label {it.label} is outside the classes 0…{k - 1}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / DATA_FILES[modality]
    labels = np.asarray([it.label for it in items], dtype=np.int64)
    tmp = out / (data_path.name + ".new")
    if modality == "tensor":
        if input_shape is None:
            raise ReviewError("input_shape: needed for tensor items")
        x = _tensor_rows(items, tuple(int(s) for s in input_shape))
        _write_npz(tmp, {"x": x, "y": labels})
    else:
        lines = []
        for it in items:
            if not isinstance(it.input, str):
                raise ReviewError(f"item {it.id}: a text item holds no string")
            lines.append(
                json.dumps(
                    {"text": it.input, "label": classes[int(it.label or 0)]}, ensure_ascii=False
                )
                + "\n"
            )
        tmp.write_text("".join(lines), encoding="utf-8")
    sha = _sha256_file(tmp)
    if data_path.exists() and _sha256_file(data_path) != sha:
        tmp.unlink()
        raise ReviewError(
            f"out: {data_path} already holds another reviewed data set; write the new version "
            "to a new folder"
        )
    tmp.replace(data_path)
    created = dt.datetime.fromtimestamp(
        dt.datetime.now().timestamp() if now is None else now, dt.UTC
    )
    request_ids = sorted({r for it in items for r in it.request_ids})
    manifest: dict[str, Any] = {
        "kind": "reviewed",
        "name": name,
        "version": sha[:12],
        "modality": modality,
        "file": data_path.name,
        "path": str(data_path.resolve()),
        "format": "arrays" if modality == "tensor" else "jsonl",
        "sha256": sha,
        "n": len(items),
        "classes": list(classes),
        "class_counts": np.bincount(labels, minlength=k).tolist(),
        "input_shape": list(input_shape) if modality == "tensor" and input_shape else None,
        "item_ids": [it.id for it in items],
        "other_modality_left_out": len(labelled) - len(items),
        "item_sha256": [it.sha256 for it in items],
        "request_ids": request_ids,
        "reviewers": sorted({it.current.reviewer for it in items if it.current}),
        "label_events": sum(len(it.history) for it in items),
        "models": sorted({it.model for it in items}),
        "reasons": {r: sum(r in it.reasons for it in items) for r in ("flag", "abstain", "ood")},
        "queue": str(queue.path),
        "log_folder": log_folder,
        "spec_name": spec_name,
        "created_at": created.isoformat(),
        "extra_train": {"path": str(data_path.resolve()), "sha256": sha},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
