"""Automatic rollback: move a registry alias back to the version it held before, because a
canary run or a rollback-worthy alert judged the current one bad.

:func:`roll_back` wraps :meth:`robustops.registry.service.Registry.rollback` (which re-checks
the earlier version's gate record under the policy in force, its approval and its open critical
vulnerabilities) and never raises for a refusal of the registry: it returns a
:class:`RollbackOutcome` saying what happened or why nothing did (no earlier version, the
earlier version fails the policy checks, the alias already moved away from the version judged
bad). The acting principal must exist with role ``engineer`` or above; anything else is a
configuration error (:class:`RollbackConfigError`, naming ``monitor.rollback.actor``), raised
before anything is touched.

:func:`roll_back_on_alert` is what the monitor's loop calls for an alert whose rule is marked
``rollback``: it acts only within ``monitor.rollback.after_promotion_seconds`` of the alias's
last move to the version the alert is about, and records the alert as the evidence.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustops.errors import RobustOpsError
from robustops.monitoring.config import RollbackConfig
from robustops.registry.service import ROLES, Registry, label
from robustops.registry.store import RegistryError

__all__ = [
    "RollbackConfigError",
    "RollbackOutcome",
    "check_actor",
    "parse_model_label",
    "roll_back",
    "roll_back_on_alert",
]

_LABEL = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127}?)(?:[:@]v?(?P<n>\d+))?$")


class RollbackConfigError(RobustOpsError):
    """The rollback cannot even be attempted as configured (unknown principal, too weak a
    role, no model name); the message names the field to fix."""


@dataclass(frozen=True)
class RollbackOutcome:
    """What :func:`roll_back` did.

    Attributes:
        rolled_back: whether the alias moved.
        model, alias: the alias concerned.
        from_version: ``NAME@N`` it pointed to before (None when it pointed nowhere).
        to_version: ``NAME@N`` it points to now when ``rolled_back`` (else None).
        reason: the reason recorded on the alias event.
        refused: why nothing moved (the registry's message), else None.
        audit_seq: the audit event of the move (None when nothing moved).
        at: the time of the move (registry format), or of the refusal (UTC ISO-8601).
    """

    rolled_back: bool
    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    refused: str | None
    audit_seq: int | None
    at: str

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON data."""
        return asdict(self)


def check_actor(registry: Registry, actor: str) -> None:
    """Refuse (:class:`RollbackConfigError`) an ``actor`` the registry does not know or whose
    role is below ``engineer``."""
    known = {p.name: p.role for p in registry.principals()}
    if actor not in known:
        raise RollbackConfigError(
            f"monitor.rollback.actor: {actor!r} is not a principal of the registry at "
            f"{registry.store.home}; an admin adds it with `robustops registry principal add "
            f"{actor} --role engineer`"
        )
    if ROLES.index(known[actor]) < ROLES.index("engineer"):
        raise RollbackConfigError(
            f"monitor.rollback.actor: {actor!r} is {known[actor]}; rolling back needs engineer "
            "or above"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def roll_back(
    registry: Registry,
    *,
    actor: str,
    model: str,
    alias: str = "production",
    reason: str,
    evidence: dict[str, Any] | None = None,
    only_if: str | None = None,
) -> RollbackOutcome:
    """Move ``model:alias`` back to its previous version with ``reason`` and ``evidence`` on the
    alias event and in the audit log. ``only_if`` (``NAME@N``): act only while the alias still
    points to that version (the one judged bad), so that a second finding about the same bad
    version does not move the alias again. Registry refusals come back as an outcome with
    ``refused`` set; an unusable ``actor`` raises :class:`RollbackConfigError`."""
    check_actor(registry, actor)
    try:
        current: str | None = label(registry.get(f"{model}:{alias}"))
    except RegistryError:
        current = None

    def refused(why: str) -> RollbackOutcome:
        return RollbackOutcome(False, model, alias, current, None, reason, why, None, _now())

    if current is None:
        return refused(f"rollback: {model}:{alias} points to no version")
    if only_if is not None and current != only_if:
        return refused(
            f"rollback: {model}:{alias} points to {current} now, not to {only_if} (the version "
            "judged); nothing to undo"
        )
    try:
        event = registry.rollback(actor, model, alias, reason=reason, evidence=evidence)
    except RegistryError as exc:
        return refused(str(exc))
    to = registry.version_label(event.version_id)
    return RollbackOutcome(True, model, alias, current, to, reason, None, event.audit_seq, event.at)


def parse_model_label(text: str) -> tuple[str, int | None]:
    """``(name, version)`` of a served-version label: ``NAME:vN``, ``NAME@N`` or ``NAME``."""
    m = _LABEL.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise RollbackConfigError(f"alert.model: {text!r} is not NAME:vN, NAME@N or NAME")
    return m["name"], int(m["n"]) if m["n"] else None


def _alert_time(alert: dict[str, Any]) -> float:
    """The alert's time, Unix seconds: ``fired_ts`` / ``ts`` / ``fired_at`` / ``at`` (seconds or ISO-8601),
    else now."""
    for key in ("fired_ts", "ts", "fired_at", "at", "time"):
        value = alert.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return time.time()


def roll_back_on_alert(
    config: RollbackConfig, alert: dict[str, Any], registry_home: str | Path | None
) -> dict[str, Any] | None:
    """Roll ``model:alias`` back for a rollback-worthy ``alert`` (a JSON object: ``rule`` or
    ``name``, ``model`` the served version ``NAME:vN`` / ``NAME@N``, its time as ``fired_ts`` /
    ``ts`` (Unix seconds) or ``fired_at`` / ``at`` (ISO-8601), as the monitor's alerts have it;
    everything else is kept as evidence), if the alias moved to the version the alert is
    about within ``config.after_promotion_seconds`` before the alert (a move that was itself a
    rollback is never undone).

    The model is ``config.model``, else the name in ``alert["model"]``
    (:class:`RollbackConfigError` when neither gives one). Returns None when the rule does
    not apply (no recent move, or the alert is about another version than the alias holds);
    else the :class:`RollbackOutcome` as JSON (with ``refused`` set when the registry
    refused)."""
    served = alert.get("model")
    served_name, served_n = parse_model_label(served) if isinstance(served, str) else (None, None)
    model = config.model or served_name
    if not model:
        raise RollbackConfigError(
            "monitor.rollback.model: not set, and the alert names no served model (alert.model)"
        )
    when = _alert_time(alert)
    registry = Registry.open(registry_home)
    try:
        check_actor(registry, config.actor)
        history = registry.history(model, config.alias, limit=1)
        if not history or history[0].version_id is None:
            return None
        last = history[0]
        if last.kind == "rollback":
            return None  # the alias was just rolled back: never undo a rollback by itself
        current = registry.version_label(last.version_id)
        if served_n is not None and served_name == model and current != f"{model}@{served_n}":
            return None  # the alert is about a version the alias no longer (or never) held
        moved = datetime.fromisoformat(last.at.replace("Z", "+00:00")).timestamp()
        if not 0 <= when - moved <= config.after_promotion_seconds:
            return None
        rule = alert.get("rule") or alert.get("name") or "alert"
        outcome = roll_back(
            registry,
            actor=config.actor,
            model=model,
            alias=config.alias,
            reason=f"alert {rule} fired {when - moved:.0f} s after {current} took {config.alias}",
            evidence={"alert": alert, "moved_at": last.at, "move_kind": last.kind},
            only_if=current,
        )
        return outcome.to_json()
    finally:
        registry.close()
