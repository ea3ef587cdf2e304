"""Which code a spec or a model file may make RobustOps import and call.

A spec names code as ``"package.module:callable"`` (``model.factory``, an ensemble member's
``factory``, a text model's ``preprocess``); a text model file names its ``preprocess`` hook.
Bringing your own model code is the point of a factory, but the spec is data: someone who can
edit a spec must not be able to run ``os:system``. So:

* the callables RobustOps ships as factories or hooks (marked with :func:`builtin`, e.g.
  ``robustops.models:small_cnn``, ``robustops.text.sanitize:sanitize``) are always allowed;
* any other callable is refused (:class:`~robustops.errors.UntrustedCodeError`, naming the
  field and how to opt in) *before its module is imported*, unless the user trusts its module
  outside the spec: ``--trust-code MODULE`` on the command line (repeatable; a package trusts
  its submodules), the ``ROBUSTOPS_TRUSTED_MODULES`` environment variable (comma-separated), or
  :func:`trusting` in Python; ``--allow-code`` / ``trusting(allow_all=True)`` trusts everything.

A model file (text classifiers) may only name hooks from the built-in list; its own trust
cannot be extended by the file itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from robustops.errors import SpecError, UntrustedCodeError, short_repr

__all__ = [
    "ENV_VAR",
    "TrustPolicy",
    "builtin",
    "check_ref",
    "current_policy",
    "is_builtin",
    "resolve_callable",
    "trusting",
]

ENV_VAR = "ROBUSTOPS_TRUSTED_MODULES"
"""Environment variable: comma-separated module prefixes trusted like ``--trust-code``."""

REF_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_MARK = "__robustops_builtin__"
F = TypeVar("F", bound=Callable[..., Any])


def builtin(fn: F) -> F:
    """Mark ``fn`` as a factory or hook that specs and model files may name without opt-in."""
    setattr(fn, _MARK, True)
    return fn


def is_builtin(obj: object) -> bool:
    """Whether ``obj`` was marked with :func:`builtin`."""
    return getattr(obj, _MARK, False) is True


@dataclass(frozen=True)
class TrustPolicy:
    """Module prefixes the user trusts (``modules``), or everything (``allow_all``)."""

    modules: tuple[str, ...] = ()
    allow_all: bool = False

    def trusts(self, module: str) -> bool:
        """Whether ``module`` is one of ``modules`` or inside one of them."""
        if self.allow_all:
            return True
        return any(module == m or module.startswith(m + ".") for m in self.all_modules())

    def all_modules(self) -> tuple[str, ...]:
        """``modules`` plus those of :data:`ENV_VAR` (read now)."""
        env = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
        return (*self.modules, *env)


_NO_TRUST = TrustPolicy()
_POLICY: contextvars.ContextVar[TrustPolicy | None] = contextvars.ContextVar(
    "robustops_trust", default=None
)


def current_policy() -> TrustPolicy:
    """The policy in force (nothing trusted beyond built-ins and :data:`ENV_VAR` by default)."""
    return _POLICY.get() or _NO_TRUST


@contextlib.contextmanager
def trusting(modules: Iterable[str] = (), *, allow_all: bool = False) -> Iterator[TrustPolicy]:
    """Trust ``modules`` (prefixes; added to those already trusted), or everything, inside the
    block."""
    base = current_policy()
    policy = TrustPolicy(
        (*base.modules, *(m.strip() for m in modules if m.strip())),
        base.allow_all or allow_all,
    )
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def _split(ref: str, field: str) -> tuple[str, str]:
    if not isinstance(ref, str) or not REF_PATTERN.match(ref):
        raise SpecError.single(
            field, f"must look like 'package.module:callable', got {short_repr(ref)}"
        )
    mod, attr = ref.split(":")
    return mod, attr


def _is_robustops(module: str) -> bool:
    return module == "robustops" or module.startswith("robustops.")


def _opt_in_hint(module: str) -> str:
    top = module.split(".")[0]
    return (
        f"a spec is data, not code: trust this module outside the spec with "
        f"--trust-code {top} (or {ENV_VAR}={top}, or --allow-code to trust any code)"
    )


def _import(mod: str, attr: str, field: str) -> Any:
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise SpecError.single(
            field, f"cannot import module {short_repr(mod)}: {short_repr(str(exc))}"
        ) from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SpecError.single(field, f"module {mod!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise SpecError.single(field, f"'{mod}:{attr}' is not callable")
    return obj


def check_ref(ref: str, field: str = "model.factory") -> str:
    """How ``ref`` would be allowed, without importing anything outside RobustOps:
    ``"built-in"`` (marked :func:`builtin`) or ``"trusted"`` (the current policy trusts its
    module). Raises :class:`UntrustedCodeError` naming ``field`` otherwise (a non-built-in
    RobustOps callable included: a spec must not call, say, a function that deletes files),
    and :class:`SpecError` when ``ref`` is malformed or a RobustOps name does not exist."""
    mod, attr = _split(ref, field)
    policy = current_policy()
    if _is_robustops(mod):
        if is_builtin(_import(mod, attr, field)):  # importing RobustOps itself is safe
            return "built-in"
        if policy.trusts(mod):
            return "trusted"
        raise UntrustedCodeError(
            field, ref, f"{ref} is not one of the factories or hooks a spec may name"
        )
    if policy.trusts(mod):
        return "trusted"
    raise UntrustedCodeError(field, ref, f"{ref} is not RobustOps code; {_opt_in_hint(mod)}")


def resolve_callable(ref: str, field: str = "model.factory", *, builtin_only: bool = False) -> Any:
    """Import ``"package.module:callable"`` and return the callable, if :func:`check_ref` allows
    it: modules outside RobustOps are refused *before* being imported. ``builtin_only`` (hooks
    named by a model file) allows built-ins only, whatever the policy."""
    mod, attr = _split(ref, field)
    if builtin_only and (not _is_robustops(mod) or not is_builtin(_import(mod, attr, field))):
        raise UntrustedCodeError(
            field,
            ref,
            f"{ref} is not one of RobustOps' built-in hooks; pass it as preprocess= in code",
        )
    check_ref(ref, field)
    return _import(mod, attr, field)
