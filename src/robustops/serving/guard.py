"""The guard's request path without the web layer: validate, detect, predict, abstain.

:class:`Guard` is what the FastAPI app calls once authentication, the body-size cap and the
rate limit have let a request through; it can be used and tested on its own.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from robustops.serving.config import ServeConfig
from robustops.serving.model import ServedModel
from robustops.serving.validation import Batch, parse_body


class Detector(Protocol):
    """A stateful attack-in-progress detector: sees every validated batch of a key, says
    what to do (``ok``, ``log``, ``flag``, ``throttle``, ``block``) and why."""

    def observe(
        self, key: str, batch: Batch, embedding: Tensor | None, *, own: bool = False
    ) -> tuple[str, list[str]]:
        """The action for this batch of ``key`` and its reasons. ``own``: the service's own
        traffic (a canary key): judged like any key's, never evidence against other keys."""
        ...


@runtime_checkable
class BatchDetector(Detector, Protocol):
    """A detector that decides the requests of several keys in one step (one lock, one
    shared-state transaction), each as :meth:`Detector.observe` would in that order."""

    def observe_many(
        self, items: Sequence[tuple[str, Batch, bool]], features: Tensor | None
    ) -> list[tuple[str, list[str]]]:
        """For each ``(key, batch, own)`` in order, the action and reasons :meth:`observe`
        gives. ``features``: the model's features of all the batches' inputs, concatenated
        in order (or None)."""
        ...


class Abstainer(Protocol):
    """Decides per input whether to answer or abstain, from logits and features."""

    def decide(self, logits: Tensor, features: Tensor | None) -> list[list[str]]:
        """For each input, the reasons to abstain (empty: answer)."""
        ...


@runtime_checkable
class ScoringAbstainer(Abstainer, Protocol):
    """An abstainer that also gives the anomaly score it decided on (one pass for both)."""

    def assess(self, logits: Tensor, features: Tensor | None) -> tuple[list[list[str]], Tensor]:
        """For each input, the reasons to abstain, and the anomaly scores ``(N,)`` (higher =
        more unusual)."""
        ...


