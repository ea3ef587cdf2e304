"""The guard's request path without the web layer: validate, detect, predict, abstain.

:class:`Guard` is what the FastAPI app calls once authentication, the body-size cap and the
rate limit have let a request through; it can be used and tested on its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from robustops.serving.config import ServeConfig
from robustops.serving.model import ServedModel
from robustops.serving.validation import Batch, parse_body


class Detector(Protocol):
    """A stateful attack-in-progress detector: sees every validated batch of a key, says
    what to do (``ok``, ``log``, ``flag``, ``throttle``, ``block``) and why."""

    def observe(self, key: str, batch: Batch, embedding: Tensor | None) -> tuple[str, list[str]]:
        """The action for this batch of ``key`` and its reasons."""
        ...


class Abstainer(Protocol):
    """Decides per input whether to answer or abstain, from logits and features."""

    def decide(self, logits: Tensor, features: Tensor | None) -> list[list[str]]:
        """For each input, the reasons to abstain (empty: answer)."""
        ...


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: a label with its calibrated confidence, or an abstention."""

    decision: str  # "predict" or "abstain"
    label: int | None
    class_name: str | None
    confidence: float
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "decision": self.decision,
            "label": self.label,
            "class_name": self.class_name,
            "confidence": round(self.confidence, 6),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Outcome:
    """What the guard did with one request: the predictions, the detector's action and
    reasons, and the sha256 of the raw inputs (what the log records instead of them)."""

    predictions: list[Prediction]
    action: str
    flags: list[str] = field(default_factory=list)
    input_sha256: str = ""


def input_digest(batch: Batch) -> str:
    """sha256 of the raw inputs (tensor bytes, or the UTF-8 texts joined by NUL)."""
    h = hashlib.sha256()
    if isinstance(batch.raw, Tensor):
        h.update(batch.raw.contiguous().numpy().tobytes())
    else:
        h.update("\0".join(batch.raw).encode())
    return h.hexdigest()


class Guard:
    """Validate → detect → predict (temperature-scaled) → abstain, for one served model."""

    def __init__(
        self,
        model: ServedModel,
        config: ServeConfig,
        *,
        detector: Detector | None = None,
        abstainer: Abstainer | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.detector = detector if config.detection.enabled else None
        self.abstainer = abstainer if config.abstention.enabled else None

    def parse(self, body: Any) -> Batch:
        """The validated batch (raises :class:`~robustops.serving.validation.InvalidRequest`)."""
        return parse_body(
            body,
            self.model,
            max_batch=self.config.limits.max_batch,
            max_text_chars=self.config.max_text_chars,
        )

    def handle(self, key: str, batch: Batch) -> Outcome:
        """Run one validated batch of ``key``. The model and the detector run whatever the
        detector decides, so a flagged request costs the same time as any other."""
        logits, feats = self.model.outputs(batch.inputs)
        action, flags = "ok", list[str]()
        if self.detector is not None:
            action, flags = self.detector.observe(key, batch, feats)
        abstain = self.abstainer.decide(logits, feats) if self.abstainer is not None else None
        probs = torch.softmax(logits / self.model.temperature, dim=1)
        conf, labels = probs.max(dim=1)
        names = self.model.class_names
        preds = []
        for i in range(batch.n):
            reasons = tuple(abstain[i]) if abstain is not None else ()
            label = int(labels[i])
            preds.append(
                Prediction(
                    decision="abstain" if reasons else "predict",
                    label=None if reasons else label,
                    class_name=None if reasons or not names else str(names[label]),
                    confidence=float(conf[i]),
                    reasons=reasons,
                )
            )
        return Outcome(preds, action, list(flags), input_digest(batch))
