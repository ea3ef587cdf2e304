"""The data-source cache: a hit gives the same tensors and fingerprint as decoding, content
edits that keep the size and the mtime miss, corrupt entries are rebuilt, and it can be turned
off."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter

from robustops.data import Dataset, DataSource, fingerprint_files, load_source
from robustops.data.cache import DataCache, cache_from_env
from robustops.errors import DataIntegrityError

_SOURCE = TypeAdapter(DataSource)
FOLDER = {"kind": "image-folder", "path": "m", "size": [28, 28]}
TABLE = {
    "kind": "parquet",
    "path": "bc.parquet",
    "label": "diagnosis",
    "classes": ["malignant", "benign"],
    "schema": "breast_cancer",
}


def load(spec: dict[str, Any], base: Path, cache: Any = None) -> tuple[Dataset, str]:
    report: dict[str, Any] = {}
    d = load_source(
        _SOURCE.validate_python(spec).resolved(base), name="t", cache=cache, report=report
    )
    assert isinstance(d, Dataset)
    return d, report["cache"]


def same(a: Dataset, b: Dataset) -> bool:
    return (
        a.fingerprint == b.fingerprint
        and a.source == b.source
        and a.classes == b.classes
        and all(
            torch.equal(getattr(a, k), getattr(b, k))
            for k in ("x_train", "x_test", "y_train", "y_test")
        )
    )


@pytest.fixture
def data(sources: Path, tmp_path: Path) -> Path:
    """A private copy of the session's sources (these tests edit files)."""
    shutil.copytree(sources / "mnist", tmp_path / "m")
    shutil.copy(sources / "bc.parquet", tmp_path / "bc.parquet")
    return tmp_path


