from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from robustops.errors import SpecError, UnsafeArtifactError
from robustops.models import as_classifier, build_model, mlp, model_sha256, save_weights, small_cnn


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = small_cnn(seed=3)
    sha = save_weights(model, tmp_path / "m.safetensors", metadata={"note": "x"})
    loaded = build_model(
        "robustops.models:small_cnn", {"seed": 9}, tmp_path / "m.safetensors", sha256=sha
    )
    assert model_sha256(loaded) == model_sha256(model)
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    torch.save(small_cnn().state_dict(), path)  # zip+pickle, whatever the suffix says
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        build_model("robustops.models:small_cnn", {}, path)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        build_model("robustops.models:small_cnn", {}, raw)


def test_hash_mismatch_and_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_weights(small_cnn(), path)
    with pytest.raises(UnsafeArtifactError, match="sha256"):
        build_model("robustops.models:small_cnn", {}, path, sha256="0" * 64)
    with pytest.raises(SpecError, match=r"model\.weights"):
        build_model("robustops.models:mlp", {}, path)


@pytest.mark.parametrize(
    ("factory", "kwargs", "field"),
    [
        ("robustops.models.small_cnn", {}, "model.factory"),
        ("no_such_module:f", {}, "model.factory"),
        ("robustops.models:nope", {}, "model.factory"),
        ("robustops.models:small_cnn", {"colour": 1}, "model.kwargs"),
        ("robustops.models:as_classifier", {"model": 1}, None),
    ],
)
def test_factory_errors(factory: str, kwargs: dict[str, object], field: str | None) -> None:
    with pytest.raises((SpecError, TypeError)) as info:
        build_model(factory, kwargs)
    if field is not None:
        assert isinstance(info.value, SpecError)
        assert info.value.errors[0][0] == field


def test_predict_proba_adapter() -> None:
    from sklearn.linear_model import LogisticRegression

    x = torch.rand(40, 1, 2, 2)
    y = (x.flatten(1).sum(1) > 2).long()
    clf = LogisticRegression().fit(x.flatten(1).numpy(), y.numpy())
    wrapped = as_classifier(clf)
    out = wrapped(x)
    assert out.shape == (40, 2)
    assert torch.allclose(out.exp().sum(1), torch.ones(40), atol=1e-5)
    assert getattr(wrapped, "differentiable", True) is False
    assert as_classifier(mlp()) is not None


def test_header_length_starting_with_0x80_is_not_taken_for_pickle(tmp_path: Path) -> None:
    """A safetensors header length whose low byte is 0x80 once made the loader refuse the file."""
    model = small_cnn(seed=0)
    path = tmp_path / "m.safetensors"
    for pad in range(0, 400, 8):
        save_weights(model, path, metadata={"pad": " " * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    loaded = build_model("robustops.models:small_cnn", {}, path)
    assert model_sha256(loaded) == model_sha256(model)
