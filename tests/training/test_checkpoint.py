"""Checkpoints: safetensors + JSON sidecar, optimizer state round trip, tampering refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustops.errors import UnsafeArtifactError
from robustops.training import latest_checkpoint, read_checkpoint, write_checkpoint
from robustops.training.checkpoint import model_state, optimizer_from_tensors

from .conftest import tiny_mlp


def _stepped(opt_name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = tiny_mlp()
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=1e-2)
        if opt_name == "adam"
        else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    )
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return model, opt


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_round_trip_continues_identically(tmp_path: Path, opt_name: str) -> None:
    model, opt = _stepped(opt_name)
    gen = torch.Generator().manual_seed(5)
    side = write_checkpoint(
        tmp_path, "epoch-0001", model, opt, {"train": gen.get_state()}, {"epoch": 1}
    )
    assert len(side["sha256"]) == 64 and side["epoch"] == 1
    meta, tensors = read_checkpoint(tmp_path / "epoch-0001.json")
    assert tensors["rng.train"].dtype == torch.uint8

    model2, opt2 = _stepped(opt_name)  # same construction, then overwritten
    model2.load_state_dict(model_state(tensors))
    optimizer_from_tensors(opt2, tensors, meta["optimizer"])
    gen2 = torch.Generator()
    gen2.set_state(tensors["rng.train"])

    x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    x2, y2 = torch.rand(16, 1, 8, 8, generator=gen2), torch.randint(0, 10, (16,), generator=gen2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()  # type: ignore[no-untyped-call]
        o.step()
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_tampered_or_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    model, opt = _stepped("adam")
    write_checkpoint(tmp_path, "epoch-0001", model, opt, {}, {"epoch": 1})
    weights = tmp_path / "epoch-0001.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UnsafeArtifactError, match="sha256"):
        read_checkpoint(tmp_path / "epoch-0001.json")

    torch.save(model.state_dict(), weights)  # a pickle under the expected name
    side = json.loads((tmp_path / "epoch-0001.json").read_text())
    from robustops._util import file_sha256

    side["sha256"] = file_sha256(weights)  # even with a matching hash
    (tmp_path / "epoch-0001.json").write_text(json.dumps(side))
    with pytest.raises(UnsafeArtifactError, match="safetensors"):
        read_checkpoint(tmp_path / "epoch-0001.json")


def test_latest_ignores_incomplete(tmp_path: Path) -> None:
    model, opt = _stepped("adam")
    write_checkpoint(tmp_path, "epoch-0001", model, opt, {}, {"epoch": 1})
    write_checkpoint(tmp_path, "epoch-0002", model, opt, {}, {"epoch": 2})
    (tmp_path / "epoch-0003.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "epoch-0004.json").write_text("{}")  # sidecar without weights
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "epoch-0002.json"
