"""The spec's data sources: each kind loads, splits and fingerprints; bad data is refused with
the file and the row named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter

from robustops.config import DataSpec, load_spec
from robustops.data import Dataset, DataSource, TextDataset, load_breast_cancer, load_source
from robustops.errors import DataIntegrityError, SpecError
from robustops.models import Normalized, mlp
from spec_helpers import write_spec

_SOURCE = TypeAdapter(DataSource)


def load(spec: dict[str, Any], base: Path, **kw: Any) -> Dataset | TextDataset:
    return load_source(_SOURCE.validate_python(spec).resolved(base), name="t", **kw)


def test_image_folder_loads_split_and_classes(sources: Path) -> None:
    d = load({"kind": "image-folder", "path": "mnist", "size": [28, 28]}, sources)
    assert isinstance(d, Dataset)
    assert d.input_shape == (1, 28, 28) and d.classes == tuple(str(i) for i in range(10))
    assert len(d.x_train) + len(d.x_test) == 120 and float(d.x_train.max()) <= 1.0
    assert set(torch.bincount(d.y_test).tolist()) <= {2, 3}  # stratified: 24 test images
    assert d.y_test[:10].tolist() == list(range(10))  # interleaved like the embedded sets
    resized = load(
        {"kind": "image-folder", "path": "mnist", "size": [14, 14], "channels": 3}, sources
    )
    assert resized.input_shape == (3, 14, 14)
    assert resized.fingerprint == d.fingerprint  # the files, not the decoding


def test_fingerprint_is_stable_and_follows_the_files(sources: Path, tmp_path: Path) -> None:
    shutil.copytree(sources / "mnist", tmp_path / "m")
    spec = {"kind": "image-folder", "path": "m", "size": [28, 28]}
    a, b = load(spec, tmp_path), load(spec, tmp_path)
    assert a.fingerprint == b.fingerprint == load({**spec, "path": "mnist"}, sources).fingerprint
    assert torch.equal(a.x_test, b.x_test)
    png = sorted((tmp_path / "m" / "3").iterdir())[0]
    png.write_bytes(sorted((tmp_path / "m" / "4").iterdir())[0].read_bytes())
    assert load(spec, tmp_path).fingerprint != a.fingerprint


def test_parquet_with_schema_equals_the_embedded_table(sources: Path) -> None:
    spec = {
        "kind": "parquet",
        "path": "bc.parquet",
        "label": "diagnosis",
        "classes": ["malignant", "benign"],
        "schema": "breast_cancer",
    }
    d, ref = load(spec, sources), load_breast_cancer()
    assert isinstance(d, Dataset) and d.classes == ("malignant", "benign")
    assert torch.equal(d.y_test, ref.y_test)
    assert torch.allclose(d.x_test, ref.x_test, atol=1e-6)
    assert load(spec, sources).fingerprint == d.fingerprint


def test_csv_table_arrays_manifest_and_text_csv(sources: Path, tmp_path: Path) -> None:
    df = pd.read_parquet(sources / "bc.parquet")
    df.to_csv(tmp_path / "bc.csv", index=False)
    t = load(
        {"kind": "csv", "path": "bc.csv", "label": "diagnosis", "schema": "breast_cancer"}, tmp_path
    )
    assert t.classes == ("benign", "malignant") and t.input_shape == (32,)  # sorted by default
    x = np.random.default_rng(0).integers(0, 256, (40, 1, 4, 4)).astype(np.uint8)
    y = np.arange(40) % 4
    np.savez_compressed(tmp_path / "a.npz", x=x, y=y)
    a = load({"kind": "arrays", "path": "a.npz"}, tmp_path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    b = load({"kind": "arrays", "x": "x.npy", "y": "y.npy"}, tmp_path)
    assert torch.equal(a.x_test, b.x_test) and a.num_classes == 4
    total = float(a.x_train.double().sum() + a.x_test.double().sum())
    assert total == pytest.approx(x.sum() / 255.0, rel=1e-6)  # every row once, uint8 / 255
    rows = ["path,label,split"]
    for i, png in enumerate(sorted((sources / "mnist").rglob("*.png"))):
        rows.append(
            f"{png.relative_to(sources).as_posix()},{png.parent.name},{'test' if i % 4 == 0 else 'train'}"
        )
    (sources / "manifest.csv").write_text("\n".join(rows) + "\n")
    m = load(
        {
            "kind": "image-manifest",
            "path": "manifest.csv",
            "size": [28, 28],
            "split_column": "split",
        },
        sources,
    )
    assert len(m.x_test) == 30 and m.describe()["source"]["split"] == "source"  # type: ignore[index]
    with (tmp_path / "t.csv").open("w", encoding="utf-8") as fh:
        fh.write('text,label\n"héllo, world",a\nbye,b\nhi,a\nyo,b\n')
    txt = load({"kind": "text-csv", "path": "t.csv"}, tmp_path, test_fraction=0.5)
    assert isinstance(txt, TextDataset) and sorted(txt.texts_train + txt.texts_test)[0] == "bye"


def test_hf_saved(sources: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip(
        "datasets",
        reason="hf-saved needs the optional `datasets` package: pip install 'robustops[hf]'",
    )
    rows = [json.loads(line) for line in (sources / "sms.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "hf"))
    d = load({"kind": "hf-saved", "path": "hf", "text": "text"}, tmp_path)
    assert isinstance(d, TextDataset) and d.classes == ("ham", "spam") and len(d.texts_test) == 16
    dd = datasets.DatasetDict({"train": ds.select(range(60)), "test": ds.select(range(60, 80))})
    dd.save_to_disk(str(tmp_path / "hf2"))
    d2 = load({"kind": "hf-saved", "path": "hf2", "text": "text"}, tmp_path)
    assert len(d2.texts_test) == 20 and d2.describe()["source"]["split"] == "source"  # type: ignore[index]


# ---------------------------------------------------------------------------- bad data


def _bad_csv(tmp_path: Path, body: str) -> str:
    (tmp_path / "t.csv").write_text("a,b,label\n" + body)
    return "t.csv"


@pytest.mark.parametrize(
    ("body", "kw", "message"),
    [
        (
            "1,2,x\n3,nan,y\n1,2,x\n3,4,y\n",
            {},
            r"t\.csv: row 1 \(line 3\), column 'b': value is missing",
        ),
        ("1,2,x\n3,inf,y\n1,2,x\n3,4,y\n", {}, r"row 1 \(line 3\), column 'b'"),
        (
            "1,2,x\n3,zz,y\n1,2,x\n3,4,y\n",
            {},
            r"row 1 \(line 3\), column 'b': 'zz' is not a number",
        ),
        ("1,2,x\n3,4,z\n", {"classes": ["x", "y"]}, r"row 1 \(line 3\): label 'z' is not one of"),
        ("1,2,x\n3,4,x\n", {"classes": ["x", "y"]}, r"class\(es\) \['y'\] have no sample"),
        ("1,2,x\n3,4,y\n", {"features": ["a", "c"]}, r"missing column\(s\) \['c'\]"),
    ],
)
def test_bad_tables_name_file_and_row(
    tmp_path: Path, body: str, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataIntegrityError, match=message):
        load({"kind": "csv", "path": _bad_csv(tmp_path, body), **kw}, tmp_path, test_fraction=0.5)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (300, "mean area", 9000.0, r"value 9000 is outside the range \[140, 2600\]"),
        (301, "mean texture", 20.5, r"value 20\.5 is not on the integer grid 9 \+ k \* 1"),
        (302, "mean symmetry grade: high", 0.5, r"one-hot group 'mean symmetry grade' must have"),
        (303, "worst area", float("nan"), r"value is missing, NaN or infinite"),
    ],
)
def test_schema_violations_in_a_parquet_table_name_the_row_and_column(
    sources: Path, tmp_path: Path, row: int, column: str, value: float, message: str
) -> None:
    """The first row breaking the schema is named, whatever the chunking (three chunks)."""
    df = pd.read_parquet(sources / "bc.parquet")
    assert column in df.columns
    df.loc[row, column] = value
    df.loc[row + 100, "mean area"] = -1.0  # a later row breaking it too is not the one named
    df.to_parquet(tmp_path / "bad.parquet")
    spec = {
        "kind": "parquet",
        "path": "bad.parquet",
        "label": "diagnosis",
        "schema": "breast_cancer",
        "chunk_rows": 256,
    }
    name = "mean symmetry grade" if "grade" in column else column  # a group is named as one
    with pytest.raises(DataIntegrityError) as err:
        load(spec, tmp_path)
    assert re.search(rf"bad\.parquet: row {row}, column '{name}': ", str(err.value))
    assert re.search(message, str(err.value))


def test_table_labels_missing_or_outside_the_classes_name_the_row(tmp_path: Path) -> None:
    """Labels are checked per distinct value; the first row concerned is still the one named,
    for string, integer (nullable too) and float label columns."""
    base = pd.DataFrame({"a": np.arange(8.0), "b": np.ones(8)})
    cases = [
        (["x", "y", "x", "y", None, "y", "", "x"], {}, r"row 4: the label is missing"),
        (["x", "y", "x", "y", "x", "y", "z", "z"], {"classes": ["x", "y"]}, r"row 6: label 'z'"),
        (pd.array([0, 1, 0, 1, 0, None, 1, 0], dtype="Int64"), {}, r"row 5: the label is missing"),
        ([0.0, 1.0, 0.0, 1.0, 2.5, 1.0, 0.0, 1.0], {"classes": ["0", "1"]}, r"row 4: label '2\.5'"),
        ([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, float("inf")], {}, r"row 7: the label is missing"),
        ([1, 1, 1, 1, 1, 1, 1, 1], {}, r"needs at least 2 classes, found \['1'\]"),
    ]
    for labels, kw, message in cases:
        df = base.assign(label=labels)
        df.to_parquet(tmp_path / "t.parquet")
        with pytest.raises(DataIntegrityError, match=message):
            load({"kind": "parquet", "path": "t.parquet", **kw}, tmp_path, test_fraction=0.5)
    df = base.assign(label=[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # integral floats: 0 and 1
    df.to_parquet(tmp_path / "f.parquet")
    d = load({"kind": "parquet", "path": "f.parquet"}, tmp_path, test_fraction=0.5)
    assert (
        d.classes == ("0", "1")
        and sorted(d.y_train.tolist() + d.y_test.tolist()) == [0] * 4 + [1] * 4
    )


def test_parquet_columns_of_any_numeric_type_read_as_pandas_reads_them(tmp_path: Path) -> None:
    """Integer and floating Parquet columns are read from the Arrow buffers; others (bool,
    nulls) through pandas: the same values either way, and a null is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 40
    rng = np.random.default_rng(0)
    cols = {
        "i64": pa.array(rng.integers(-5, 5, n)),
        "u8": pa.array(rng.integers(0, 255, n).astype(np.uint8)),
        "f32": pa.array(rng.random(n).astype(np.float32)),
        "f64": pa.array(rng.random(n)),
        "flag": pa.array([bool(i % 3) for i in range(n)]),
    }
    pq.write_table(pa.table({**cols, "label": ["a", "b"] * (n // 2)}), tmp_path / "t.parquet")
    d = load({"kind": "parquet", "path": "t.parquet", "chunk_rows": 16}, tmp_path)
    want = pd.read_parquet(tmp_path / "t.parquet")[list(cols)].to_numpy(np.float64)
    x, w = torch.cat([d.x_train, d.x_test]).numpy(), want.astype(np.float32)
    assert x.shape == (n, 5) and np.array_equal(x[np.lexsort(x.T)], w[np.lexsort(w.T)])
    cols["f64"] = pa.array([None if i == 21 else 0.5 for i in range(n)], pa.float64())
    pq.write_table(pa.table({**cols, "label": ["a", "b"] * (n // 2)}), tmp_path / "t.parquet")
    with pytest.raises(DataIntegrityError, match=r"row 21, column 'f64': value is missing"):
        load({"kind": "parquet", "path": "t.parquet", "chunk_rows": 16}, tmp_path)


def test_bad_images_and_texts_name_file_and_line(sources: Path, tmp_path: Path) -> None:
    shutil.copytree(sources / "mnist", tmp_path / "m")
    spec = {"kind": "image-folder", "path": "m", "size": [28, 28]}
    (tmp_path / "m" / "5" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataIntegrityError, match=r"broken\.png: not a decodable image"):
        load(spec, tmp_path)
    (tmp_path / "m" / "5" / "broken.png").unlink()
    (tmp_path / "m" / "10").mkdir()
    with pytest.raises(DataIntegrityError, match="class folder '10' has no image"):
        load(spec, tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"text": "ok", "label": "a"}\n{"text": "\xff", "label": "b"}\n'
    )
    with pytest.raises(DataIntegrityError, match=r"bad\.jsonl: line 2 is not valid UTF-8"):
        load({"kind": "jsonl", "path": "bad.jsonl"}, tmp_path)
    (tmp_path / "bad.csv").write_bytes(b"text,label\nok,a\n\xe9t\xe9,b\n")
    with pytest.raises(DataIntegrityError, match=r"bad\.csv: line 3 is not valid UTF-8"):
        load({"kind": "text-csv", "path": "bad.csv"}, tmp_path)
    (tmp_path / "nolabel.jsonl").write_text('{"text": "ok"}\n')
    with pytest.raises(DataIntegrityError, match=r"line 1: missing key\(s\) \['label'\]"):
        load({"kind": "jsonl", "path": "nolabel.jsonl"}, tmp_path)


def test_bad_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 3, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataIntegrityError, match=r"shape\.npz\[x\]: inputs must be"):
        load({"kind": "arrays", "path": "shape.npz"}, tmp_path)
    x = np.zeros((4, 1, 2, 2), dtype=np.float32)
    x[2, 0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataIntegrityError, match=r"nan\.npz\[x\]: row 2: values are NaN"):
        load({"kind": "arrays", "path": "nan.npz"}, tmp_path, test_fraction=0.5)
    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    np.save(tmp_path / "y.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataIntegrityError, match="pickle, which is never loaded"):
        load({"kind": "arrays", "x": "x.npy", "y": "y.npy"}, tmp_path)
    np.savez(tmp_path / "lab.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 5, 1]))
    with pytest.raises(DataIntegrityError, match=r"row 2: label 5 is outside the classes 0…1"):
        load({"kind": "arrays", "path": "lab.npz", "classes": ["a", "b"]}, tmp_path)


# ---------------------------------------------------------------------------- spec


def test_spec_errors_carry_field_paths(tmp_path: Path) -> None:
    base = {"name": "t", "model": {"factory": "robustops.models:mlp"}}
    cases = [
        ({"source": {"kind": "image-folder", "path": "x"}}, "data.source.image-folder.size"),
        ({"source": {"kind": "pdf", "path": "x"}}, "data.source"),
        ({"source": {"kind": "arrays", "x": "x.npy"}}, "data.source.arrays"),
        ({"name": "nope"}, "data.name"),
    ]
    for data, path in cases:
        with pytest.raises(SpecError) as exc:
            load_spec(write_spec(tmp_path, {**base, "data": data}))
        assert any(p == path for p, _ in exc.value.errors), exc.value.errors
    bad_norm = {**base, "model": {**base["model"], "normalize": {"mean": [0.5], "std": [0.0]}}}
    with pytest.raises(SpecError, match=r"model\.normalize\.std\.0"):
        load_spec(write_spec(tmp_path, bad_norm))
    assert DataSpec().label == "mnist_subset" and DataSpec().modality == "tensor"
    spec = load_spec(
        write_spec(tmp_path, {**base, "data": {"source": {"kind": "jsonl", "path": "d/t.jsonl"}}})
    )
    assert spec.data.modality == "text" and spec.data.label == "jsonl"
    assert (
        spec.data.source is not None
        and spec.data.source.path == (tmp_path / "d" / "t.jsonl").resolve()
    )  # type: ignore[union-attr]


def test_normalized_model_sees_standardised_inputs() -> None:
    inner = mlp(input_dim=3, hidden=[4], num_classes=2)
    wrapped = Normalized(inner, [0.5, 0.25, 0.0], [0.5, 0.5, 2.0])
    x = torch.rand(5, 3)
    expect = inner((x - torch.tensor([0.5, 0.25, 0.0])) / torch.tensor([0.5, 0.5, 2.0]))
    assert torch.allclose(wrapped(x), expect)
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in inner.state_dict()}
    img = Normalized(torch.nn.Flatten(), [0.1, 0.2], [1.0, 2.0])(torch.ones(1, 2, 2, 2))
    assert torch.allclose(img, torch.tensor([[0.9] * 4 + [0.4] * 4]))
