"""The guard's abstention: an OOD score with a split-conformal threshold fitted on held-out
clean data (:mod:`robustops.defenses.ood`), and an optional minimum calibrated confidence.

At ``alpha`` the threshold keeps the false-abstain rate on clean inputs exchangeable with the
calibration samples at or below ``alpha`` on average over calibration draws (see
:func:`~robustops.defenses.ood.conformal_threshold` for the assumptions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustops.defenses.ood import (
    ConformalThreshold,
    OODDetector,
    conformal_threshold,
    energy_score,
    min_calibration_size,
    msp_score,
)
from robustops.errors import SpecError
from robustops.serving.config import AbstentionConfig
from robustops.serving.model import ServedModel


@dataclass
class GuardAbstainer:
    """Abstains on an input whose OOD score is above the conformal threshold, or whose
    temperature-scaled confidence is below ``min_confidence``."""

    score_name: str
    threshold: ConformalThreshold
    temperature: float
    min_confidence: float | None = None
    detector: OODDetector | None = None

    def scores(self, logits: Tensor, features: Tensor | None) -> Tensor:
        """OOD scores ``(N,)`` (larger = more anomalous) of the model's outputs."""
        if self.detector is not None:
            return self.detector.score_outputs(logits, features)
        return msp_score(logits) if self.score_name == "msp" else energy_score(logits)

    def decide(self, logits: Tensor, features: Tensor | None) -> list[list[str]]:
        """See :class:`robustops.serving.guard.Abstainer`."""
        return self.assess(logits, features)[0]

    def assess(self, logits: Tensor, features: Tensor | None) -> tuple[list[list[str]], Tensor]:
        """See :class:`robustops.serving.guard.ScoringAbstainer`: the reasons to abstain per
        input and the OOD scores ``(N,)`` they were decided on (one scoring pass)."""
        s = self.scores(logits, features)
        conf = torch.softmax(logits / self.temperature, dim=1).max(dim=1).values.tolist()
        t = self.threshold
        out = []
        for i, score in enumerate(s.tolist()):
            reasons = []
            if score > t.threshold:
                reasons.append(
                    f"out of distribution: {self.score_name} score {score:.4g} above "
                    f"{t.threshold:.4g} (conformal, alpha={t.alpha}, n={t.n_calibration})"
                )
            if self.min_confidence is not None and conf[i] < self.min_confidence:
                reasons.append(f"low confidence: {conf[i]:.3f} below {self.min_confidence}")
            out.append(reasons)
        return out, s


def fit_abstainer(
    served: ServedModel,
    config: AbstentionConfig,
    calibration: Any,
    *,
    module: torch.nn.Module | None = None,
    train: tuple[Tensor, Tensor] | None = None,
) -> GuardAbstainer:
    """Fit the guard's abstainer: the OOD score of ``config`` (a feature score fits its
    Mahalanobis model on ``train`` through ``module``, whose feature pass then becomes
    ``served.features``), its conformal threshold on the held-out clean ``calibration``
    inputs (a tensor ``(n, ...)`` or ``n`` texts), and the served temperature."""
    n = len(calibration)
    need = min_calibration_size(config.alpha)
    if n < need:
        raise SpecError.single(
            "serve.abstention.calibration_samples",
            f"alpha {config.alpha} needs at least {need} held-out clean samples; {n} are left",
        )
    detector = None
    if config.score in ("mahalanobis", "relative-mahalanobis"):
        if module is None or train is None:
            raise SpecError.single(
                "serve.abstention.score", f"{config.score} needs a torch model's features"
            )
        detector = OODDetector(module, config.score).fit(*train)
        served.features = detector.outputs
    logits, feats = served.outputs(calibration)
    abstainer = GuardAbstainer(
        score_name=config.score,
        threshold=conformal_threshold(torch.zeros(1), 0.5),  # replaced below
        temperature=served.temperature,
        min_confidence=config.min_confidence,
        detector=detector,
    )
    abstainer.threshold = conformal_threshold(abstainer.scores(logits, feats), config.alpha)
    return abstainer
