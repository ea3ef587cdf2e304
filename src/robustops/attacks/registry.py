"""Name → attack class registry: specs and plug-ins look attacks up by name.

Third-party packages register attacks through the ``robustops.attacks`` entry-point group
(``name = "package.module:AttackClass"``); they are loaded on first lookup.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any, TypeVar

from robustops.attacks.base import Attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = ["available_attacks", "build_attack", "get_attack", "register_attack"]

_REGISTRY: dict[str, type[Attack]] = {}
_PLUGINS_LOADED = False
A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: make ``cls`` reachable by its ``name`` (lower-case, unique)."""
    name = cls.name
    if not name or name != name.lower():
        raise ValueError(f"attack class {cls.__name__} needs a lower-case `name`")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"attack name {name!r} already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in metadata.entry_points(group="robustops.attacks"):
        cls = ep.load()
        if isinstance(cls, type) and issubclass(cls, Attack):
            register_attack(cls)


def available_attacks() -> list[str]:
    """Sorted names of every registered attack."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_attack(name: str) -> type[Attack]:
    """The attack class registered as ``name``; :class:`SpecError` naming the choices otherwise."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError.single(
            "name", f"unknown attack {name!r}; available: {sorted(_REGISTRY)}"
        ) from None


def build_attack(name: str, threat: ThreatModel, **params: Any) -> Attack:
    """Instantiate attack ``name`` for ``threat``; unknown parameters fail with their name."""
    cls = get_attack(name)
    accepted = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise SpecError(
            [
                (k, f"unknown parameter for attack {name!r}; accepted: {sorted(accepted)}")
                for k in unknown
            ]
        )
    return cls(threat, **params)
