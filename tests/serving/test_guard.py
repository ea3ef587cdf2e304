"""The guard's request path in-process: validation, detection, temperature and abstention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustops.serving.config import DetectionConfig, ServeConfig
from robustops.serving.detection import GuardDetector, detector_secret
from robustops.serving.guard import Guard
from robustops.serving.model import ServedModel, module_logits
from robustops.serving.validation import InvalidRequest


def _served() -> ServedModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return ServedModel(
        name="tiny",
        modality="image",
        logits=module_logits(net),
        num_classes=10,
        input_shape=(1, 8, 8),
        temperature=2.0,
    )


def test_validation_names_the_field() -> None:
    guard = Guard(_served(), ServeConfig())
    with pytest.raises(InvalidRequest) as bad:
        guard.parse({"inputs": [[[0.5] * 8] * 8] * 2})  # (2, 8, 8): no channel axis
    assert bad.value.errors[0]["loc"] == ["body", "inputs"]
    with pytest.raises(InvalidRequest) as outside:
        guard.parse({"inputs": [[[[0.5] * 8] * 8], [[[1.5] * 8] * 8]]})
    assert outside.value.errors[0]["loc"] == ["body", "inputs", 1]
    with pytest.raises(InvalidRequest) as field:
        guard.parse({"texts": ["hi"]})
    assert field.value.errors[0]["loc"] == ["body", "texts"]


def test_confidence_is_temperature_scaled() -> None:
    served = _served()
    guard = Guard(served, ServeConfig(detection=DetectionConfig(enabled=False)))
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = guard.handle("k", guard.parse({"inputs": x.tolist()}))
    expected = torch.softmax(served.logits(x) / 2.0, dim=1).max(dim=1)
    assert [p.label for p in out.predictions] == expected.indices.tolist()
    got = torch.tensor([p.confidence for p in out.predictions])
    assert torch.allclose(got, expected.values, atol=1e-6)


def test_repeated_near_duplicates_escalate_per_key(tmp_path: Path) -> None:
    served = _served()
    # 8x8 inputs: windows of 4 values (the default 20 suits 28x28 images and larger).
    cfg = DetectionConfig(flag_at=5, throttle_at=12, block_at=20, window=4)
    guard = Guard(
        served,
        ServeConfig(detection=cfg),
        detector=GuardDetector(cfg, detector_secret(tmp_path), "image"),
    )
    gen = torch.Generator().manual_seed(2)
    base = torch.rand(1, 1, 8, 8, generator=gen)
    actions = []
    for _ in range(25):  # Square-like probes: the same image with one 2x2 patch redrawn
        probe = base.clone()
        r, c = torch.randint(0, 7, (2,), generator=gen).tolist()
        probe[..., r : r + 2, c : c + 2] = torch.rand(2, 2, generator=gen)
        actions.append(guard.handle("attacker", guard.parse({"inputs": probe.tolist()})).action)
    assert actions[0] == "ok" and "flag" in actions and actions[-1] == "block"
    benign = [
        guard.handle(
            "honest", guard.parse({"inputs": torch.rand(1, 1, 8, 8, generator=gen).tolist()})
        )
        for _ in range(25)
    ]
    assert {o.action for o in benign} == {"ok"}
    # The secret persists for the next worker or restart, owner-only.
    assert detector_secret(tmp_path) == detector_secret(tmp_path)
    assert (tmp_path / "detector.secret").stat().st_mode & 0o077 == 0
