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
    "attack_defaults",
    "available_attacks",
    "build_attack",
    "get_attack",
    "register_attack",
]

C = TypeVar("C", bound=type[Attack])


class AttackSpec(BaseModel):
    """An attack by registry name, as specs write it; every other key is a hyper-parameter of
    that attack (checked against its constructor when it is built)."""

    model_config = ConfigDict(extra="allow")

    name: str

    def params(self) -> dict[str, Any]:
        """The hyper-parameters (everything but ``name``)."""
        return dict(self.model_extra or {})


class Registry(Generic[C]):
    """Name → attack class registry, for every modality.

    Args:
        kind: what the classes are, for messages (``"attack"``).
        base: the class every registered one derives from (plug-ins are checked against it).
        group: entry-point group whose plug-ins are loaded on first lookup, if any.
    """

    def __init__(self, kind: str, base: type[Attack], group: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.group = group
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

    def defaults(self, name: str) -> dict[str, Any]:
        """Hyper-parameter defaults of the class registered as ``name`` (those that have one;
        see :meth:`Attack.param_defaults`)."""
        return {
            k: v
            for k, v in self.get(name).param_defaults().items()
            if v is not inspect.Parameter.empty
        }

    def check_params(self, name: str, params: dict[str, Any]) -> C:
        """The class registered as ``name``, after checking that it accepts every key of
        ``params`` (its hyper-parameters); :class:`SpecError` per unknown key."""
        cls = self.get(name)
        accepted = set(cls.param_defaults())
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
"""Every attack, whatever the modality: this package's own, and those of the ``robustops.attacks``
entry-point group (RobustOps' text and tabular attacks register there as any plug-in does)."""
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


# Before every attack was built from its threat (schema < 1.4), text attacks recorded these
# options of their word-edits threat among their own parameters.
_LEGACY_TEXT_OPTIONS = {
    "max_edit_share": "epsilon",
    "query_budget": "query_budget",
    "targeted": "targeted",
}


def attack_defaults(name: str, threat: ThreatModel | None = None) -> dict[str, Any]:
    """What the attack registered as ``name`` uses unless told otherwise (its hyper-parameter
    defaults; ``{}`` for a name this installation does not know, e.g. a plug-in not installed
    here). With a ``word-edits`` ``threat``, also the options older results of text attacks
    recorded as parameters (``max_edit_share``, ``query_budget``, ``targeted``), read from it:
    results then compare by what was run, not by where it was written down."""
    try:
        defaults = ATTACKS.defaults(name)
    except SpecError:
        defaults = {}
    if threat is not None and threat.norm == "word-edits":
        defaults |= {k: getattr(threat, field) for k, field in _LEGACY_TEXT_OPTIONS.items()}
    return defaults


def build_attack(name: str, threat: ThreatModel, **params: Any) -> Attack:
    """Instantiate attack ``name`` for ``threat``; unknown parameters fail with their name, an
    attack that does not serve the threat's family fails at ``name``."""
    cls = ATTACKS.check_params(name, params)
    if isinstance(threat, ThreatModel) and threat.norm not in cls.norms:
        raise SpecError.single(
            "name",
            f"attack {name!r} serves the families {list(cls.norms)}, not {threat.norm!r} "
            f"(threat {threat.name!r}); available for it: "
            f"{[n for n in ATTACKS.names() if threat.norm in ATTACKS.get(n).norms]}",
        )
    return cls(threat, **params)