@pytest.mark.parametrize("spec", [FOLDER, TABLE], ids=["image-folder", "parquet"])
def test_hit_gives_the_same_tensors_and_fingerprint(
    spec: dict[str, Any], data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    plain, s0 = load(spec, data, cache=False)
    first, s1 = load(spec, data, cache=cache)
    second, s2 = load(spec, data, cache=cache)
    assert (s0, s1, s2) == ("off", "miss", "hit")
    assert same(plain, first) and same(plain, second)
    assert len(list(cache.glob("*.safetensors"))) == 1
    # another split of the same files comes from the same entry
    src = _SOURCE.validate_python(spec).resolved(data)
    report: dict[str, Any] = {}
    resplit = load_source(src, name="t", seed=7, cache=cache, report=report)
    assert report["cache"] == "hit" and not torch.equal(resplit.x_test, plain.x_test)
    assert same(resplit, load_source(src, name="t", seed=7, cache=False))  # type: ignore[arg-type]


def test_manifest_hits_and_keeps_the_fingerprint(data: Path, tmp_path: Path) -> None:
    rows = ["path,label"] + [
        f"m/{c}/{p.name},{c}" for c in "01" for p in sorted((data / "m" / c).iterdir())
    ]
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    spec = {"kind": "image-manifest", "path": "manifest.csv", "size": [28, 28]}
    plain, _ = load(spec, data, cache=False)
    assert load(spec, data, cache=tmp_path / "c")[1] == "miss"
    hit, status = load(spec, data, cache=tmp_path / "c")
    assert status == "hit" and same(plain, hit)
    csv = data / "manifest.csv"
    imgs = [(f"images/{r.split(',')[0]}", data / r.split(",")[0]) for r in rows[1:]]
    assert hit.fingerprint == fingerprint_files([("manifest", csv), *imgs])


def _forge(path: Path, content: bytes) -> None:
    """Rewrite ``path`` with ``content`` (same length) and put its times back."""
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_same_size_and_forged_mtime_edit_of_an_image_is_detected(
    data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    before, _ = load(FOLDER, data, cache=cache)
    assert load(FOLDER, data, cache=cache)[1] == "hit"
    # swap the pixel bytes of one PNG for another image of the same file size
    pngs = sorted((data / "m").rglob("*.png"))
    by_size: dict[int, list[Path]] = {}
    for p in pngs:
        by_size.setdefault(p.stat().st_size, []).append(p)
    a, b = next(
        v for v in by_size.values() if len(v) >= 2 and v[0].read_bytes() != v[1].read_bytes()
    )[:2]
    _forge(a, b.read_bytes())
    after, status = load(FOLDER, data, cache=cache)
    assert status == "miss" and after.fingerprint != before.fingerprint
    assert same(after, load(FOLDER, data, cache=False)[0])  # the edited pixels, not the cached


def test_same_size_and_forged_mtime_edit_of_a_table_is_detected(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = data / "bc.parquet"
    df = pd.read_parquet(path)
    # plain encoding, no compression: each float64 value is 8 bytes of the file as they are
    df.to_parquet(path, compression=None, use_dictionary=False, index=False)
    before, _ = load(TABLE, data, cache=cache)
    assert load(TABLE, data, cache=cache)[1] == "hit"
    raw = path.read_bytes()
    col = df.columns[0]
    row = next(
        i
        for i in range(len(df))
        if raw.count(np.float64(df[col][i]).tobytes()) == 1 and df[col][i] != df[col][i + 1]
    )
    old, new = (np.float64(df[col][k]).tobytes() for k in (row, row + 1))
    _forge(path, raw.replace(old, new))  # one value changed in place, within the column's range
    after, status = load(TABLE, data, cache=cache)
    assert status == "miss" and after.fingerprint != before.fingerprint
    assert same(after, load(TABLE, data, cache=False)[0])
    all_after = torch.cat([after.x_train, after.x_test])
    assert not torch.equal(all_after, torch.cat([before.x_train, before.x_test]))


def test_corrupt_entry_is_rejected_and_rebuilt(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    plain, _ = load(FOLDER, data, cache=cache)
    (entry,) = cache.glob("*.safetensors")
    raw = bytearray(entry.read_bytes())
    raw[-100] ^= 0xFF  # one flipped bit pattern in the pixels
    entry.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="robustops.data.cache"):
        again, status = load(FOLDER, data, cache=cache)
    assert status == "miss" and same(plain, again)
    assert "corrupt" in caplog.text
    assert load(FOLDER, data, cache=cache)[1] == "hit"  # rebuilt
    for damage in (b"", b"\x08\0\0\0\0\0\0\0{}", entry.read_bytes()[:-10]):
        entry.write_bytes(damage)
        rebuilt, status = load(FOLDER, data, cache=cache)
        assert status == "miss" and same(plain, rebuilt)


def test_cache_off_by_option_and_by_environment(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "env-cache"
    monkeypatch.setenv("ROBUSTOPS_DATA_CACHE_DIR", str(root))
    assert load(FOLDER, data, cache=False)[1] == "off" and not root.exists()
    for off in ("0", "off", "false"):
        monkeypatch.setenv("ROBUSTOPS_DATA_CACHE", off)
        assert load(FOLDER, data)[1] == "off" and load(TABLE, data)[1] == "off"
        assert cache_from_env() is None
    assert not root.exists()
    monkeypatch.delenv("ROBUSTOPS_DATA_CACHE")
    assert load(FOLDER, data)[1] == "miss" and load(FOLDER, data)[1] == "hit"
    assert len(list(root.glob("*.safetensors"))) == 1


def test_default_folder_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBUSTOPS_DATA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    c = cache_from_env()
    assert c is not None and c.root == tmp_path / "robustops" / "data"


def test_unwritable_cache_costs_only_the_speed_up(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot make a folder inside a file
    with caplog.at_level(logging.WARNING, logger="robustops.data.cache"):
        d, status = load(FOLDER, data, cache=blocker / "cache")
    assert status == "miss" and same(d, load(FOLDER, data, cache=False)[0])
    assert "cannot write" in caplog.text


def test_prune_keeps_the_folder_under_its_limit(tmp_path: Path) -> None:
    c = DataCache(tmp_path, max_bytes=3000)
    for i in range(4):
        c.put(f"k{i}", "0" * 64, {"x": np.full(1000, i, np.uint8)}, {})
        os.utime(c.path(f"k{i}"), (i, i))  # k0 oldest
    left = sorted(p.stem for p in tmp_path.glob("*.safetensors"))
    assert left == ["k2", "k3"]
    assert c.get("k3") is not None and c.get("k0") is None
    assert not c.put("big", "0" * 64, {"x": np.zeros(4000, np.uint8)}, {})


def test_threaded_decoding_gives_the_same_result(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = load(FOLDER, data, cache=False)
    monkeypatch.setenv("ROBUSTOPS_DATA_THREADS", "3")
    threaded, _ = load(FOLDER, data, cache=False)  # read, hash and decode in the pool
    first, status = load(FOLDER, data, cache=tmp_path / "c")  # kept bytes decoded in the pool
    assert status == "miss" and same(one, threaded) and same(one, first)
    bad = sorted((data / "m" / "5").iterdir())[3]
    bad.write_bytes(b"not a png")
    with pytest.raises(DataIntegrityError, match=f"{bad.name}: not a decodable image"):
        load(FOLDER, data, cache=False)


def test_large_sets_are_read_again_and_must_not_change_meanwhile(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustops.data import loaders

    plain, _ = load(FOLDER, data, cache=False)
    monkeypatch.setattr(loaders, "_KEEP_BYTES", 0)  # nothing kept: decoding reads again
    reread, status = load(FOLDER, data, cache=tmp_path / "a")
    assert status == "miss" and same(plain, reread)
    real = loaders._read_and_hash
    victim = sorted((data / "m" / "2").iterdir())[0]

    def then_edit(*args: Any) -> Any:
        out = real(*args)
        victim.write_bytes(sorted((data / "m" / "7").iterdir())[0].read_bytes())
        return out

    monkeypatch.setattr(loaders, "_read_and_hash", then_edit)
    with pytest.raises(DataIntegrityError, match="changed while they were read"):
        load(FOLDER, data, cache=tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.safetensors"))  # nothing cached from it


def test_a_bad_size_limit_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTOPS_DATA_CACHE_MAX_GB", "lots")
    c = cache_from_env()
    assert c is not None and c.max_bytes == 5 << 30
    monkeypatch.setenv("ROBUSTOPS_DATA_CACHE_MAX_GB", "0.5")
    c = cache_from_env()
    assert c is not None and c.max_bytes == 1 << 29
