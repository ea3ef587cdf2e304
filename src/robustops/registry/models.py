"""The registry's tables (SQLAlchemy 2 declarative mapping).

The schema itself is created and upgraded only by the Alembic migrations in
``robustops/registry/migrations``; ``tests/registry/test_store.py`` checks that the migrations
and these classes agree. Times are ISO-8601 UTC strings with microseconds
(``2026-12-07T01:02:03.123456Z``): they sort lexically in time order on every database, and are
the very strings the audit log signs.

Tables:

- ``principals``: who may act, with a role (viewer < engineer < approver < admin).
- ``model_versions``: one registered weights file and its lineage (``parent_id``).
- ``evaluations``: result JSONs attached to a version (content-addressed artifacts).
- ``gate_records``: gate verdicts for exactly one weights hash under one policy hash.
- ``approvals``: four-eyes approvals of a version for an alias.
- ``alias_policies``: the gate policy in force for a protected alias.
- ``aliases`` / ``alias_events``: where each alias points now, and every move it made.
- ``vulnerabilities`` / ``vulnerability_versions`` / ``vulnerability_notes``: known weaknesses.
- ``datasets``: registered data sets (canary sets, reviewed inputs), content-addressed.
- ``audit_events`` / ``audit_keys`` / ``chain_head``: the signed, hash-chained log.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

HASH = 64  # hex sha256


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Principal(Base):
    """Someone (or a CI job) who acts on the registry."""

    __tablename__ = "principals"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(128))


class ModelVersion(Base):
    """One registered weights file with everything that produced and judged it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    weights_sha256: Mapped[str] = mapped_column(String(HASH), index=True)
    weights_size: Mapped[int] = mapped_column(BigInteger)  # bytes; > 2 GiB happens
    weights_name: Mapped[str | None] = mapped_column(String(255))  # file name when registered
    state_sha256: Mapped[str | None] = mapped_column(String(HASH))
    spec_sha256: Mapped[str | None] = mapped_column(String(HASH))
    catalog_sha256: Mapped[str | None] = mapped_column(String(HASH))
    data_fingerprint: Mapped[str | None] = mapped_column(String(HASH))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    robustops_version: Mapped[str] = mapped_column(String(32))
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[str] = mapped_column(String(32))


class Evaluation(Base):
    """A result JSON that judged a version (its content lives in the artifact store)."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("version_id", "result_sha256", name="uq_evaluations"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    result_sha256: Mapped[str] = mapped_column(String(HASH))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    attached_by: Mapped[str] = mapped_column(String(128))
    attached_at: Mapped[str] = mapped_column(String(32))


class GateRecord(Base):
    """A gate verdict on one result for exactly one weights hash under one policy hash."""

    __tablename__ = "gate_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    weights_sha256: Mapped[str] = mapped_column(String(HASH))
    result_sha256: Mapped[str] = mapped_column(String(HASH))
    baseline_sha256: Mapped[str | None] = mapped_column(String(HASH))
    policy_sha256: Mapped[str] = mapped_column(String(HASH))
    passed: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    recorded_by: Mapped[str] = mapped_column(String(128))
    recorded_at: Mapped[str] = mapped_column(String(32))


class Approval(Base):
    """A four-eyes approval of a version for an alias, by someone other than its registrant."""

    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str] = mapped_column(Text, default="")
    approved_at: Mapped[str] = mapped_column(String(32))


class AliasPolicy(Base):
    """The gate policy in force for an alias of a model: moving the alias needs a passed gate
    record under exactly this policy hash (and an approval)."""

    __tablename__ = "alias_policies"
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy_sha256: Mapped[str] = mapped_column(String(HASH))
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[str] = mapped_column(String(32))


class Alias(Base):
    """Where an alias of a model points now."""

    __tablename__ = "aliases"
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    moved_at: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[int] = mapped_column(Integer)


class AliasEvent(Base):
    """One move of an alias (``version_id`` None: the alias was removed)."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_lookup", "model_name", "alias", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    kind: Mapped[str] = mapped_column(String(16))  # set, promote, rollback, break-glass, remove
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    gate_record_id: Mapped[int | None] = mapped_column(ForeignKey("gate_records.id"))
    approval_id: Mapped[int | None] = mapped_column(ForeignKey("approvals.id"))
    at: Mapped[str] = mapped_column(String(32))
    audit_seq: Mapped[int] = mapped_column(Integer)


class Vulnerability(Base):
    """A known weakness: what breaks, how to reproduce it, who owns it, where it stands."""

    __tablename__ = "vulnerabilities"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # RVULN-0001
    title: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    catalog_entry: Mapped[str | None] = mapped_column(String(128))
    threat: Mapped[str | None] = mapped_column(String(128))
    reproduce: Mapped[dict[str, Any]] = mapped_column(JSON)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    severity: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    remediation: Mapped[str] = mapped_column(Text, default="")
    opened_by: Mapped[str] = mapped_column(String(128))
    opened_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    closed_at: Mapped[str | None] = mapped_column(String(32))


class VulnerabilityVersion(Base):
    """A version a vulnerability affects."""

    __tablename__ = "vulnerability_versions"
    vulnerability_id: Mapped[str] = mapped_column(
        ForeignKey("vulnerabilities.id"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)


class VulnerabilityNote(Base):
    """One change of a vulnerability (status, owner, remediation), in order."""

    __tablename__ = "vulnerability_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vulnerability_id: Mapped[str] = mapped_column(ForeignKey("vulnerabilities.id"), index=True)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[str] = mapped_column(String(32))


class DatasetVersion(Base):
    """One registered version of a data set: a file in the artifact store (by content hash)
    with its kind (``canary``, ``reviewed``, …), format, sample count and lineage (where its
    samples came from: the source spec or result hash, sample indices, request ids, reviewer)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    content_sha256: Mapped[str] = mapped_column(String(HASH), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    format: Mapped[str] = mapped_column(String(32))
    n_samples: Mapped[int] = mapped_column(Integer)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[str] = mapped_column(String(32))

    @property
    def ref(self) -> str:
        """``NAME@N`` of this data set version."""
        return f"{self.name}@{self.version}"


class AuditKeyRow(Base):
    """A public key the audit log was signed with (its id: the sha256 of the raw key)."""

    __tablename__ = "audit_keys"
    key_id: Mapped[str] = mapped_column(String(HASH), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))  # hex of the 32 raw bytes
    created_at: Mapped[str] = mapped_column(String(32))


class AuditEventRow(Base):
    """One signed, hash-chained event (see :mod:`robustops.registry.audit`)."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(256))
    payload: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(HASH))
    prev: Mapped[str] = mapped_column(String(HASH))
    hash: Mapped[str] = mapped_column(String(HASH))
    signature: Mapped[str] = mapped_column(String(128))


class ChainHead(Base):
    """The single row every writer locks first (``SELECT … FOR UPDATE``): it serialises the
    appends to the audit chain across processes and holds the current head."""

    __tablename__ = "chain_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(HASH))
    signature: Mapped[str] = mapped_column(String(128))
