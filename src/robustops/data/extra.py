"""Extra training data: reviewed (or any other labelled) samples a spec adds to the training
split only (``data.extra_train``), each pinned by the sha256 of its file.

A ``.npz`` holds arrays ``x`` ``(N, *input_shape)`` (float in [0, 1] for images, or uint8
divided by 255) and ``y`` ``(N,)`` integer class indices — the ``arrays`` source format, read
with ``np.load(allow_pickle=False)``; a ``.jsonl`` holds one ``{"text": …, "label": …}`` object
per line (label a class name of the data, or a class index) — the ``jsonl`` source format.
``robustops review dataset`` writes both, with the sha256 to pin in its ``manifest.json``.

The base data's fingerprint, split and test set stay exactly as they are (results before and
after stay comparable by the gate); :meth:`Dataset.describe` gains ``extra_train``: per file its
path, sha256, n and class counts (the lineage the training sidecar, the checkpoints and the
registry version record).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import Field

from robustops.data.embedded import Dataset
from robustops.data.sms_spam import TextDataset
from robustops.errors import SpecError
from robustops.schema import StrictModel

__all__ = ["ExtraTrainData", "add_extra_train", "file_sha256"]

_D = TypeVar("_D", Dataset, TextDataset)


class ExtraTrainData(StrictModel):
    """One file of extra training samples (``data.extra_train[i]``).

    Attributes:
        path: a ``.npz`` (tensor data) or ``.jsonl`` (text data), relative to the spec's folder.
        sha256: the file's sha256 (lowercase hex); a different file is refused.
        name: a label for it in lineage (default the file's parent folder name).
    """

    path: Path
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str | None = None

    def resolved(self, base: Path) -> ExtraTrainData:
        """This entry with a relative ``path`` resolved against ``base``."""
        p = self.path if self.path.is_absolute() else (base / self.path).resolve()
        return self.model_copy(update={"path": p})


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _load_npz(path: Path, data: Dataset, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise SpecError.single(f"{field}.path", f"{path}: no array(s) {missing} in it")
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as exc:  # not a zip, or an object array (pickle refused)
        raise SpecError.single(f"{field}.path", f"{path}: not a readable .npz ({exc})") from None
    if x.dtype.kind not in "uif" or y.dtype.kind not in "iu" or y.ndim != 1:
        raise SpecError.single(
            f"{field}.path",
            f"{path}: x must be numeric and y 1-D integers, got x {x.dtype}, y {y.dtype} {y.shape}",
        )
    if tuple(x.shape[1:]) != data.input_shape or x.shape[0] != y.shape[0]:
        raise SpecError.single(
            f"{field}.path",
            f"{path}: x has shape {list(x.shape)} for {y.shape[0]} labels; the data's inputs "
            f"are {list(data.input_shape)}",
        )
    xf = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    if not np.isfinite(xf).all():
        raise SpecError.single(f"{field}.path", f"{path}: x has NaN or infinite values")
    if len(data.input_shape) == 3 and xf.size and (xf.min() < 0.0 or xf.max() > 1.0):
        raise SpecError.single(f"{field}.path", f"{path}: image values must be in [0, 1]")
    _check_labels(y, data.num_classes, path, field)
    return torch.from_numpy(xf).to(data.x_train.dtype), torch.from_numpy(y.astype(np.int64))


def _check_labels(y: np.ndarray, k: int, path: Path, field: str) -> None:
    bad = np.flatnonzero((y < 0) | (y >= k))
    if bad.size:
        raise SpecError.single(
            f"{field}.path",
            f"{path}: row {int(bad[0])}: label {int(y[bad[0]])} is outside the classes 0…{k - 1}",
        )


def _load_jsonl(path: Path, data: TextDataset, field: str) -> tuple[list[str], torch.Tensor]:
    texts: list[str] = []
    labels: list[int] = []
    classes = list(data.classes)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError.single(f"{field}.path", f"{path}: not readable UTF-8 ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError.single(f"{field}.path", f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise SpecError.single(f"{field}.path", f"{where}: needs a string `text`")
        label: Any = obj.get("label")
        if isinstance(label, str) and label in classes:
            k = classes.index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            k = label
        else:
            raise SpecError.single(
                f"{field}.path", f"{where}: label {label!r} is not a class of the data {classes}"
            )
        texts.append(obj["text"])
        labels.append(k)
    return texts, torch.tensor(labels, dtype=torch.int64)


def add_extra_train(
    data: _D, extras: Sequence[ExtraTrainData], *, field: str = "data.extra_train"
) -> _D:
    """``data`` with the samples of ``extras`` appended to its training split (in order; the
    test split, fingerprint and split seed unchanged) and their lineage in ``extra_train``.

    Raises :class:`SpecError` naming ``{field}.{i}.sha256`` when a file's sha256 is not the
    pinned one, ``{field}.{i}.path`` when it is missing, of the wrong kind for the data, or
    holds samples that do not fit (shape, range, labels)."""
    if not extras:
        return data
    x_parts: list[torch.Tensor] = []
    text_parts: list[str] = []
    y_parts: list[torch.Tensor] = []
    records: list[dict[str, object]] = list(data.extra_train)
    for i, e in enumerate(extras):
        f = f"{field}.{i}"
        if not e.path.is_file():
            raise SpecError.single(f"{f}.path", f"{e.path}: no such file")
        got = file_sha256(e.path)
        if got != e.sha256:
            raise SpecError.single(
                f"{f}.sha256",
                f"{e.path} has sha256 {got}, the spec pins {e.sha256} (the file changed; "
                "pin the new sha256 from its manifest.json if that is intended)",
            )
        if isinstance(data, TextDataset):
            if e.path.suffix != ".jsonl":
                raise SpecError.single(f"{f}.path", "text data takes a .jsonl file")
            texts, y = _load_jsonl(e.path, data, f)
            text_parts.extend(texts)
        else:
            if e.path.suffix != ".npz":
                raise SpecError.single(f"{f}.path", "image and table data take a .npz file")
            x, y = _load_npz(e.path, data, f)
            x_parts.append(x)
        y_parts.append(y)
        records.append(
            {
                "name": e.name or e.path.parent.name,
                "path": str(e.path),
                "sha256": got,
                "n": int(y.shape[0]),
                "class_counts": torch.bincount(y, minlength=data.num_classes).tolist(),
            }
        )
    y_train = torch.cat([data.y_train, *y_parts])
    if isinstance(data, TextDataset):
        return dataclasses.replace(
            data,
            texts_train=[*data.texts_train, *text_parts],
            y_train=y_train,
            extra_train=tuple(records),
        )
    return dataclasses.replace(
        data,
        x_train=torch.cat([data.x_train, *x_parts]),
        y_train=y_train,
        extra_train=tuple(records),
    )
