"""The threat model: what one attacker may do to one input."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from robustops.errors import SpecError

__all__ = ["Knowledge", "Norm", "ThreatModel", "validation_error_to_spec_error"]

Norm = Literal["linf", "l2"]
Knowledge = Literal["white-box", "score-based", "decision-based"]


class ThreatModel(BaseModel):
    """What an attacker may do: perturb an input inside a norm ball, within a query budget.

    Attributes:
        name: short identifier used in results and reports, e.g. ``"linf-0.3"``.
        norm: ``"linf"`` or ``"l2"``; the distance in the model's input space.
        epsilon: radius of the ball, in input units (images: [0, 1] pixel scale).
        knowledge: ``"white-box"`` (gradients), ``"score-based"`` (output scores only) or
            ``"decision-based"`` (labels only). An attack needing more knowledge is refused.
        query_budget: maximum model queries per sample for query-based attacks (``None``: the
            attack's own default).
        targeted: the attacker wants a chosen class rather than any wrong one.
        bounds: valid input range ``(low, high)``; every adversarial input stays inside it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    norm: Norm = "linf"
    epsilon: float = Field(ge=0.0, allow_inf_nan=False)
    knowledge: Knowledge = "white-box"
    query_budget: int | None = Field(default=None, ge=1)
    targeted: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _check_bounds(self) -> ThreatModel:
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds}")
        return self

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
