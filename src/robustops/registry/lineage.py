"""A version's lineage as plain data: its own record, the chain of parents it was fine-tuned
from, the evaluations, gate records and approvals about it, and the aliases holding it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from robustops.registry.models import (
    Alias,
    Approval,
    Evaluation,
    GateRecord,
    ModelVersion,
)
from robustops.registry.service import Registry, label

_VERSION_FIELDS = (
    "name",
    "version",
    "weights_sha256",
    "weights_size",
    "weights_name",
    "state_sha256",
    "spec_sha256",
    "catalog_sha256",
    "data_fingerprint",
    "data",
    "recipe",
    "metrics",
    "robustops_version",
    "environment",
    "git_commit",
    "description",
    "registered_by",
    "registered_at",
)


def version_record(v: ModelVersion) -> dict[str, Any]:
    """A version's columns as JSON-ready data, with its ``label`` (``NAME@N``)."""
    return {"label": label(v), **{f: getattr(v, f) for f in _VERSION_FIELDS}}


def lineage(reg: Registry, ref: str) -> dict[str, Any]:
    """Everything the registry knows about ``ref`` (JSON-ready): ``version``, ``parents``
    (labels, nearest first), ``children``, ``evaluations``, ``gates``, ``approvals``,
    ``aliases``."""
    with reg.store.read() as s:
        v = reg.version_in(s, ref)
        parents = []
        p = v
        while p.parent_id is not None:
            p = s.get(ModelVersion, p.parent_id)  # type: ignore[assignment]
            if p is None:
                break
            parents.append(label(p))
        children = [
            label(c) for c in s.scalars(select(ModelVersion).where(ModelVersion.parent_id == v.id))
        ]
        evaluations = [
            {
                "result_sha256": e.result_sha256,
                "attached_by": e.attached_by,
                "attached_at": e.attached_at,
                "summary": e.summary,
            }
            for e in s.scalars(
                select(Evaluation).where(Evaluation.version_id == v.id).order_by(Evaluation.id)
            )
        ]
        gates = [
            {
                "id": g.id,
                "passed": g.passed,
                "result_sha256": g.result_sha256,
                "baseline_sha256": g.baseline_sha256,
                "policy_sha256": g.policy_sha256,
                "recorded_by": g.recorded_by,
                "recorded_at": g.recorded_at,
                "failed_rules": [
                    r.get("rule") for r in g.report.get("rules", []) if r.get("status") == "fail"
                ],
            }
            for g in s.scalars(
                select(GateRecord).where(GateRecord.version_id == v.id).order_by(GateRecord.id)
            )
        ]
        approvals = [
            {
                "alias": a.alias,
                "principal": a.principal,
                "approved_at": a.approved_at,
                "comment": a.comment,
            }
            for a in s.scalars(
                select(Approval).where(Approval.version_id == v.id).order_by(Approval.id)
            )
        ]
        aliases = sorted(a.alias for a in s.scalars(select(Alias).where(Alias.version_id == v.id)))
        return {
            "version": version_record(v),
            "parents": parents,
            "children": children,
            "evaluations": evaluations,
            "gates": gates,
            "approvals": approvals,
            "aliases": aliases,
        }
