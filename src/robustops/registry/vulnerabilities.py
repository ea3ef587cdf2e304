"""Vulnerability records: known weaknesses of registered versions, each replayable.

A record (``RVULN-0001``, allocated under the registry's write lock) names the model, the threat
and the catalog entry it falls under, the exact attack that reproduces it (attack name and
parameters, the threat's JSON, the suite seed that draws the targets, the sample indices in
their split, the data fingerprint and the result it came from: what
``robustops registry vuln replay`` re-runs), the evidence (result hash, broken sample indices,
robust accuracy and attack success observed), a severity, the versions it affects, an owner, a
status, a remediation text and its dates.

The status follows one lifecycle, one step at a time::

    open → triaged → mitigated → verified → closed

and may be sent back to ``open`` (reopened) from any state. Moving to ``mitigated`` needs a
remediation text; moving to ``verified`` or ``closed`` needs an approver. Every change is a
:class:`~robustops.registry.models.VulnerabilityNote` row and a signed audit event in the same
transaction. A critical record that is ``open`` or ``triaged`` blocks promoting the versions it
affects (see :data:`robustops.registry.service.BLOCKING_STATUSES`).

A failing gate opens records by itself (:func:`open_from_gate`): one per threat whose rules
failed, or, when an ``open`` or ``triaged`` record of the same model and threat exists, that
record gains the version as affected and a note instead of a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robustops.evaluation.result import SuiteResult, ThreatResult
from robustops.registry.models import (
    Evaluation,
    GateRecord,
    ModelVersion,
    Vulnerability,
    VulnerabilityNote,
    VulnerabilityVersion,
)
from robustops.registry.service import Registry, label
from robustops.registry.store import RegistryError, RegistryStore, WriteTx
from robustops.threats.catalog import CatalogEntry, ThreatCatalog

__all__ = [
    "DEDUPE_STATUSES",
    "SEVERITIES",
    "STATUSES",
    "ReplayInputs",
    "VulnerabilityRecord",
    "check_transition",
    "findings_from_result",
    "list_vulnerabilities",
    "open_from_gate",
    "open_vulnerability",
    "record_replay",
    "replay_inputs",
    "show_vulnerability",
    "update_vulnerability",
    "version_catalog",
]

SEVERITIES = ("low", "medium", "high", "critical")
"""Severities, increasing (the same bands as a catalog entry's risk level)."""
STATUSES = ("open", "triaged", "mitigated", "verified", "closed")
"""The lifecycle, in order; a record moves one step forward, or back to ``open``."""
DEDUPE_STATUSES = ("open", "triaged")
"""Statuses of a record that a new failure of the same model and threat joins instead of
opening another."""
_APPROVER_STATUSES = frozenset({"verified", "closed"})
_ID = re.compile(r"^RVULN-\d{4,}$")
_DEFAULT_SEVERITY = "high"


@dataclass(frozen=True)
class VulnerabilityRecord:
    """One vulnerability as plain data (JSON-ready with :meth:`to_json`): its columns, the
    labels (``NAME@N``) of the versions it affects and its notes, oldest first."""

    id: str
    title: str
    model: str
    catalog_entry: str | None
    threat: str | None
    severity: str
    status: str
    owner: str
    remediation: str
    reproduce: dict[str, Any]
    evidence: dict[str, Any]
    affected: list[str]
    opened_by: str
    opened_at: str
    updated_at: str
    closed_at: str | None
    notes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)

    @property
    def replayable(self) -> bool:
        """Whether the record holds an attack to replay."""
        return bool(self.reproduce.get("attack"))


@dataclass(frozen=True)
class ReplayInputs:
    """What replaying a record needs: the record, the version to attack (its label, weights
    sha256 and stored weights file) and that version's stored spec text (None when it was
    registered without one)."""

    record: VulnerabilityRecord
    version: str
    weights_sha256: str
    weights_path: Path
    spec_text: str | None


# -- validation ------------------------------------------------------------------------------


