"""``data.extra_train``: reviewed samples appended to the training split only, pinned by sha256,
with their lineage in the training sidecar, the checkpoints and the registry version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robustops.cli import app
from robustops.config import load_spec
from robustops.data import load_digits
from robustops.data.extra import ExtraTrainData, add_extra_train
from robustops.data.sms_spam import TextDataset
from robustops.errors import SpecError
from robustops.registry.lineage import lineage
from robustops.registry.service import Registry
from robustops.runner import register_trained, train_spec, training_dataset
from spec_helpers import digits_mlp, write_spec


def _npz(path: Path, n: int, *, label: int = 7, shape: tuple[int, ...] = (1, 8, 8)) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((n, *shape)).astype(np.float32), y=np.full(n, label, np.int64))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _spec(tmp_path: Path, extra: list[dict[str, str]]) -> Path:
    train = {"epochs": 1, "batch_size": 128, "lr": 0.005, "out": "w/mlp.safetensors"}
    return write_spec(
        tmp_path, digits_mlp(data={"name": "digits", "extra_train": extra}, train=train)
    )


def test_training_appends_extra_samples_and_records_lineage(tmp_path: Path) -> None:
    sha = _npz(tmp_path / "reviewed.npz", 6)
    base = load_digits()
    spec_path = _spec(tmp_path, [{"path": "reviewed.npz", "sha256": sha}])
    spec = load_spec(spec_path)

    data = training_dataset(spec)
    assert data.x_train.shape[0] == base.x_train.shape[0] + 6
    assert torch.equal(data.x_test, base.x_test) and torch.equal(data.y_test, base.y_test)
    assert data.fingerprint == base.fingerprint  # results stay comparable by the gate
    assert data.y_train[-6:].tolist() == [7] * 6

    side = train_spec(spec)
    d = side["data"]
    assert d["n_train"] == base.x_train.shape[0] + 6 and d["n_test"] == base.x_test.shape[0]
    (rec,) = d["extra_train"]
    assert rec["sha256"] == sha and rec["n"] == 6 and rec["class_counts"][7] == 6
    assert rec["path"] == str((tmp_path / "reviewed.npz").resolve())
    written = json.loads(Path(str(spec.train.out) + ".json").read_text())  # type: ignore[union-attr]
    assert written["data"]["extra_train"][0]["sha256"] == sha

    home = tmp_path / "reg"
    reg = Registry.open(home)
    reg.add_principal("root", "root", "admin")
    reg.close()
    ref = register_trained(spec, spec_path, side, home=home, actor="root")
    reg = Registry.open(home)
    try:
        version = lineage(reg, ref)["version"]
    finally:
        reg.close()
    assert version["data"]["extra_train"][0]["sha256"] == sha
    assert version["data_fingerprint"] == base.fingerprint
    shown = CliRunner().invoke(app, ["registry", "show", ref, "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert f"extra train data {tmp_path.name} {sha} (n=6)" in " ".join(shown.output.split())


def test_sha256_mismatch_names_the_field(tmp_path: Path) -> None:
    _npz(tmp_path / "reviewed.npz", 3)
    spec = load_spec(_spec(tmp_path, [{"path": "reviewed.npz", "sha256": "0" * 64}]))
    with pytest.raises(SpecError) as exc:
        training_dataset(spec)
    assert exc.value.errors[0][0] == "data.extra_train.0.sha256"
    assert "the spec pins " + "0" * 64 in exc.value.errors[0][1]


def test_malformed_pin_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(_spec(tmp_path, [{"path": "reviewed.npz", "sha256": "abc"}]))
    assert exc.value.errors[0][0] == "data.extra_train.0.sha256"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (64,)}, "the data's inputs are \\[1, 8, 8\\]"),
        ({"label": 10}, "label 10 is outside the classes 0…9"),
    ],
)
def test_samples_that_do_not_fit_are_refused(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    p = tmp_path / "r.npz"
    sha = _npz(p, 2, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=message) as exc:
        add_extra_train(load_digits(), [ExtraTrainData(path=p, sha256=sha)])
    assert exc.value.errors[0][0] == "data.extra_train.0.path"


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "r.npz"
    np.savez(p, x=np.array([object()] * 2, dtype=object), y=np.zeros(2, np.int64))
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(SpecError, match=r"not a readable \.npz"):
        add_extra_train(load_digits(), [ExtraTrainData(path=p, sha256=sha)])


def test_text_extras_from_jsonl(tmp_path: Path) -> None:
    data = TextDataset(
        name="t",
        texts_train=["hello", "win cash"],
        y_train=torch.tensor([0, 1]),
        texts_test=["hi"],
        y_test=torch.tensor([0]),
        classes=("ham", "spam"),
        fingerprint="f" * 64,
        split_seed=0,
        test_fraction=0.2,
    )
    p = tmp_path / "reviewed.jsonl"
    p.write_text('{"text": "fr\\u0435e prize", "label": "spam"}\n\n{"text": "ok", "label": 0}\n')
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    out = add_extra_train(data, [ExtraTrainData(path=p, sha256=sha)])
    assert out.texts_train == ["hello", "win cash", "fr\u0435e prize", "ok"]
    assert out.y_train.tolist() == [0, 1, 1, 0] and out.texts_test == ["hi"]
    assert out.describe()["extra_train"][0]["n"] == 2  # type: ignore[index]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "eggs"}\n')
    with pytest.raises(SpecError, match="line 1: label 'eggs'"):
        add_extra_train(
            data,
            [ExtraTrainData(path=bad, sha256=hashlib.sha256(bad.read_bytes()).hexdigest())],
        )
    with pytest.raises(SpecError, match=r"text data takes a \.jsonl"):
        npz = tmp_path / "x.npz"
        add_extra_train(data, [ExtraTrainData(path=npz, sha256=_npz(npz, 1))])
