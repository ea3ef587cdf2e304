"""The threat model: what one attacker may do to one input."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from torch import Tensor

from robustops.errors import SpecError
from robustops.format import percent
from robustops.schema import StrictModel

__all__ = [
    "CORRUPTION_SEVERITIES",
    "Knowledge",
    "Norm",
    "ThreatModel",
    "validation_error_to_spec_error",
]

Norm = Literal["linf", "l2", "word-edits", "patch", "spatial", "corruption"]
"""The perturbation family of a threat, which gives ``epsilon`` its meaning (see
:class:`ThreatModel`)."""
CORRUPTION_SEVERITIES = 5
"""Corruption severities run from 1 to this (as MNIST-C / CIFAR-10-C define them)."""
_INTEGRAL = ("patch", "corruption")
Knowledge = Literal["white-box", "score-based", "decision-based"]


class ThreatModel(StrictModel):
    """What an attacker may do: perturb an input inside a norm ball, within a query budget.

    The same type serves every modality and perturbation family; ``norm`` names the family
    and gives ``epsilon`` its unit:

    ============== ===================================================================
    ``linf``/``l2`` a ball of radius ``epsilon`` in the model's input space (images:
                    the [0, 1] pixel scale; tabular rows: their scaled features)
    ``word-edits``  texts: ``epsilon`` is the largest share of a text's words edited,
                    in (0, 1] (``floor(epsilon * words)`` edits, each word once)
    ``patch``       images ``(N, C, H, W)``: every changed pixel lies in one square of
                    ``epsilon`` × ``epsilon`` pixels, placed anywhere; inside it any
                    value within ``bounds`` (a sticker, an occluder)
    ``spatial``     images: a rotation by at most ``epsilon`` degrees about the centre
                    and a translation by at most ``translation`` pixels per axis
                    (Engstrom et al. 2019), bilinear, zeros shifted in
    ``corruption``  images: a common corruption (noise, blur, JPEG, brightness,
                    contrast, elastic) at severity ``epsilon``, an integer 1–5 as
                    MNIST-C / CIFAR-10-C define them
    ============== ===================================================================

    Attributes:
        name: short identifier used in results and reports, e.g. ``"linf-0.3"``.
        norm: the perturbation family (table above).
        epsilon: the budget in the family's unit (table above).
        knowledge: ``"white-box"`` (gradients), ``"score-based"`` (output scores only) or
            ``"decision-based"`` (labels only). An attack needing more knowledge is refused.
        query_budget: maximum model queries per sample for query-based attacks (``None``: the
            attack's own default).
        targeted: the attacker wants a chosen class rather than any wrong one.
        target_class: with ``targeted``, the one class every attacked sample is pushed to (a
            spammer wants "ham"); samples already of that class are not attacked, as the
            attacker gains nothing from them. ``None``: a random wrong class per sample.
        bounds: valid input range ``(low, high)``; every adversarial input stays inside it
            (tensor inputs; unused for texts).
        translation: ``spatial`` only: the largest shift per axis, in pixels.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, max_length=200)
    norm: Norm = "linf"
    epsilon: float = Field(ge=0.0, allow_inf_nan=False)
    knowledge: Knowledge = "white-box"
    query_budget: int | None = Field(default=None, ge=1)
    targeted: bool = False
    target_class: int | None = Field(default=None, ge=0)
    bounds: tuple[float, float] = (0.0, 1.0)
    translation: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @field_validator("epsilon")
    @classmethod
    def _check_epsilon(cls, eps: float, info: ValidationInfo) -> float:
        norm = info.data.get("norm")
        if norm == "word-edits" and not 0 < eps <= 1:
            raise ValueError(
                f"a word-edits epsilon is the share of words edited, in (0, 1]; got {eps}"
            )
        if norm in _INTEGRAL and (eps != int(eps) or eps < 1):
            unit = "patch side in pixels" if norm == "patch" else "corruption severity"
            raise ValueError(f"a {norm} epsilon is the {unit}, an integer >= 1; got {eps}")
        if norm == "corruption" and eps > CORRUPTION_SEVERITIES:
            raise ValueError(
                f"corruption severities go from 1 to {CORRUPTION_SEVERITIES}; got {eps}"
            )
        if norm == "spatial" and eps > 180:
            raise ValueError(
                f"a spatial epsilon is the largest rotation in degrees, at most 180; got {eps}"
            )
        return eps

    @field_validator("translation")
    @classmethod
    def _check_translation(cls, translation: float, info: ValidationInfo) -> float:
        if translation and info.data.get("norm") != "spatial":
            raise ValueError("translation is the budget of a spatial threat; set norm: spatial")
        return translation

    @model_validator(mode="after")
    def _check_bounds(self) -> ThreatModel:
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds}")
        if self.target_class is not None and not self.targeted:
            raise ValueError("target_class is set but targeted is false; set targeted: true")
        return self

    @property
    def modality(self) -> Literal["tensor", "text"]:
        """``"text"`` for a ``word-edits`` budget, else ``"tensor"`` (images, tabular rows)."""
        return "text" if self.norm == "word-edits" else "tensor"

    @property
    def budget(self) -> str:
        """The budget in words for reports: ``L∞ ε = 0.3``, ``word edits ≤ 20% of the words``,
        ``6×6 patch``, ``rotation ≤ 30°, translation ≤ 3 px``, ``corruption severity 3``."""
        eps = f"{self.epsilon:g}"
        if self.norm == "word-edits":
            return f"word edits ≤ {percent(self.epsilon, 4, significant=True)} of the words"
        if self.norm == "patch":
            return f"{eps}×{eps} patch"
        if self.norm == "spatial":
            return f"rotation ≤ {eps}°, translation ≤ {self.translation:g} px"
        if self.norm == "corruption":
            return f"corruption severity {eps}"
        return f"{'L∞' if self.norm == 'linf' else 'L2'} ε = {eps}"

    def draw_targets(
        self, labels: Tensor, num_classes: int, generator: torch.Generator
    ) -> Tensor | None:
        """``(N,)`` int64 targets of a targeted threat for ``labels`` ``(N,)``: ``target_class``
        for every sample, else a uniformly drawn wrong class per sample (from ``generator``);
        ``None`` for an untargeted threat."""
        if not self.targeted:
            return None
        n = labels.shape[0]
        if self.target_class is not None:
            if self.target_class >= num_classes:
                raise SpecError.single(
                    "threat.target_class",
                    f"{self.target_class} is not a class of a {num_classes}-class model",
                )
            return torch.full((n,), self.target_class, dtype=torch.int64)
        k = max(num_classes, 2)
        shift = torch.randint(1, k, (n,), generator=generator)
        return (labels.cpu().to(torch.int64) + shift) % k

    def attacked(self, labels: Tensor) -> Tensor:
        """``(N,)`` bool: the samples an attacker would attack (all but those already of a fixed
        ``target_class``)."""
        if self.target_class is None:
            return torch.ones(labels.shape[0], dtype=torch.bool)
        return labels.cpu() != self.target_class

    @classmethod
    def parse(cls, data: Any, source: str | None = None) -> ThreatModel:
        """Validate ``data`` (a mapping), raising :class:`SpecError` with field paths."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error_to_spec_error(exc, source=source) from None


def validation_error_to_spec_error(
    exc: ValidationError, prefix: str = "", source: str | None = None
) -> SpecError:
    """Turn pydantic's error into a :class:`SpecError` whose paths read ``a.b.0.c``."""
    errors = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        path = ".".join([prefix, *parts] if prefix else parts)
        errors.append((path, err["msg"]))
    return SpecError(errors, source=source)
