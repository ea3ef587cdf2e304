"""The threat model: what one attacker may do to one input."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from robustops.errors import SpecError

__all__ = ["Knowledge", "Norm", "ThreatModel", "validation_error_to_spec_error"]

Norm = Literal["linf", "l2", "word-edits"]
Knowledge = Literal["white-box", "score-based", "decision-based"]


class ThreatModel(BaseModel):
    """What an attacker may do: perturb an input inside a norm ball, within a query budget.

    The same type serves every modality: tensors (images, scaled tabular rows) with an
    ``linf``/``l2`` ball, and texts with a ``word-edits`` budget.

    Attributes:
        name: short identifier used in results and reports, e.g. ``"linf-0.3"``.
        norm: ``"linf"`` or ``"l2"``: the distance in the model's input space; ``"word-edits"``:
            texts, where ``epsilon`` is the largest share of a text's words that may be edited
            (each edited word counts once whatever the edit; ``floor(epsilon * words)`` edits).
        epsilon: radius of the ball, in input units (images: [0, 1] pixel scale); for
            ``word-edits`` a share in (0, 1].
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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    norm: Norm = "linf"
    epsilon: float = Field(ge=0.0, allow_inf_nan=False)
    knowledge: Knowledge = "white-box"
    query_budget: int | None = Field(default=None, ge=1)
    targeted: bool = False
    target_class: int | None = Field(default=None, ge=0)
    bounds: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _check_bounds(self) -> ThreatModel:
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds}")
        if self.norm == "word-edits" and not 0 < self.epsilon <= 1:
            raise ValueError(
                f"a word-edits epsilon is the share of words edited, in (0, 1]; got {self.epsilon}"
            )
        if self.target_class is not None and not self.targeted:
            raise ValueError("target_class is set but targeted is false; set targeted: true")
        return self

    @property
    def modality(self) -> Literal["tensor", "text"]:
        """``"text"`` for a ``word-edits`` budget, else ``"tensor"`` (images, tabular rows)."""
        return "text" if self.norm == "word-edits" else "tensor"

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
