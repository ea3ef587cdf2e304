"""The ``data.source`` section of a spec: a user's own data, one model per kind of source.

A discriminated union on ``kind`` (errors read ``data.source.<kind>.<field>``)::

    image-folder    <path>/<class>/<image>          (or <path>/train|test/<class>/<image>)
    arrays          one .npz with keys x, y; or two .npy files
    image-manifest  a CSV of (path, label) rows, image paths relative to the CSV
    csv, parquet    a table: a label column and feature columns (optionally a feature schema)
    text-csv, jsonl texts: a text column and a label column
    hf-saved        a Hugging Face ``datasets`` folder written by ``save_to_disk``

Every path is resolved against the spec file's folder (:meth:`resolved`). The loaders are in
:mod:`robustops.data.loaders`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from robustops.schema import StrictModel

__all__ = [
    "ArraysSource",
    "CsvSource",
    "DataSource",
    "HfSavedSource",
    "ImageFolderSource",
    "ImageManifestSource",
    "JsonlSource",
    "ParquetSource",
    "TextCsvSource",
]


def _fix(base: Path, p: Path | None) -> Path | None:
    return p if p is None or p.is_absolute() else (base / p).resolve()


class _Source(StrictModel):
    """Fields every source has.

    Attributes:
        classes: class names by index. Default: the sorted distinct labels (folder names for an
            image folder). Given, a label outside it is an error, and so is a class without any
            sample.
        split_column: a column whose values are ``train``/``test`` assigning each row to its
            split (then ``data.test_fraction`` and ``data.split_seed`` are not used); default:
            a stratified random split.
    """

    classes: list[str] | None = Field(default=None, min_length=2)
    split_column: str | None = None

    @property
    def modality(self) -> Literal["tensor", "text"]:
        """``"text"`` for text sources, ``"tensor"`` for images and tables."""
        return "tensor"

    def resolved(self, base: Path) -> _Source:
        """This source with its relative paths resolved against ``base``."""
        return self


class _ImageOptions(StrictModel):
    """How images are decoded: ``channels`` 1 (grey, ``L``) or 3 (``RGB``), resized to
    ``size`` ``[height, width]`` (bilinear) when they differ; values in [0, 1]."""

    channels: Literal[1, 3] = 1
    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]]


class ImageFolderSource(_Source, _ImageOptions):
    """``path/<class>/<image>``: one sub-folder per class (sorted names = class indices), files
    ending .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff or .webp; hidden files (``.name``) are
    skipped, any other file is an error. ``split_folders``: ``path/train/<class>/…`` and
    ``path/test/<class>/…`` give the split (both must hold the same classes)."""

    kind: Literal["image-folder"]
    path: Path
    split_folders: bool = False

    def resolved(self, base: Path) -> ImageFolderSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class ImageManifestSource(_Source, _ImageOptions):
    """A CSV (UTF-8, header row) with an image path column and a label column; image paths
    relative to the CSV's folder (absolute paths and ``..`` are refused)."""

    kind: Literal["image-manifest"]
    path: Path
    path_column: str = "path"
    label_column: str = "label"

    def resolved(self, base: Path) -> ImageManifestSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class ArraysSource(_Source):
    """Arrays: ``path`` a ``.npz`` with arrays ``x`` and ``y``, or ``x`` and ``y`` two ``.npy``
    files. ``x``: ``(N, C, H, W)`` images or ``(N, D)`` rows; uint8 is divided by 255, float
    kept (images must be in [0, 1]); ``y``: ``(N,)`` integers in ``[0, K)``. Never unpickled:
    object arrays are refused. Read in chunks of rows, never whole."""

    kind: Literal["arrays"]
    path: Path | None = None
    x: Path | None = None
    y: Path | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> ArraysSource:
        if (self.path is None) == (self.x is None or self.y is None):
            raise ValueError("give either `path` (a .npz with x and y) or both `x` and `y` (.npy)")
        if self.path is not None and (self.x is not None or self.y is not None):
            raise ValueError("give either `path` or `x`/`y`, not both")
        if self.path is not None and self.path.suffix != ".npz":
            raise ValueError("`path` must be a .npz file (use `x` and `y` for .npy files)")
        for f in (self.x, self.y):
            if f is not None and f.suffix != ".npy":
                raise ValueError(f"`x` and `y` must be .npy files, got {f.name!r}")
        if self.split_column is not None:
            raise ValueError("arrays have no columns: split_column does not apply")
        return self

    def resolved(self, base: Path) -> ArraysSource:
        return self.model_copy(
            update={"path": _fix(base, self.path), "x": _fix(base, self.x), "y": _fix(base, self.y)}
        )


class _TableColumns(StrictModel):
    """``label``: the label column. ``features``: the feature columns in model order (default:
    the ``schema``'s feature names, else every column but the label and split columns).
    ``schema``: a registered feature schema (:mod:`robustops.tabular`): the raw values are
    checked against it (range, grid, one-hot) and min-max scaled with its ranges; without one
    the values are used as they are (epsilons are then in those units)."""

    label: str = "label"
    features: list[str] | None = Field(default=None, min_length=1)
    schema_name: str | None = Field(default=None, alias="schema")


class CsvSource(_Source, _TableColumns):
    """A CSV table (UTF-8, header row), read in chunks of ``chunk_rows``."""

    kind: Literal["csv"]
    path: Path
    chunk_rows: int = Field(default=50_000, ge=1)

    def resolved(self, base: Path) -> CsvSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class ParquetSource(_Source, _TableColumns):
    """A Parquet table, read batch by batch (pyarrow)."""

    kind: Literal["parquet"]
    path: Path
    chunk_rows: int = Field(default=50_000, ge=1)

    def resolved(self, base: Path) -> ParquetSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class _TextColumns(StrictModel):
    text: str = "text"
    label: str = "label"

    @property
    def modality(self) -> Literal["tensor", "text"]:
        return "text"


class TextCsvSource(_TextColumns, _Source):
    """Texts in a CSV (UTF-8, header row): a text column and a label column."""

    kind: Literal["text-csv"]
    path: Path

    def resolved(self, base: Path) -> TextCsvSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class JsonlSource(_TextColumns, _Source):
    """Texts in JSON lines (UTF-8, one object per line; blank lines skipped)."""

    kind: Literal["jsonl"]
    path: Path

    def resolved(self, base: Path) -> JsonlSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


class HfSavedSource(_Source):
    """A Hugging Face ``datasets`` folder written by ``save_to_disk``, read with
    ``load_from_disk`` (never the hub; needs ``pip install 'robustops[hf]'``). A
    ``DatasetDict`` with ``train`` and ``test`` gives the split. Give ``text`` (a text column:
    text data) or ``features`` (numeric columns: a table, values used as they are)."""

    kind: Literal["hf-saved"]
    path: Path
    label: str = "label"
    text: str | None = None
    features: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> HfSavedSource:
        if (self.text is None) == (self.features is None):
            raise ValueError("give exactly one of `text` (a text column) or `features` (columns)")
        return self

    @property
    def modality(self) -> Literal["tensor", "text"]:
        return "text" if self.text is not None else "tensor"

    def resolved(self, base: Path) -> HfSavedSource:
        return self.model_copy(update={"path": _fix(base, self.path)})


DataSource = Annotated[
    ImageFolderSource
    | ImageManifestSource
    | ArraysSource
    | CsvSource
    | ParquetSource
    | TextCsvSource
    | JsonlSource
    | HfSavedSource,
    Field(discriminator="kind"),
]
"""One data source, chosen by its ``kind``."""
