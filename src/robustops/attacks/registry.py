"""Name → attack class registry: specs and plug-ins look attacks up by name.

Third-party packages register attacks through the ``robustops.attacks`` entry-point group
(``name = "package.module:AttackClass"``); they are loaded on first lookup.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from robustops.attacks.base import Attack
from robustops.errors import SpecError
from robustops.threats import ThreatModel

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "Registry",
    "available_attacks",
    "build_attack",
    "get_attack",
    "register_attack",
]

C = TypeVar("C", bound=type)


class AttackSpec(BaseModel):
    """An attack by registry name, as specs write it; every other key is a hyper-parameter of
    that attack (checked against its constructor when it is built)."""

    model_config = ConfigDict(extra="allow")

    name: str

    def params(self) -> dict[str, Any]:
        """The hyper-parameters (everything but ``name``)."""
        return dict(self.model_extra or {})


class Registry(Generic[C]):
    """Name → class registry shared by the image/tabular attacks and the text attacks.

    Args:
        kind: what the classes are, for messages (``"attack"``, ``"text attack"``).
        base: the class every registered one derives from (plug-ins are checked against it).
        group: entry-point group whose plug-ins are loaded on first lookup, if any.
        inherited_params: accept the keyword-only parameters of every ``__init__`` in the MRO
            (for classes that pass ``**kwargs`` up), not only those of the class's own.
    """

    def __init__(
        self, kind: str, base: type, group: str | None = None, *, inherited_params: bool = False
    ) -> None:
        self.kind = kind
        self.base = base
        self.group = group
        self.inherited_params = inherited_params
        self._classes: dict[str, C] = {}
        self._plugins_loaded = group is None

    def register(self, cls: C) -> C:
        """Class decorator: make ``cls`` reachable by its ``name`` (lower-case, unique)."""
        name = getattr(cls, "name", "")
        if not name or name != name.lower():
            raise ValueError(f"{self.kind} class {cls.__name__} needs a lower-case `name`")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(
                f"{self.kind} name {name!r} already registered by {self._classes[name].__name__}"
            )
        self._classes[name] = cls
        return cls

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.group or ""):
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, self.base):
                self.register(cls)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        """Sorted names of every registered class."""
        self._load_plugins()
        return sorted(self._classes)

    def get(self, name: str) -> C:
        """The class registered as ``name``; :class:`SpecError` naming the choices otherwise."""
        self._load_plugins()
        try:
            return self._classes[name]
        except KeyError:
            raise SpecError.single(
                "name", f"unknown {self.kind} {name!r}; available: {sorted(self._classes)}"
            ) from None

    def _keyword_params(self, cls: C) -> dict[str, inspect.Parameter]:
        """The keyword-only constructor parameters of ``cls`` (of every ``__init__`` in its MRO
        with ``inherited_params``; the most derived one wins)."""
        inits: list[Any] = (
            [vars(k)["__init__"] for k in cls.__mro__ if "__init__" in vars(k)]
            if self.inherited_params
            else [cls]  # the signature of a class is that of its constructor
        )
        out: dict[str, inspect.Parameter] = {}
        for init in inits:
            for p in inspect.signature(init).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    out.setdefault(p.name, p)
        return out

    def defaults(self, name: str) -> dict[str, Any]:
        """Hyper-parameter defaults of the class registered as ``name`` (the keyword-only
        constructor parameters that have one)."""
        return {
            k: p.default
            for k, p in self._keyword_params(self.get(name)).items()
            if p.default is not inspect.Parameter.empty
        }

    def check_params(self, name: str, params: dict[str, Any]) -> C:
        """The class registered as ``name``, after checking that it accepts every key of
        ``params`` (keyword-only constructor parameters); :class:`SpecError` per unknown key."""
        cls = self.get(name)
        accepted = set(self._keyword_params(cls))
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise SpecError(
                [
                    (k, f"unknown parameter for {self.kind} {name!r}; accepted: {sorted(accepted)}")
                    for k in unknown
                ]
            )
        return cls


ATTACKS: Registry[type[Attack]] = Registry("attack", Attack, group="robustops.attacks")
"""The attacks on tensor inputs (images, tabular rows), with the ``robustops.attacks`` plug-ins."""
A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: make ``cls`` reachable by its ``name`` (lower-case, unique)."""
    ATTACKS.register(cls)
    return cls


def available_attacks() -> list[str]:
    """Sorted names of every registered attack."""
    return ATTACKS.names()


def get_attack(name: str) -> type[Attack]:
    """The attack class registered as ``name``; :class:`SpecError` naming the choices otherwise."""
    return ATTACKS.get(name)


def build_attack(name: str, threat: ThreatModel, **params: Any) -> Attack:
    """Instantiate attack ``name`` for ``threat``; unknown parameters fail with their name."""
    return ATTACKS.check_params(name, params)(threat, **params)
