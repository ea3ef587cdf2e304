"""Fixtures of the data-source tests: the embedded sets written out as user sources, once per
session and small (the runner tests train and attack on them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustops.data.export import write_breast_cancer_parquet, write_mnist_folder, write_sms_jsonl


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``mnist/`` (12 PNGs per digit), ``bc.parquet`` and ``sms.jsonl`` (40
    messages per class)."""
    root = tmp_path_factory.mktemp("sources")
    write_mnist_folder(root / "mnist", per_class=12)
    write_breast_cancer_parquet(root / "bc.parquet")
    write_sms_jsonl(root / "sms.jsonl", limit=40)
    return root