@dataclass(frozen=True)
class Request:
    """One validated request the guard runs: the key's name, its inputs and the key's role."""

    key: str
    batch: Batch
    role: str = "client"


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: a label with its calibrated confidence, or an abstention."""

    decision: str  # "predict" or "abstain"
    label: int | None
    class_name: str | None
    confidence: float
    reasons: tuple[str, ...] = ()
    top: int = -1
    """The predicted class, also when abstaining (the request log records it; the answer
    does not)."""
    score: float | None = None
    """The abstainer's anomaly score of this input (None without a scoring abstainer)."""
    sha256: str = ""
    """sha256 of this one input (:func:`item_digests`)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form of the answer (what the client sees)."""
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
    reasons, the sha256 of the raw inputs (what the log records instead of them), summary
    statistics of the inputs (:func:`batch_stats`) and the model that answered (``model``:
    its ``version`` or ``name``; ``weights_sha256``)."""

    predictions: list[Prediction]
    action: str
    flags: list[str] = field(default_factory=list)
    input_sha256: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    model: str = ""
    weights_sha256: str = ""


def input_digest(batch: Batch) -> str:
    """sha256 of the raw inputs (tensor bytes, or the UTF-8 texts joined by NUL)."""
    h = hashlib.sha256()
    if isinstance(batch.raw, Tensor):
        h.update(batch.raw.contiguous().numpy().tobytes())
    else:
        h.update("\0".join(batch.raw).encode())
    return h.hexdigest()


def item_digests(batch: Batch) -> list[str]:
    """sha256 of each input on its own: the float32 C-order bytes of a validated tensor row
    (images, scaled table rows), or the UTF-8 bytes of a text as the client sent it."""
    if isinstance(batch.raw, Tensor):
        data = batch.raw.contiguous().numpy()
        return [hashlib.sha256(data[i].tobytes()).hexdigest() for i in range(batch.n)]
    return [hashlib.sha256(t.encode()).hexdigest() for t in batch.raw]


def batch_stats(batch: Batch) -> dict[str, float]:
    """Summary statistics of a validated batch, for drift monitoring. Tensors: ``mean``,
    ``std`` (population), ``min`` and ``max`` over all values (model units). Texts, as sent:
    ``chars`` (mean length in characters), ``non_ascii`` and ``invisible`` (shares of all
    characters that are non-ASCII, or of Unicode category ``Cf``: zero-width and other format
    characters)."""
    if isinstance(batch.raw, Tensor):
        x = batch.raw.double()
        return {
            "mean": float(x.mean()),
            "std": float(x.std(correction=0)) if x.numel() > 1 else 0.0,
            "min": float(x.min()),
            "max": float(x.max()),
        }
    total = non_ascii = invisible = 0
    for t in batch.raw:
        total += len(t)
        if t.isascii():  # no format character is ASCII
            continue
        for c in t:
            if ord(c) > 127:
                non_ascii += 1
                if unicodedata.category(c) == "Cf":
                    invisible += 1
    n = max(len(batch.raw), 1)
    return {
        "chars": total / n,
        "non_ascii": non_ascii / total if total else 0.0,
        "invisible": invisible / total if total else 0.0,
    }


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
        self._scoring = isinstance(self.abstainer, ScoringAbstainer)
        self.label = str(model.version or model.name)
        """What the request log calls the served model (its version, else its name)."""

    def parse(self, body: Any) -> Batch:
        """The validated batch (raises :class:`~robustops.serving.validation.InvalidRequest`)."""
        return parse_body(
            body,
            self.model,
            max_batch=self.config.limits.max_batch,
            max_text_chars=self.config.max_text_chars,
        )

    def handle(self, key: str, batch: Batch, *, role: str = "client") -> Outcome:
        """Run one validated batch of ``key`` (whose role is ``role``). The model and the
        detector run whatever the detector decides, so a flagged request costs the same time as
        any other. A ``canary`` key's queries (the monitoring loop's own probes of the canary
        set, which benign clients may well send too) never count against other keys."""
        return self.handle_many([Request(key, batch, role)])[0]

    def handle_many(self, requests: Sequence[Request]) -> list[Outcome]:
        """Run several requests together, in order, as :meth:`handle` runs one: one forward
        pass over all their inputs, one abstainer pass, and the detector's decisions for all
        of them in one step (:class:`BatchDetector`; each request is still decided on its own
        key's history, the earlier requests of the call included). Each request gets its own
        :class:`Outcome`, as if it had come alone (the logits of a combined pass may differ
        from a pass of one in the last float bits)."""
        if not requests:
            return []
        sizes = [r.batch.n for r in requests]
        inputs: Any
        if len(requests) == 1:
            inputs = requests[0].batch.inputs
        elif isinstance(requests[0].batch.inputs, Tensor):
            inputs = torch.cat([r.batch.inputs for r in requests])  # type: ignore[misc]
        else:
            inputs = [t for r in requests for t in r.batch.inputs]
        logits, feats = self.model.outputs(inputs)
        detected: list[tuple[str, list[str]]] = [("ok", [])] * len(requests)
        if self.detector is not None:
            items = [(r.key, r.batch, r.role == "canary") for r in requests]
            if isinstance(self.detector, BatchDetector):
                detected = self.detector.observe_many(items, feats)
            else:
                detected, start = [], 0
                for (key, batch, own), n in zip(items, sizes, strict=True):
                    f = feats[start : start + n] if feats is not None else None
                    detected.append(self.detector.observe(key, batch, f, own=own))
                    start += n
        abstain: list[list[str]] | None = None
        scores: list[float] | None = None
        if self.abstainer is not None:
            if self._scoring:
                abstain, s = self.abstainer.assess(logits, feats)  # type: ignore[attr-defined]
                scores = s.double().tolist()
            else:
                abstain = self.abstainer.decide(logits, feats)
        probs = torch.softmax(logits / self.model.temperature, dim=1)
        conf, labels = probs.max(dim=1)
        confs, tops = conf.tolist(), labels.tolist()
        names = self.model.class_names
        outcomes, start = [], 0
        for r, n, (action, flags) in zip(requests, sizes, detected, strict=True):
            digests = item_digests(r.batch)
            preds = []
            for j in range(n):
                i = start + j
                reasons = tuple(abstain[i]) if abstain is not None else ()
                label = int(tops[i])
                preds.append(
                    Prediction(
                        decision="abstain" if reasons else "predict",
                        label=None if reasons else label,
                        class_name=None if reasons or not names else str(names[label]),
                        confidence=float(confs[i]),
                        reasons=reasons,
                        top=label,
                        score=scores[i] if scores is not None else None,
                        sha256=digests[j],
                    )
                )
            outcomes.append(
                Outcome(
                    preds,
                    action,
                    list(flags),
                    input_digest(r.batch),
                    batch_stats(r.batch),
                    self.label,
                    self.model.weights_sha256 or "",
                )
            )
            start += n
        return outcomes
