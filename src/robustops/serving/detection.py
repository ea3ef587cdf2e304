"""The guard's attack-in-progress detection: a
:class:`~robustops.defenses.detection.QueryDetector` per worker, fed every input of every
validated batch under the request's API key name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from torch import Tensor

from robustops.defenses.detection import DetectionPolicy, DetectorConfig, QueryDetector
from robustops.io import atomic_write_bytes
from robustops.serving.config import DetectionConfig
from robustops.serving.validation import Batch

_GUARD_ACTION = {
    "allow": "ok",
    "log": "log",
    "flag": "flag",
    "throttle": "throttle",
    "block": "block",
}


def detector_secret(state_dir: str | Path) -> bytes:
    """The fingerprint hash key: 32 random bytes in ``<state_dir>/detector.secret`` (mode
    0600), made on first use, so fingerprints cannot be precomputed from outside."""
    path = Path(state_dir) / "detector.secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # another worker made it first
            atomic_write_bytes(path, os.urandom(32), mode=0o600, exclusive=True)
        return path.read_bytes()


class GuardDetector:
    """Runs every input of a batch through the detector; the batch's action is the most
    severe of its inputs', its reasons those of that input."""

    def __init__(self, config: DetectionConfig, secret: bytes, modality: str) -> None:
        policy = DetectionPolicy(
            log_at=config.log_at,
            flag_at=config.flag_at,
            throttle_at=config.throttle_at,
            block_at=config.block_at,
            hold_seconds=config.hold_seconds,
        )
        self.detector = QueryDetector(
            DetectorConfig(
                quantization_step=config.quantization_step,
                window=config.window,
                history=config.history,
                max_keys=config.max_keys,
                policy=policy,
            ),
            secret=secret,
        )
        self.text = modality == "text"

    def observe(self, key: str, batch: Batch, embedding: Tensor | None) -> tuple[str, list[str]]:
        """See :class:`robustops.serving.guard.Detector`."""
        worst = None
        for i in range(batch.n):
            item = batch.raw[i]
            d = (
                self.detector.observe_text(key, str(item))
                if self.text
                else self.detector.observe(key, item.numpy() if isinstance(item, Tensor) else item)
            )
            if worst is None or d.severity > worst.severity:
                worst = d
        assert worst is not None
        reasons = [f"{r} ({worst.matches} near-duplicates)" for r in worst.reasons]
        return _GUARD_ACTION[worst.action], reasons
