"""The one error hierarchy of RobustOps: every failure a user can cause is a ``RobustOpsError``.

::

    RobustOpsError
    ├── SpecError (also ValueError)      a spec, threat, parameter or input file is invalid;
    │   │                                ``errors`` holds (field path, message) pairs
    │   └── UntrustedCodeError           a spec or model file names code the user did not trust
    ├── DataIntegrityError               embedded data missing or its fingerprint differs
    ├── UnsafeArtifactError              pickle, bad safetensors, hash mismatch
    ├── OutputError                      an output path cannot be written (checked up front)
    ├── ModelRuntimeError                the user's model (or factory) failed while RobustOps ran it
    └── AuditError                       the registry's audit key or an event to seal is unusable

Every message that echoes user input bounds it with :func:`short_repr`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

__all__ = [
    "AuditError",
    "DataIntegrityError",
    "ModelOutputError",
    "ModelRuntimeError",
    "OutputError",
    "RobustOpsError",
    "SpecError",
    "UnsafeArtifactError",
    "UntrustedCodeError",
    "short_repr",
    "shorten",
]

MAX_ECHO = 200
"""Most characters of a user-supplied value echoed into an error message."""


MAX_MESSAGE = 1000
"""Longest message of one :class:`SpecError` entry (longer ones are cut: they echo input)."""


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, with ``…`` and its full length when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def short_repr(value: object, limit: int = MAX_ECHO, *, _depth: int = 0) -> str:
    """``repr(value)`` cut to ``limit`` characters, computed without building the full repr of a
    large container (a YAML alias bomb expands to billions of items: the ``repr`` of it would
    exhaust memory)."""
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        sub = max(limit // 4, 8)
        if _depth >= 2:
            return f"<{type(value).__name__} of {len(value)} items>"
        if isinstance(value, dict):
            parts = [
                f"{short_repr(k, sub, _depth=_depth + 1)}: {short_repr(v, sub, _depth=_depth + 1)}"
                for k, v in itertools.islice(value.items(), 4)
            ]
        else:
            parts = [short_repr(x, sub, _depth=_depth + 1) for x in itertools.islice(value, 4)]
        more = f", … ({len(value)} items)" if len(value) > len(parts) else ""
        text = f"{type(value).__name__}[{', '.join(parts)}{more}]"
    elif isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
        if len(value) > limit:
            return f"{text[:limit]}… ({len(value)} characters)"
    else:
        try:
            text = repr(value)
        except Exception:  # a user object whose repr fails
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


class RobustOpsError(Exception):
    """Base class of every error RobustOps raises on purpose."""


class SpecError(RobustOpsError, ValueError):
    """A spec, threat or parameter is invalid.

    ``errors`` holds ``(field_path, message)`` pairs, e.g. ``("evaluation.threats.0.epsilon",
    "Input should be greater than or equal to 0")``.
    """

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None) -> None:
        self.errors = [(path, shorten(msg, MAX_MESSAGE)) for path, msg in errors]
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


class UntrustedCodeError(SpecError):
    """A spec or a model file names a ``module:callable`` the user has not trusted (see
    :mod:`robustops.trust`); ``field`` is where it was named."""

    def __init__(self, field: str, ref: str, message: str) -> None:
        super().__init__([(field, message)])
        self.field = field
        self.ref = ref


class OutputError(RobustOpsError):
    """An output path cannot be written: it is a folder, sits under a file, is read-only, or the
    disk filled up. ``kept`` names where the computed result was saved instead, if anywhere."""

    def __init__(
        self, option: str, path: str | Path, reason: str, kept: str | Path | None = None
    ) -> None:
        self.option = option
        self.path = Path(path)
        self.reason = reason
        self.kept = None if kept is None else Path(kept)
        tail = f"; the result was kept in {self.kept}" if self.kept is not None else ""
        super().__init__(f"{option}: cannot write {self.path}: {reason}{tail}")


class ModelRuntimeError(RobustOpsError):
    """The user's model (or its factory) raised while RobustOps ran it; ``stage`` says where
    (``building the model``, ``training``, ``evaluation``)."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        detail = shorten(str(exc).strip() or "(no message)", 300)
        super().__init__(f"the model failed during {stage}: {type(exc).__name__}: {detail}")


class AuditError(RobustOpsError):
    """The registry's audit log cannot be written: its signing key file is missing, malformed,
    encrypted, not Ed25519 or readable by group/others, or an event to seal has an invalid field
    (a newline in a one-line field, a payload that is not a JSON object). A chain that fails
    verification is not an error: :func:`robustops.registry.audit.verify_chain` returns a
    verdict naming the first bad event."""
