"""The registry's operations: principals and roles, registering versions with their lineage,
attaching evaluations and gate verdicts, approvals, aliases moved only through a passed gate,
history, rollback and break-glass. Every change is one :meth:`RegistryStore.write` transaction
with its audit event; every refusal is a :class:`RegistryError` raised before anything changed.

References to a version: ``NAME@N`` (version N), ``NAME@latest``, or ``NAME:ALIAS`` (what the
alias points to now).
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robustops import __version__
from robustops._util import environment, tensors_sha256
from robustops.evaluation.result import SuiteResult
from robustops.registry.audit import AuditVerdict, canonical_json, verify_chain
from robustops.registry.models import (
    Alias,
    AliasEvent,
    AliasPolicy,
    Approval,
    AuditEventRow,
    AuditKeyRow,
    ChainHead,
    DatasetVersion,
    Evaluation,
    GateRecord,
    ModelVersion,
    Principal,
    Vulnerability,
    VulnerabilityVersion,
)
from robustops.registry.store import (
    ENV_PRINCIPAL,
    RegistryError,
    RegistryStore,
    WriteTx,
    parse_time,
)
from robustops.threats.catalog import ThreatCatalog

ROLES = ("viewer", "engineer", "approver", "admin")
"""Roles in increasing order of power; each may do what the ones before it may."""
PROTECTED = frozenset({"production"})
"""Aliases that always need a gate policy, a passed gate record and an approval to move; any
other alias becomes protected once a policy is set for it."""
BLOCKING_STATUSES = ("open", "triaged")
"""Statuses of a critical vulnerability that block promoting the versions it affects."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def resolve_actor(flag: str | None = None) -> str:
    """Who is acting: ``flag`` (``--as``), else ``$ROBUSTOPS_PRINCIPAL``, else the OS user.
    Identity is asserted, as a git author is; the registry records it on every event."""
    name = flag or os.environ.get(ENV_PRINCIPAL) or getpass.getuser()
    return _check_name(name, "principal")


@functools.cache
def _environment() -> dict[str, str]:
    """:func:`robustops._util.environment`, read once per process (its package-metadata
    lookups took ~40 ms, as long as hashing 50 MB, on every register)."""
    return environment()


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"{what}: {name!r} is not a valid name (letters, digits, '.', '_', '-'; ≤ 128)"
        )
    return name


