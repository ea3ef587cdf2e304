"""The one error hierarchy of RobustOps: every failure a user can cause is a ``RobustOpsError``."""

from __future__ import annotations

__all__ = [
    "DataIntegrityError",
    "ModelOutputError",
    "RobustOpsError",
    "SpecError",
    "UnsafeArtifactError",
]


class RobustOpsError(Exception):
    """Base class of every error RobustOps raises on purpose."""


class SpecError(RobustOpsError, ValueError):
    """A spec, threat or parameter is invalid.

    ``errors`` holds ``(field_path, message)`` pairs, e.g. ``("evaluation.threats.0.epsilon",
    "Input should be greater than or equal to 0")``.
    """

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{path or '<root>'}: {msg}" for path, msg in self.errors]
        super().__init__("\n".join(lines))

    @classmethod
    def single(cls, path: str, message: str) -> SpecError:
        """One error at one field path."""
        return cls([(path, message)])


class DataIntegrityError(RobustOpsError):
    """An embedded data set is missing, or its content fingerprint does not match."""


class UnsafeArtifactError(RobustOpsError):
    """An artifact would need an unsafe loader (pickle) or failed its hash check."""


class ModelOutputError(RobustOpsError):
    """A model returned outputs that cannot be judged: non-finite logits (NaN, ±∞) or logits of
    the wrong shape. The message names the batch and what was wrong."""