def _check_severity(severity: str) -> str:
    if severity not in SEVERITIES:
        raise RegistryError(f"severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    return severity


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise RegistryError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    return status


def _check_text(value: str, what: str, *, limit: int | None = None, empty: bool = False) -> str:
    text = value.strip()
    if not text and not empty:
        raise RegistryError(f"{what}: must not be empty")
    if limit is not None and (len(text) > limit or "\n" in text):
        raise RegistryError(f"{what}: must be one line of at most {limit} characters")
    return text


def _check_id(vuln_id: str) -> str:
    if not _ID.match(vuln_id):
        raise RegistryError(f"id: {vuln_id!r} is not a vulnerability id (RVULN-0001)")
    return vuln_id


def check_transition(old: str, new: str) -> None:
    """Refuse (:class:`RegistryError` naming ``status``) a move other than one step forward in
    :data:`STATUSES` or a reopening (back to ``open``)."""
    _check_status(new)
    if new == "open" or old == new:
        return
    i, j = STATUSES.index(old), STATUSES.index(new)
    lifecycle = " → ".join(STATUSES)
    if j > i + 1:
        skipped = ", ".join(STATUSES[i + 1 : j])
        raise RegistryError(
            f"status: {old} → {new} skips {skipped}; a vulnerability moves one step at a time "
            f"({lifecycle})"
        )
    if j < i:
        raise RegistryError(
            f"status: {old} → {new} goes back; only reopening (status open) is allowed"
        )


# -- reading ---------------------------------------------------------------------------------


def _record(s: Session, v: Vulnerability, *, notes: bool = True) -> VulnerabilityRecord:
    affected = [
        label(mv)
        for mv in s.scalars(
            select(ModelVersion)
            .join(VulnerabilityVersion, VulnerabilityVersion.version_id == ModelVersion.id)
            .where(VulnerabilityVersion.vulnerability_id == v.id)
            .order_by(ModelVersion.name, ModelVersion.version)
        )
    ]
    rows = (
        s.scalars(
            select(VulnerabilityNote)
            .where(VulnerabilityNote.vulnerability_id == v.id)
            .order_by(VulnerabilityNote.id)
        ).all()
        if notes
        else []
    )
    return VulnerabilityRecord(
        id=v.id,
        title=v.title,
        model=v.model_name,
        catalog_entry=v.catalog_entry,
        threat=v.threat,
        severity=v.severity,
        status=v.status,
        owner=v.owner,
        remediation=v.remediation,
        reproduce=dict(v.reproduce),
        evidence=dict(v.evidence),
        affected=affected,
        opened_by=v.opened_by,
        opened_at=v.opened_at,
        updated_at=v.updated_at,
        closed_at=v.closed_at,
        notes=[{"at": n.at, "actor": n.actor, "changes": n.changes} for n in rows],
    )


def _get(s: Session, vuln_id: str) -> Vulnerability:
    v = s.get(Vulnerability, _check_id(vuln_id))
    if v is None:
        raise RegistryError(f"id: no vulnerability {vuln_id}")
    return v


def show_vulnerability(reg: Registry, vuln_id: str) -> VulnerabilityRecord:
    """The record ``vuln_id`` with its affected versions and notes."""
    with reg.store.read() as s:
        return _record(s, _get(s, vuln_id))


def list_vulnerabilities(
    reg: Registry,
    *,
    model: str | None = None,
    status: str | Sequence[str] | None = None,
    severity: str | Sequence[str] | None = None,
    version: str | None = None,
    notes: bool = False,
) -> list[VulnerabilityRecord]:
    """Records by id, optionally only those of ``model``, in ``status`` (one or several),
    of ``severity`` (one or several) or affecting the version ``version`` (a reference)."""
    statuses = [status] if isinstance(status, str) else list(status or [])
    severities = [severity] if isinstance(severity, str) else list(severity or [])
    for st in statuses:
        _check_status(st)
    for sv in severities:
        _check_severity(sv)
    with reg.store.read() as s:
        q = select(Vulnerability)
        if model:
            q = q.where(Vulnerability.model_name == model)
        if statuses:
            q = q.where(Vulnerability.status.in_(statuses))
        if severities:
            q = q.where(Vulnerability.severity.in_(severities))
        if version:
            mv = reg.version_in(s, version)
            q = q.join(
                VulnerabilityVersion, VulnerabilityVersion.vulnerability_id == Vulnerability.id
            ).where(VulnerabilityVersion.version_id == mv.id)
        rows = s.scalars(q.order_by(func.length(Vulnerability.id), Vulnerability.id)).all()
        return [_record(s, v, notes=notes) for v in rows]


# -- findings from a result ------------------------------------------------------------------


def version_catalog(store: RegistryStore, v: ModelVersion) -> ThreatCatalog | None:
    """The threat catalog registered with ``v`` (None when it has none)."""
    if v.catalog_sha256 is None:
        return None
    try:
        text = store.artifacts.read_bytes(v.catalog_sha256).decode("utf-8")
    except Exception as exc:
        raise RegistryError(f"catalog: the threat catalog of {label(v)}: {exc}") from None
    return ThreatCatalog.from_canonical_json(text)


def _entry_for(catalog: ThreatCatalog | None, threat: str) -> CatalogEntry | None:
    """The highest-risk catalog entry that ``threat`` exercises."""
    if catalog is None:
        return None
    return next((e for e in catalog.ranked() if threat in e.exercised_by), None)


def _attack_positions(t: ThreatResult) -> list[tuple[int, list[int]]]:
    """Per attack of ``t`` (by position in ``t.attacks``): the sample positions it broke."""
    out = []
    for k, a in enumerate(t.attacks):
        if t.independent:
            out.append((k, sorted(set(a.broken or []))))
        else:
            out.append((k, [i for i, b in enumerate(t.broken_by) if b == a.name]))
    return out


def findings_from_result(
    result: SuiteResult, threat: str, result_sha256: str, version_label: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(reproduce, evidence)`` of threat ``threat`` in ``result`` (stored as
    ``result_sha256``, judging ``version_label``).

    ``reproduce`` is the strongest attack of the threat (the one that broke the most samples;
    the first on a tie) with its exact parameters, the threat's JSON, the result's seed, and
    the split indices of the samples it broke (with their targets for a targeted threat).
    ``evidence`` holds the threat's figures and the split indices of every sample broken.
    """
    try:
        t = result.threat(threat)
    except KeyError:
        raise RegistryError(
            f"threat: {threat!r} is not in result {result_sha256[:12]}… (it has "
            f"{[x.name for x in result.threats]})"
        ) from None
    indices = result.samples.indices
    broken = [i for i, b in enumerate(t.broken_by) if b is not None]
    per_attack = _attack_positions(t)
    evidence: dict[str, Any] = {
        "result_sha256": result_sha256,
        "result_name": result.name,
        "result_created_at": result.created_at,
        "version": version_label,
        "n_samples": result.n_samples,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": t.robust_accuracy,
        "attack_success_rate": t.attack_success_rate,
        "n_attacked": t.n_attacked,
        "n_broken": len(broken),
        "broken_indices": [indices[i] for i in broken],
        "broken_by": {t.attacks[k].name: len(pos) for k, pos in per_attack},
        "example_indices": [indices[e.index] for e in t.examples if e.index < len(indices)],
    }
    if not per_attack:
        return {}, evidence
    k, positions = max(per_attack, key=lambda kp: (len(kp[1]), -kp[0]))
    a = t.attacks[k]
    reproduce: dict[str, Any] = {
        "attack": a.name,
        "params": dict(a.params),
        "threat": t.threat.model_dump(mode="json"),
        "seed": result.seed,
        "independent": t.independent,
        "split": result.samples.split,
        "indices": [indices[i] for i in positions],
        "targets": [t.targets[i] for i in positions] if t.targets is not None else None,
        "expected_broken": len(positions),
        "data_fingerprint": result.data.get("fingerprint"),
        "result_sha256": result_sha256,
        "version": version_label,
    }
    return reproduce, evidence


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load_result(store: RegistryStore, sha256: str) -> SuiteResult:
    try:
        data = json.loads(store.artifacts.read_bytes(sha256))
    except Exception as exc:
        raise RegistryError(f"result: stored result {sha256[:12]}…: {exc}") from None
    return SuiteResult.model_validate(data)


def _newest_result_with(
    reg: Registry, s: Session, v: ModelVersion, threat: str, result_sha256: str | None
) -> tuple[SuiteResult, str] | None:
    """The newest result attached to ``v`` that evaluated ``threat`` (or exactly the attached
    result ``result_sha256``), or None."""
    rows = s.scalars(
        select(Evaluation).where(Evaluation.version_id == v.id).order_by(Evaluation.id.desc())
    ).all()
    if result_sha256 is not None:
        rows = [e for e in rows if e.result_sha256 == result_sha256]
        if not rows:
            raise RegistryError(
                f"result: {result_sha256[:12]}… is not an evaluation of {label(v)}; attach it first"
            )
    for e in rows:
        if any(t.get("name") == threat for t in e.summary.get("threats", [])):
            return _load_result(reg.store, e.result_sha256), e.result_sha256
    if result_sha256 is not None:
        raise RegistryError(f"threat: result {result_sha256[:12]}… did not evaluate {threat!r}")
    return None


# -- writing ---------------------------------------------------------------------------------


def _next_id(s: Session) -> str:
    last = s.scalars(
        select(Vulnerability.id)
        .order_by(func.length(Vulnerability.id).desc(), Vulnerability.id.desc())
        .limit(1)
    ).first()
    n = int(last.split("-", 1)[1]) + 1 if last else 1
    return f"RVULN-{n:04d}"


def _note(tx: WriteTx, vuln_id: str, action: str, changes: dict[str, Any]) -> None:
    """One note row and its audit event."""
    tx.session.add(
        VulnerabilityNote(vulnerability_id=vuln_id, changes=changes, actor=tx.actor, at=tx.at)
    )
    tx.log(action, vuln_id, changes)


def _affect(s: Session, vuln_id: str, v: ModelVersion) -> bool:
    """Mark ``v`` affected by ``vuln_id``; False when it already was."""
    if s.get(VulnerabilityVersion, (vuln_id, v.id)) is not None:
        return False
    s.add(VulnerabilityVersion(vulnerability_id=vuln_id, version_id=v.id))
    return True


def _create(
    tx: WriteTx,
    v: ModelVersion,
    *,
    title: str,
    threat: str | None,
    catalog_entry: str | None,
    severity: str,
    owner: str,
    remediation: str,
    reproduce: dict[str, Any],
    evidence: dict[str, Any],
    origin: dict[str, Any],
) -> Vulnerability:
    s = tx.session
    vid = _next_id(s)
    row = Vulnerability(
        id=vid,
        title=title,
        model_name=v.name,
        catalog_entry=catalog_entry,
        threat=threat,
        reproduce=reproduce,
        evidence=evidence,
        severity=severity,
        owner=owner,
        status="open",
        remediation=remediation,
        opened_by=tx.actor,
        opened_at=tx.at,
        updated_at=tx.at,
        closed_at=None,
    )
    s.add(row)
    s.flush()
    _affect(s, vid, v)
    _note(
        tx,
        vid,
        "vuln-open",
        {
            "opened": {
                "title": title,
                "model": v.name,
                "threat": threat,
                "catalog_entry": catalog_entry,
                "severity": severity,
                "owner": owner,
                "status": "open",
                "remediation": remediation,
                "reproduce_sha256": _digest(reproduce),
                "evidence_sha256": _digest(evidence),
                "attack": reproduce.get("attack"),
                "result_sha256": evidence.get("result_sha256"),
            },
            "affects": [label(v)],
            **origin,
        },
    )
    return row


def open_vulnerability(
    reg: Registry,
    actor: str,
    ref: str,
    *,
    threat: str,
    title: str,
    severity: str,
    owner: str | None = None,
    catalog_entry: str | None = None,
    remediation: str = "",
    result_sha256: str | None = None,
    evidence: dict[str, Any] | None = None,
    origin: str = "manual",
) -> VulnerabilityRecord:
    """Open a record for the version ``ref`` (engineer or above), by hand or from a finding
    (``origin``: ``manual``, ``canary``, …; kept in the audit event).

    The reproduction and evidence come from the newest evaluation of the version that ran
    ``threat`` (or from the attached result ``result_sha256``); with none, the record holds no
    attack to replay. The catalog entry defaults to the highest-risk entry of the version's
    catalog that ``threat`` exercises; one given must be in that catalog. ``owner`` defaults to
    the entry's owner, else ``actor``. ``evidence`` (JSON data, e.g. a canary run's counts and
    p-value) is added to the evidence taken from the result (its keys win)."""
    threat = _check_text(threat, "threat", limit=128)
    origin = _check_text(origin, "origin", limit=64)
    title = _check_text(title, "title", limit=500)
    _check_severity(severity)
    remediation = _check_text(remediation, "remediation", empty=True)
    if catalog_entry is not None:
        catalog_entry = _check_text(catalog_entry, "catalog_entry", limit=128)
    with reg.store.read() as s:
        reg._require(s, actor, "engineer")
        v = reg.version_in(s, ref)
        found = _newest_result_with(reg, s, v, threat, result_sha256)
        catalog = version_catalog(reg.store, v)
    entry = _entry_for(catalog, threat)
    if catalog_entry is not None:
        if catalog is not None and catalog_entry not in {e.id for e in catalog.entries}:
            raise RegistryError(
                f"catalog_entry: {catalog_entry!r} is not in the threat catalog of {label(v)} "
                f"({[e.id for e in catalog.entries]})"
            )
        entry = (
            next((e for e in catalog.entries if e.id == catalog_entry), None) if catalog else None
        )
    owner = _check_text(
        owner if owner is not None else (entry.owner if entry else actor), "owner", limit=128
    )
    reproduce: dict[str, Any] = {}
    found_evidence: dict[str, Any] = {}
    if found is not None:
        reproduce, found_evidence = findings_from_result(found[0], threat, found[1], label(v))
    evidence = {**found_evidence, **(evidence or {})}
    try:
        json.dumps(evidence, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"evidence: not JSON data ({exc})") from None
    with reg.store.write(actor) as tx:
        reg._require(tx.session, actor, "engineer")
        v = reg.version_in(tx.session, ref)
        row = _create(
            tx,
            v,
            title=title,
            threat=threat,
            catalog_entry=catalog_entry
            if catalog_entry is not None
            else (entry.id if entry else None),
            severity=severity,
            owner=owner,
            remediation=remediation,
            reproduce=reproduce,
            evidence=evidence,
            origin={"origin": origin},
        )
        return _record(tx.session, row)


def update_vulnerability(
    reg: Registry,
    actor: str,
    vuln_id: str,
    *,
    status: str | None = None,
    owner: str | None = None,
    severity: str | None = None,
    remediation: str | None = None,
    affects: Sequence[str] = (),
    comment: str | None = None,
) -> VulnerabilityRecord:
    """Change a record (engineer or above; moving it to ``verified`` or ``closed`` needs an
    approver): its status (one lifecycle step, or back to ``open``), owner, severity,
    remediation, or add affected versions (references of the same model). ``comment`` is kept
    in the note. A request that changes nothing is refused."""
    _check_id(vuln_id)
    if status is not None:
        _check_status(status)
    if severity is not None:
        _check_severity(severity)
    if owner is not None:
        owner = _check_text(owner, "owner", limit=128)
    if remediation is not None:
        remediation = _check_text(remediation, "remediation", empty=True)
    if comment is not None:
        comment = _check_text(comment, "comment", empty=True)
    with reg.store.write(actor) as tx:
        s = tx.session
        needed = "approver" if status in _APPROVER_STATUSES else "engineer"
        reg._require(s, actor, needed)
        row = _get(s, vuln_id)
        changes: dict[str, Any] = {}
        if status is not None and status != row.status:
            check_transition(row.status, status)
            new_remediation = remediation if remediation is not None else row.remediation
            if status == "mitigated" and not new_remediation:
                raise RegistryError(
                    f"remediation: {vuln_id} cannot be mitigated without a remediation text "
                    "(say what was done)"
                )
            changes["status"] = [row.status, status]
            row.status = status
            if status == "closed":
                row.closed_at = tx.at
            elif row.closed_at is not None:
                changes["closed_at"] = [row.closed_at, None]
                row.closed_at = None
        if owner is not None and owner != row.owner:
            changes["owner"] = [row.owner, owner]
            row.owner = owner
        if severity is not None and severity != row.severity:
            changes["severity"] = [row.severity, severity]
            row.severity = severity
        if remediation is not None and remediation != row.remediation:
            changes["remediation"] = [row.remediation, remediation]
            row.remediation = remediation
        added = []
        for ref in affects:
            try:
                v = reg.version_in(s, ref)
            except RegistryError as exc:
                raise RegistryError(f"affects: {exc}") from None
            if v.name != row.model_name:
                raise RegistryError(
                    f"affects: {label(v)} is a version of {v.name!r}; {vuln_id} is about "
                    f"{row.model_name!r}"
                )
            if _affect(s, vuln_id, v):
                added.append(label(v))
        if added:
            changes["affects"] = added
        if not changes:
            raise RegistryError(f"update: nothing to change in {vuln_id}")
        if comment:
            changes["comment"] = comment
        row.updated_at = tx.at
        _note(tx, vuln_id, "vuln-update", changes)
        s.flush()
        return _record(s, row)


def record_replay(
    reg: Registry, actor: str, vuln_id: str, outcome: dict[str, Any]
) -> VulnerabilityRecord:
    """Keep the outcome of a replay (what :func:`robustops.runner.replay_attack` returned) as a
    note of the record (engineer or above)."""
    with reg.store.write(actor) as tx:
        reg._require(tx.session, actor, "engineer")
        row = _get(tx.session, vuln_id)
        row.updated_at = tx.at
        _note(tx, vuln_id, "vuln-replay", {"replay": outcome})
        tx.session.flush()
        return _record(tx.session, row)


def replay_inputs(reg: Registry, vuln_id: str, on: str | None = None) -> ReplayInputs:
    """What replaying ``vuln_id`` needs: by default on the version it was found on (else its
    first affected version), or on the version ``on`` (e.g. a candidate fix) of the same
    model. The weights are checked against their hash first."""
    with reg.store.read() as s:
        row = _get(s, vuln_id)
        rec = _record(s, row, notes=False)
        if not rec.replayable:
            raise RegistryError(
                f"reproduce: {vuln_id} records no attack to replay (it was opened without an "
                "evaluation of its threat)"
            )
        ref = on or rec.reproduce.get("version") or (rec.affected[0] if rec.affected else None)
        if ref is None:
            raise RegistryError(f"version: {vuln_id} affects no version; give one to replay on")
        v = reg.version_in(s, ref)
        if v.name != rec.model:
            raise RegistryError(
                f"version: {label(v)} is a version of {v.name!r}; {vuln_id} is about {rec.model!r}"
            )
    try:
        reg.store.artifacts.verify(v.weights_sha256)
    except Exception as exc:
        raise RegistryError(f"weights: the weights of {label(v)}: {exc}") from None
    spec_text = None
    if v.spec_sha256 is not None:
        try:
            spec_text = reg.store.artifacts.read_bytes(v.spec_sha256).decode("utf-8")
        except Exception as exc:
            raise RegistryError(f"spec: the stored spec of {label(v)}: {exc}") from None
    return ReplayInputs(
        record=rec,
        version=label(v),
        weights_sha256=v.weights_sha256,
        weights_path=reg.store.artifacts.path(v.weights_sha256),
        spec_text=spec_text,
    )


# -- the gate's hook -------------------------------------------------------------------------


def open_from_gate(
    store: RegistryStore, tx: WriteTx, v: ModelVersion, gate: GateRecord, result: SuiteResult
) -> list[str]:
    """For a failed ``gate`` (already flushed) on ``result`` about version ``v``: one record
    per threat of the result with a failed rule, inside the gate's transaction ``tx``. An
    ``open`` or ``triaged`` record of the same model and threat gains the version and a note
    instead. Severity: the risk level of the highest-risk catalog entry the threat exercises
    (``high`` without one). Returns the ids opened or noted."""
    if gate.passed:
        return []
    s = tx.session
    failed: dict[str, list[dict[str, Any]]] = {}
    for rule in gate.report.get("rules", []):
        threat = rule.get("threat")
        if rule.get("status") == "fail" and isinstance(threat, str):
            failed.setdefault(threat, []).append(
                {"rule": rule.get("rule"), "reason": rule.get("reason")}
            )
    names = {t.name for t in result.threats}
    catalog = version_catalog(store, v) if failed else None
    out = []
    for threat, rules in failed.items():
        if threat not in names:  # a missing threat is an incomplete evaluation, not a finding
            continue
        reproduce, evidence = findings_from_result(result, threat, gate.result_sha256, label(v))
        evidence |= {"gate_record": gate.id, "failed_rules": rules}
        entry = _entry_for(catalog, threat)
        severity = entry.level if entry else _DEFAULT_SEVERITY
        existing = s.scalars(
            select(Vulnerability)
            .where(
                Vulnerability.model_name == v.name,
                Vulnerability.threat == threat,
                Vulnerability.status.in_(DEDUPE_STATUSES),
            )
            .order_by(Vulnerability.opened_at, Vulnerability.id)
            .limit(1)
        ).first()
        if existing is not None:
            added = _affect(s, existing.id, v)
            existing.updated_at = tx.at
            _note(
                tx,
                existing.id,
                "vuln-seen",
                {
                    "affects": [label(v)] if added else [],
                    "gate_record": gate.id,
                    "result_sha256": gate.result_sha256,
                    "failed_rules": [r["rule"] for r in rules],
                    "robust_accuracy": evidence["robust_accuracy"],
                    "severity_from_catalog": severity,
                },
            )
            out.append(existing.id)
            continue
        ra = evidence["robust_accuracy"]
        row = _create(
            tx,
            v,
            title=f"{threat}: robust accuracy {ra:.3f} fails the gate "
            f"({', '.join(str(r['rule']) for r in rules)})",
            threat=threat,
            catalog_entry=entry.id if entry else None,
            severity=severity,
            owner=entry.owner[:128] if entry else tx.actor,
            remediation="",
            reproduce=reproduce,
            evidence=evidence,
            origin={"origin": "gate", "gate_record": gate.id},
        )
        out.append(row.id)
    s.flush()
    return out