def _check_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise RegistryError(f"alias: {alias!r} is not a valid alias (lower case, digits, _ -)")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed version reference."""

    name: str
    version: int | None = None  # None with alias None: the latest version
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        """``NAME@N``, ``NAME@latest`` or ``NAME:ALIAS``."""
        if "@" in text:
            name, _, v = text.partition("@")
            if v == "latest":
                return cls(_check_name(name, "model"))
            if not v.isdigit():
                raise RegistryError(f"version: {text!r} must be NAME@N, NAME@latest or NAME:ALIAS")
            return cls(_check_name(name, "model"), version=int(v))
        if ":" in text:
            name, _, alias = text.partition(":")
            return cls(_check_name(name, "model"), alias=_check_alias(alias))
        raise RegistryError(f"version: {text!r} must be NAME@N, NAME@latest or NAME:ALIAS")


def label(v: ModelVersion) -> str:
    """``NAME@N`` of a version."""
    return f"{v.name}@{v.version}"


def _git_commit(folder: Path) -> str | None:
    """The git commit of ``folder``'s work tree (``+dirty`` when it has changes), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def tensor_sha256(weights: Path) -> str | None:
    """The tensor-content hash of a safetensors file (names, dtypes, shapes and values in key
    order, as :func:`robustops._util.state_dict_sha256`), or None when it is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return tensors_sha256(f.keys(), f.get_tensor)
    except (SafetensorError, OSError, ValueError):
        return None


def evaluation_summary(result: SuiteResult) -> dict[str, Any]:
    """What the registry keeps of a result besides the file: identity, the figures per threat,
    and the exact attack parameters (so a vulnerability can be replayed)."""
    return {
        "name": result.name,
        "created_at": result.created_at,
        "schema_version": result.schema_version,
        "content_sha256": getattr(result, "content_sha256", None),
        "seed": result.seed,
        "n_samples": result.n_samples,
        "tier": getattr(result, "tier", None),
        "clean_accuracy": result.clean_accuracy,
        "catalog_sha256": getattr(result, "catalog_sha256", None),
        "robustops": result.environment.get("robustops"),
        "data_fingerprint": result.data.get("fingerprint"),
        "threats": [
            {
                "name": t.name,
                "threat": t.threat.model_dump(mode="json"),
                "robust_accuracy": t.robust_accuracy,
                "attack_success_rate": t.attack_success_rate,
                "n_attacked": t.n_attacked,
                "attacks": [{"name": a.name, "params": a.params} for a in t.attacks],
            }
            for t in result.threats
        ],
    }


class Registry:
    """The operations of one registry (see the module docstring)."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    @classmethod
    def open(cls, home: str | Path | None = None, url: str | None = None) -> Registry:
        """:meth:`RegistryStore.open` wrapped in the operations."""
        return cls(RegistryStore.open(home, url))

    def close(self) -> None:
        """Release the database connections."""
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- principals ------------------------------------------------------------------------

    def _require(self, session: Session, actor: str, role: str) -> Principal:
        p = session.get(Principal, actor)
        if p is None:
            raise RegistryError(
                f"principal: {actor!r} is not known to this registry; an admin adds it with "
                "`robustops registry principal add NAME --role ROLE`"
            )
        if ROLES.index(p.role) < ROLES.index(role):
            raise RegistryError(f"principal: {actor!r} is {p.role}; this needs {role} or above")
        return p

    def add_principal(self, actor: str, name: str, role: str) -> Principal:
        """Add (or change the role of) a principal; needs admin, except for the very first
        principal of a registry, who must be an admin."""
        _check_name(name, "principal")
        if role not in ROLES:
            raise RegistryError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        with self.store.write(actor) as tx:
            s = tx.session
            first = s.execute(select(func.count()).select_from(Principal)).scalar_one() == 0
            if first and role != "admin":
                raise RegistryError("role: the first principal of a registry must be an admin")
            if not first:
                self._require(s, actor, "admin")
            p = s.get(Principal, name)
            old = p.role if p else None
            if p is None:
                p = Principal(name=name, role=role, created_at=tx.at, created_by=actor)
                s.add(p)
            else:
                p.role = role
            tx.log("principal", name, {"role": role, "previous_role": old})
            return p

    def principals(self) -> list[Principal]:
        """Every principal, by name."""
        with self.store.read() as s:
            return list(s.scalars(select(Principal).order_by(Principal.name)))

    # -- versions --------------------------------------------------------------------------

    def version_in(self, s: Session, ref: str | Ref) -> ModelVersion:
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        if r.alias is not None:
            a = s.get(Alias, (r.name, r.alias))
            if a is None:
                raise RegistryError(f"version: {r.name}:{r.alias} points to no version")
            v = s.get(ModelVersion, a.version_id)
        elif r.version is None:
            v = s.scalars(
                select(ModelVersion)
                .where(ModelVersion.name == r.name)
                .order_by(ModelVersion.version.desc())
                .limit(1)
            ).first()
        else:
            v = s.scalars(
                select(ModelVersion).where(
                    ModelVersion.name == r.name, ModelVersion.version == r.version
                )
            ).first()
        if v is None:
            known = s.scalars(select(ModelVersion.version).where(ModelVersion.name == r.name)).all()
            hint = f"known versions: {sorted(known)}" if known else f"no model called {r.name!r}"
            raise RegistryError(f"version: {ref if isinstance(ref, str) else r} not found ({hint})")
        return v

    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names (:class:`RegistryError` when there is none)."""
        with self.store.read() as s:
            return self.version_in(s, ref)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions (of one model), oldest first."""
        with self.store.read() as s:
            q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
            if name:
                q = q.where(ModelVersion.name == name)
            return list(s.scalars(q))

    def register(
        self,
        actor: str,
        name: str,
        weights: str | Path,
        *,
        expected_sha256: str | None = None,
        sidecar: dict[str, Any] | None = None,
        spec_text: str | None = None,
        catalog: ThreatCatalog | None = None,
        parent: str | None = None,
        results: Sequence[str | Path] = (),
        description: str = "",
        git_folder: str | Path | None = None,
    ) -> ModelVersion:
        """Register one weights file as the next version of ``name`` with its lineage.

        ``sidecar`` is the training run's JSON (``<weights>.json``: recipe, data fingerprint and
        split, metrics, environment); ``spec_text`` the pipeline spec it came from; ``catalog``
        its threat catalog; ``parent`` the version it was fine-tuned from; ``results`` result
        JSONs that judged it (each must be about these weights). The files are copied into the
        artifact store before the row is written. The same weights registered again under the
        same name (a rerun) give back the existing version, with the results attached to it.
        """
        _check_name(name, "model")
        path = Path(weights)
        if not path.is_file():
            raise RegistryError(f"weights: {path} is not a file")
        with self.store.read() as s:
            self._require(s, actor, "engineer")
            if parent is not None:
                self.version_in(s, parent)
        loaded = [(Path(r), SuiteResult.load(r)) for r in results]
        sha, size = self.store.artifacts.put_file(path, expected_sha256)
        for rpath, res in loaded:
            _check_result_weights(res, sha, str(rpath))
        state = tensor_sha256(path)
        side = sidecar or {}
        if side.get("state_sha256") and state and side["state_sha256"] != state:
            raise RegistryError(
                f"sidecar: its state_sha256 {side['state_sha256']} does not match the tensors "
                f"of {path} ({state})"
            )
        spec_sha = self.store.artifacts.put_bytes(spec_text.encode()) if spec_text else None
        catalog_sha = (
            self.store.artifacts.put_bytes(catalog.canonical_json().encode()) if catalog else None
        )
        result_shas = [self.store.artifacts.put_file(rp)[0] for rp, _ in loaded]
        commit = _git_commit(Path(git_folder) if git_folder else path.resolve().parent)
        with self.store.write(actor) as tx:
            s = tx.session
            self._require(s, actor, "engineer")
            parent_row = self.version_in(s, parent) if parent else None
            same = s.scalars(
                select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.weights_sha256 == sha
                )
            ).first()
            if same is not None:  # the same weights again (a rerun): one version, more results
                for (_, res), rsha in zip(loaded, result_shas, strict=True):
                    self._attach(tx, same, res, rsha)
                return same
            number = (
                s.execute(
                    select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
                ).scalar_one()
                or 0
            ) + 1
            v = ModelVersion(
                name=name,
                version=number,
                weights_sha256=sha,
                weights_size=size,
                weights_name=path.name,
                state_sha256=state,
                spec_sha256=spec_sha,
                catalog_sha256=catalog_sha,
                data_fingerprint=(side.get("data") or {}).get("fingerprint"),
                data=side.get("data") or {},
                recipe={
                    "recipe": side.get("recipe"),
                    "train": side.get("train"),
                    "seed": side.get("seed"),
                    "model_factory": side.get("model_factory"),
                    "model_kwargs": side.get("model_kwargs"),
                },
                metrics=_training_metrics(side),
                parent_id=parent_row.id if parent_row else None,
                robustops_version=__version__,
                environment=side.get("environment") or dict(_environment()),
                git_commit=commit,
                description=description,
                registered_by=actor,
                registered_at=tx.at,
            )
            s.add(v)
            s.flush()
            tx.log(
                "register",
                label(v),
                {
                    "weights_sha256": sha,
                    "state_sha256": state,
                    "spec_sha256": spec_sha,
                    "catalog_sha256": catalog_sha,
                    "data_fingerprint": v.data_fingerprint,
                    "parent": label(parent_row) if parent_row else None,
                    "git_commit": commit,
                },
            )
            for (_, res), rsha in zip(loaded, result_shas, strict=True):
                self._attach(tx, v, res, rsha)
            return v

    def attach_evaluation(self, actor: str, ref: str | None, result: str | Path) -> Evaluation:
        """Attach a result JSON to the version ``ref`` (its weights hash must match), or with
        ``ref`` None to the newest version with the weights the result judged."""
        res = SuiteResult.load(result)
        weights = res.model.get("weights_sha256")
        if not isinstance(weights, str):
            raise RegistryError(f"result: {result} records no weights_sha256")
        with self.store.read() as s:
            self._require(s, actor, "engineer")
            self._version_for_weights(s, weights, ref)
        rsha, _ = self.store.artifacts.put_file(result)
        with self.store.write(actor) as tx:
            self._require(tx.session, actor, "engineer")
            return self._attach(tx, self._version_for_weights(tx.session, weights, ref), res, rsha)

    def _attach(self, tx: WriteTx, v: ModelVersion, res: SuiteResult, rsha: str) -> Evaluation:
        s = tx.session
        e = s.scalars(
            select(Evaluation).where(
                Evaluation.version_id == v.id, Evaluation.result_sha256 == rsha
            )
        ).first()
        if e is not None:
            return e
        e = Evaluation(
            version_id=v.id,
            result_sha256=rsha,
            summary=evaluation_summary(res),
            attached_by=tx.actor,
            attached_at=tx.at,
        )
        s.add(e)
        s.flush()
        tx.log("evaluation", label(v), {"result_sha256": rsha, "name": res.name})
        return e

    def evaluations(self, ref: str) -> list[Evaluation]:
        """The results attached to a version, oldest first."""
        with self.store.read() as s:
            v = self.version_in(s, ref)
            return list(
                s.scalars(
                    select(Evaluation).where(Evaluation.version_id == v.id).order_by(Evaluation.id)
                )
            )

    # -- gate, policy, approval ------------------------------------------------------------

    def record_gate(
        self,
        actor: str,
        report: dict[str, Any],
        *,
        result: str | Path,
        baseline: str | Path | None = None,
        ref: str | None = None,
    ) -> GateRecord:
        """Record a gate verdict (``GateReport`` JSON) on ``result`` for the version whose
        weights the result judged (``ref`` narrows it when several versions share those
        weights). The record holds the hash of the report's effective policy
        (:func:`policy_sha256`); the result is attached as an evaluation too."""
        res = SuiteResult.load(result)
        weights = res.model.get("weights_sha256")
        if not isinstance(weights, str):
            raise RegistryError(f"result: {result} records no weights_sha256; cannot tie a gate")
        if (report.get("new") or {}).get("model_sha256") not in (None, weights):
            raise RegistryError("gate report: it is about other weights than the result given")
        with self.store.read() as s:  # refuse before copying anything into the store
            self._require(s, actor, "engineer")
        rsha, _ = self.store.artifacts.put_file(result)
        if not isinstance(report.get("policy"), dict):
            raise RegistryError("gate report: it holds no policy")
        psha = self.store.artifacts.put_bytes(canonical_json(report["policy"]).encode())
        bsha = self.store.artifacts.put_file(baseline)[0] if baseline else None
        with self.store.write(actor) as tx:
            s = tx.session
            self._require(s, actor, "engineer")
            v = self._version_for_weights(s, weights, ref)
            self._attach(tx, v, res, rsha)
            g = GateRecord(
                version_id=v.id,
                weights_sha256=weights,
                result_sha256=rsha,
                baseline_sha256=bsha,
                policy_sha256=psha,
                passed=bool(report.get("passed")),
                report=report,
                recorded_by=actor,
                recorded_at=tx.at,
            )
            s.add(g)
            s.flush()
            failed = [r.get("rule") for r in report.get("rules", []) if r.get("status") == "fail"]
            tx.log(
                "gate",
                label(v),
                {
                    "gate_record": g.id,
                    "passed": g.passed,
                    "weights_sha256": weights,
                    "result_sha256": rsha,
                    "policy_sha256": psha,
                    "baseline_sha256": bsha,
                    "failed_rules": failed,
                },
            )
            if not g.passed:  # one vulnerability per failed threat (see vulnerabilities.py)
                from robustops.registry.vulnerabilities import open_from_gate

                open_from_gate(self.store, tx, v, g, res)
            return g

    def _version_for_weights(self, s: Session, weights: str, ref: str | None) -> ModelVersion:
        if ref is not None:
            v = self.version_in(s, ref)
            if v.weights_sha256 != weights:
                raise RegistryError(
                    f"version: {label(v)} has weights {v.weights_sha256[:12]}…, the result "
                    f"judged {weights[:12]}…"
                )
            return v
        found = s.scalars(
            select(ModelVersion)
            .where(ModelVersion.weights_sha256 == weights)
            .order_by(ModelVersion.id.desc())
        ).first()
        if found is None:
            raise RegistryError(
                f"result: no registered version has weights {weights}; register them first"
            )
        return found

    def set_policy(self, actor: str, model: str, alias: str, policy: dict[str, Any]) -> AliasPolicy:
        """Put the gate policy ``policy`` (a ``GatePolicy`` as JSON data, tier included) in
        force for ``model:alias`` (admin only); from then on moving the alias needs a passed
        gate record under exactly this policy (same :func:`policy_sha256`)."""
        _check_name(model, "model")
        _check_alias(alias)
        with self.store.read() as s:  # refuse before copying anything into the store
            self._require(s, actor, "admin")
        psha = self.store.artifacts.put_bytes(canonical_json(policy).encode())
        with self.store.write(actor) as tx:
            s = tx.session
            self._require(s, actor, "admin")
            row = s.get(AliasPolicy, (model, alias))
            old = row.policy_sha256 if row else None
            if row is None:
                row = AliasPolicy(model_name=model, alias=alias, policy_sha256=psha)
                s.add(row)
            row.policy_sha256, row.set_by, row.set_at = psha, actor, tx.at
            tx.log("policy", f"{model}:{alias}", {"policy_sha256": psha, "previous": old})
            return row

    def approve(
        self, actor: str, ref: str, alias: str = "production", comment: str = ""
    ) -> Approval:
        """Approve a version for ``alias`` (approver or admin, never its registrant)."""
        _check_alias(alias)
        with self.store.write(actor) as tx:
            s = tx.session
            self._require(s, actor, "approver")
            v = self.version_in(s, ref)
            if v.registered_by == actor:
                raise RegistryError(
                    f"approval: {actor!r} registered {label(v)}; four eyes: another principal "
                    "must approve it"
                )
            a = Approval(
                version_id=v.id, alias=alias, principal=actor, comment=comment, approved_at=tx.at
            )
            s.add(a)
            s.flush()
            tx.log("approve", label(v), {"alias": alias, "approval": a.id, "comment": comment})
            return a

    # -- aliases ---------------------------------------------------------------------------

    def _protected(self, s: Session, model: str, alias: str) -> bool:
        """Whether moving ``model:alias`` needs the gate (a policy is set, or it is always
        protected)."""
        return alias in PROTECTED or s.get(AliasPolicy, (model, alias)) is not None

    def _promotion_checks(
        self, s: Session, v: ModelVersion, alias: str, *, need_approval: bool = True
    ) -> tuple[GateRecord, Approval | None]:
        """The gate record (and approval) that allow ``v`` onto the protected ``alias``."""
        policy = s.get(AliasPolicy, (v.name, alias))
        if policy is None:
            raise RegistryError(
                f"promotion: no gate policy is in force for {v.name}:{alias}; an admin sets one "
                f"with `robustops registry policy {v.name} {alias} POLICY_FILE`"
            )
        gate = s.scalars(
            select(GateRecord)
            .where(
                GateRecord.weights_sha256 == v.weights_sha256,
                GateRecord.policy_sha256 == policy.policy_sha256,
            )
            .order_by(GateRecord.id.desc())
            .limit(1)
        ).first()
        if gate is None:
            raise RegistryError(
                f"promotion: {label(v)} has no gate record under the policy in force for "
                f"{v.name}:{alias} ({policy.policy_sha256[:12]}…); run the gate with --register"
            )
        if not gate.passed:
            raise RegistryError(
                f"promotion: the newest gate record of {label(v)} under the policy in force "
                f"(#{gate.id}, {gate.recorded_at}) failed"
            )
        approval = None
        if need_approval:
            approval = s.scalars(
                select(Approval)
                .where(
                    Approval.version_id == v.id,
                    Approval.alias == alias,
                    Approval.principal != v.registered_by,
                )
                .order_by(Approval.id.desc())
                .limit(1)
            ).first()
            if approval is None:
                raise RegistryError(
                    f"promotion: {label(v)} has no approval for {alias} by a principal other "
                    f"than its registrant {v.registered_by!r}"
                )
        blocking = s.scalars(
            select(Vulnerability.id)
            .join(VulnerabilityVersion, VulnerabilityVersion.vulnerability_id == Vulnerability.id)
            .where(
                VulnerabilityVersion.version_id == v.id,
                Vulnerability.severity == "critical",
                Vulnerability.status.in_(BLOCKING_STATUSES),
            )
        ).all()
        if blocking:
            raise RegistryError(
                f"promotion: {label(v)} has open critical vulnerabilities: {', '.join(blocking)}"
            )
        try:
            self.store.artifacts.verify(v.weights_sha256)
        except Exception as exc:
            raise RegistryError(f"promotion: the weights of {label(v)}: {exc}") from None
        return gate, approval

    def move_alias(
        self, actor: str, ref: str, alias: str, *, break_glass: str | None = None
    ) -> AliasEvent:
        """Point ``alias`` of the version's model at the version ``ref``. A protected alias
        needs a gate policy in force, a passed gate record for exactly these weights under it,
        an approval by someone other than the registrant, intact weights and no open critical
        vulnerability, unless an admin breaks glass with a reason (logged as such)."""
        _check_alias(alias)
        with self.store.write(actor) as tx:
            s = tx.session
            v = self.version_in(s, ref)
            gate = approval = None
            kind = "set"
            if break_glass is not None:
                self._require(s, actor, "admin")
                if not break_glass.strip():
                    raise RegistryError("break-glass: a reason is required")
                kind = "break-glass"
            else:
                self._require(s, actor, "engineer")
                if self._protected(s, v.name, alias):
                    gate, approval = self._promotion_checks(s, v, alias)
                    kind = "promote"
            return self._move(tx, v, alias, kind, break_glass or "", gate, approval)

    def _move(
        self,
        tx: WriteTx,
        v: ModelVersion,
        alias: str,
        kind: str,
        reason: str,
        gate: GateRecord | None,
        approval: Approval | None,
        evidence: dict[str, Any] | None = None,
    ) -> AliasEvent:
        s = tx.session
        current = s.get(Alias, (v.name, alias))
        previous = current.version_id if current else None
        payload: dict[str, Any] = {
            "alias": alias,
            "version": label(v),
            "weights_sha256": v.weights_sha256,
            "previous": label(s.get(ModelVersion, previous)) if previous else None,  # type: ignore[arg-type]
            "kind": kind,
            "gate_record": gate.id if gate else None,
            "approval": approval.id if approval else None,
            "reason": reason,
        }
        if evidence is not None:
            payload["evidence"] = evidence
        ev = tx.log(
            "break-glass" if kind == "break-glass" else "alias", f"{v.name}:{alias}", payload
        )
        row = AliasEvent(
            model_name=v.name,
            alias=alias,
            version_id=v.id,
            previous_version_id=previous,
            kind=kind,
            actor=tx.actor,
            reason=reason,
            gate_record_id=gate.id if gate else None,
            approval_id=approval.id if approval else None,
            at=tx.at,
            audit_seq=ev.seq,
        )
        s.add(row)
        s.flush()
        if current is None:
            s.add(
                Alias(
                    model_name=v.name, alias=alias, version_id=v.id, moved_at=tx.at, event_id=row.id
                )
            )
        else:
            current.version_id, current.moved_at, current.event_id = v.id, tx.at, row.id
        return row

    def rollback(
        self,
        actor: str,
        model: str,
        alias: str,
        *,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> AliasEvent:
        """Move ``model:alias`` back to the previous version that held it, re-checking (for a
        protected alias) that its gate record still stands under the policy in force.
        ``reason`` (one line) is kept on the alias event and in the audit payload, with
        ``evidence`` (JSON data: what made someone or something roll back)."""
        _check_alias(alias)
        if evidence is not None:
            try:
                canonical_json(evidence)
            except (TypeError, ValueError) as exc:
                raise RegistryError(f"evidence: not JSON data ({exc})") from None
        with self.store.write(actor) as tx:
            s = tx.session
            self._require(s, actor, "engineer")
            current = s.get(Alias, (model, alias))
            if current is None:
                raise RegistryError(f"rollback: {model}:{alias} points to no version")
            earlier = s.scalars(
                select(AliasEvent.version_id)
                .where(
                    AliasEvent.model_name == model,
                    AliasEvent.alias == alias,
                    AliasEvent.version_id.is_not(None),
                    AliasEvent.version_id != current.version_id,
                )
                .order_by(AliasEvent.id.desc())
                .limit(1)
            ).first()
            if earlier is None:
                raise RegistryError(f"rollback: {model}:{alias} has held no other version")
            v = s.get(ModelVersion, earlier)
            assert v is not None
            gate = approval = None
            if self._protected(s, model, alias):
                gate, approval = self._promotion_checks(s, v, alias)
            return self._move(
                tx, v, alias, "rollback", reason.strip(), gate, approval, evidence=evidence
            )

    def aliases(self, model: str) -> dict[str, ModelVersion]:
        """Where each alias of ``model`` points now."""
        with self.store.read() as s:
            rows = s.scalars(select(Alias).where(Alias.model_name == model)).all()
            out = {}
            for a in rows:
                v = s.get(ModelVersion, a.version_id)
                assert v is not None
                out[a.alias] = v
            return out

    def history(self, model: str, alias: str, limit: int | None = None) -> list[AliasEvent]:
        """Every move of ``model:alias``, newest first."""
        with self.store.read() as s:
            q = (
                select(AliasEvent)
                .where(AliasEvent.model_name == model, AliasEvent.alias == alias)
                .order_by(AliasEvent.at.desc(), AliasEvent.id.desc())
            )
            return list(s.scalars(q.limit(limit) if limit else q))

    def alias_at(self, model: str, alias: str, at: str) -> ModelVersion | None:
        """The version ``model:alias`` pointed to at time ``at`` (ISO-8601), or None."""
        when = parse_time(at, "at")
        with self.store.read() as s:
            vid = s.scalars(
                select(AliasEvent.version_id)
                .where(
                    AliasEvent.model_name == model,
                    AliasEvent.alias == alias,
                    AliasEvent.at <= when,
                )
                .order_by(AliasEvent.at.desc(), AliasEvent.id.desc())
                .limit(1)
            ).first()
            return s.get(ModelVersion, vid) if vid is not None else None

    def labels(self, version_ids: Iterable[int | None]) -> dict[int, str]:
        """``NAME@N`` of each version id, in one query."""
        ids = {i for i in version_ids if i is not None}
        if not ids:
            return {}
        with self.store.read() as s:
            rows = s.execute(
                select(ModelVersion.id, ModelVersion.name, ModelVersion.version).where(
                    ModelVersion.id.in_(ids)
                )
            ).all()
        return {i: f"{n}@{v}" for i, n, v in rows}

    def version_label(self, version_id: int | None) -> str | None:
        """``NAME@N`` of a version id (None for None)."""
        if version_id is None:
            return None
        with self.store.read() as s:
            v = s.get(ModelVersion, version_id)
            return label(v) if v else None

    def accepted_gate(self, ref: str, alias: str = "production") -> GateRecord | None:
        """The newest *passed* gate record of the version ``ref``'s weights under the gate
        policy in force for its model's ``alias`` (None when no policy is set or no passed
        record exists): the result that accepted it there."""
        _check_alias(alias)
        with self.store.read() as s:
            v = self.version_in(s, ref)
            policy = s.get(AliasPolicy, (v.name, alias))
            if policy is None:
                return None
            return s.scalars(
                select(GateRecord)
                .where(
                    GateRecord.weights_sha256 == v.weights_sha256,
                    GateRecord.policy_sha256 == policy.policy_sha256,
                    GateRecord.passed.is_(True),
                )
                .order_by(GateRecord.id.desc())
                .limit(1)
            ).first()

    def record_run(
        self,
        actor: str,
        action: str,
        subject: str,
        path: str | Path,
        summary: dict[str, Any],
    ) -> tuple[str, int]:
        """Store the record file of a run (a canary run, …) as an artifact and log one audit
        event ``action`` about ``subject`` with its hash and ``summary`` (engineer or above);
        returns ``(artifact sha256, audit seq)``."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", action):
            raise RegistryError(f"action: {action!r} must be a lower-case word (≤ 32)")
        with self.store.read() as s:
            self._require(s, actor, "engineer")
        sha, _ = self.store.artifacts.put_file(path)
        with self.store.write(actor) as tx:
            self._require(tx.session, actor, "engineer")
            ev = tx.log(action, subject, {"record_sha256": sha, **summary})
            return sha, ev.seq

    # -- data sets -------------------------------------------------------------------------

    def register_dataset(
        self,
        actor: str,
        name: str,
        kind: str,
        path: str | Path,
        *,
        meta: dict[str, Any] | None = None,
        n_samples: int | None = None,
        fmt: str | None = None,
        description: str = "",
    ) -> DatasetVersion:
        """Register a data set file as the next version of ``name`` with its lineage ``meta``
        (see :func:`robustops.registry.datasets.register_dataset`)."""
        from robustops.registry.datasets import register_dataset

        return register_dataset(
            self,
            actor,
            name,
            kind,
            path,
            meta=meta,
            n_samples=n_samples,
            fmt=fmt,
            description=description,
        )

    def dataset(self, ref: str) -> DatasetVersion:
        """The data set version ``NAME@N``, ``NAME@latest`` or ``NAME`` (latest)."""
        from robustops.registry.datasets import get_dataset

        return get_dataset(self, ref)

    def datasets(self, name: str | None = None, kind: str | None = None) -> list[DatasetVersion]:
        """Registered data set versions (of one name or kind), by name and version."""
        from robustops.registry.datasets import list_datasets

        return list_datasets(self, name=name, kind=kind)

    def dataset_path(self, ds: DatasetVersion) -> Path:
        """The verified stored file of a data set version."""
        from robustops.registry.datasets import dataset_path

        return dataset_path(self, ds)

    # -- audit -----------------------------------------------------------------------------

    def audit_events(self, batch: int = 5000) -> Iterator[AuditEventRow]:
        """Every audit event in sequence order, streamed."""
        with self.store.read() as s:
            yield from s.scalars(
                select(AuditEventRow).order_by(AuditEventRow.seq).execution_options(yield_per=batch)
            )

    def audit_rows(self, batch: int = 5000) -> Iterator[Any]:
        """Every audit event in sequence order as plain rows (attribute access by column
        name, no ORM objects): what verification streams, about twice as fast."""
        table = AuditEventRow.__table__
        with self.store.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(
                select(table).order_by(table.c.seq)
            )
            yield from result

    def verify_audit(
        self,
        *,
        pinned: str | None = None,
        full: bool = False,
        expect_head: tuple[int, str] | None = None,
    ) -> AuditVerdict:
        """Check the whole audit chain (see :func:`robustops.registry.audit.verify_chain`).
        Without ``expect_head``, the chain must still hold the head that the ``chain_head`` row
        records, so deleting the newest events is detected unless that row was rewound too."""
        with self.store.read() as s:
            keys = {k.key_id: bytes.fromhex(k.public_key) for k in s.scalars(select(AuditKeyRow))}
            head = s.get(ChainHead, 1)
            if (
                expect_head is None
                and head is not None
                and head.seq > 0
                and re.fullmatch("[0-9a-f]{64}", head.hash)
            ):
                expect_head = (head.seq, head.hash)
        return verify_chain(
            _Replayable(self), keys, pinned=pinned, full=full, expect_head=expect_head
        )

    def recent_events(self, n: int) -> list[AuditEventRow]:
        """The newest ``n`` audit events, oldest first."""
        with self.store.read() as s:
            rows = s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(n))
            return list(rows)[::-1]


@dataclass(frozen=True)
class _Replayable:
    """The audit events as an iterable that re-runs its query on every pass (verification
    scans a second time to name the first bad signature)."""

    registry: Registry

    def __iter__(self) -> Iterator[Any]:
        return self.registry.audit_rows()


def policy_sha256(policy: dict[str, Any]) -> str:
    """The hash that identifies a gate policy: sha256 of its canonical JSON (what a gate
    report embeds as ``policy``), so the same rules give the same hash whatever file they
    came from."""
    return hashlib.sha256(canonical_json(policy).encode()).hexdigest()


def _check_result_weights(result: SuiteResult, weights_sha256: str, where: str) -> None:
    judged = result.model.get("weights_sha256")
    if judged != weights_sha256:
        raise RegistryError(
            f"result: {where} judged weights {str(judged)[:12]}…, not these "
            f"({weights_sha256[:12]}…)"
        )


def _training_metrics(side: dict[str, Any]) -> dict[str, Any]:
    history = side.get("history") or []
    last = history[-1] if history else {}
    return {
        k: v
        for k, v in {
            "epochs_run": side.get("epochs_run"),
            "final": side.get("final"),
            "best_epoch": side.get("best_epoch"),
            "best_val_robust_accuracy": side.get("best_val_robust_accuracy"),
            "last_epoch": last,
            "wall_time_s": side.get("wall_time_s"),
        }.items()
        if v is not None
    }
