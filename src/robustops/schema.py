"""The one strict pydantic base of RobustOps' records and specs.

Every model that reads user input or a result file refuses unknown fields (a typo in a spec or
an edited result is an error, not silently ignored). Subclass :class:`StrictModel`; an immutable,
hashable model adds ``model_config = ConfigDict(frozen=True)`` (pydantic merges it with the
base's configuration).

A bottom-level module: it imports nothing from RobustOps, so every layer may use it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A pydantic model that forbids fields it does not declare (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")
