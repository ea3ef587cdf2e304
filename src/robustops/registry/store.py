"""Opening the registry: the database (SQLite file or any SQLAlchemy URL), its migrations, the
artifact store and the audit key, and the one write path every state change goes through.

A registry lives in a *home* folder::

    <home>/registry.db             the SQLite store (unless a URL names another database)
    <home>/artifacts/sha256/…      weights, specs, results, reports (content-addressed)
    <home>/keys/audit-ed25519.pem  the private key that signs the audit log (mode 0600)

Every state change runs in :meth:`RegistryStore.write`: one transaction that first locks the
single ``chain_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite),
makes its checks and changes, appends its signed audit events and moves the head, then commits.
Concurrent writers in any number of processes therefore apply one after another, each seeing the
state the previous one left; a writer killed at any point leaves either all of its rows and
events or none of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from robustops.errors import RobustOpsError
from robustops.registry.artifacts import ArtifactStore
from robustops.registry.audit import (
    AuditEvent,
    AuditKey,
    default_key_path,
    format_time,
    seal,
    utc_now,
)
from robustops.registry.models import AuditEventRow, AuditKeyRow, ChainHead, Principal

ENV_HOME = "ROBUSTOPS_REGISTRY"
ENV_URL = "ROBUSTOPS_REGISTRY_URL"
ENV_PRINCIPAL = "ROBUSTOPS_PRINCIPAL"
_MIGRATIONS = Path(__file__).with_name("migrations")
_SQLITE_IMMEDIATE = "robustops_immediate"


class RegistryError(RobustOpsError):
    """A registry request that cannot be carried out (unknown version, missing gate record or
    approval, a role that does not allow it, an artifact that no longer matches its row);
    nothing was changed. The CLI prints it on one line and exits 2."""


def parse_time(text: str, field_name: str = "time") -> str:
    """A user-given time (ISO-8601; naive times are UTC) in the registry's format."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RegistryError(
            f"{field_name}: {text!r} is not an ISO-8601 time (e.g. 2026-12-07T10:00:00Z)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return format_time(t)


def default_home() -> Path:
    """The registry home: ``$ROBUSTOPS_REGISTRY`` or ``./registry``."""
    return Path(os.environ.get(ENV_HOME) or "registry")


def _sqlite_engine(url: str) -> Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 120})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=120000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is there), holding the
    database's write lock so that processes opening a new registry at once do not race."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    locked = engine.execution_options(**{_SQLITE_IMMEDIATE: True})
    with locked.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7246134)")
        if MigrationContext.configure(conn).get_current_revision() != head:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


@dataclass
class WriteTx:
    """One open write transaction: its session, the acting principal, its time, and the
    audit events it appends (sealed in order on the locked chain head)."""

    session: Session
    actor: str
    at: str
    key: AuditKey
    head: ChainHead
    events: list[AuditEvent] = field(default_factory=list)

    def log(self, action: str, subject: str, payload: dict[str, Any]) -> AuditEvent:
        """Append one signed event after the current head; returns it."""
        previous: Any = self.events[-1] if self.events else self.head
        ev = seal(
            previous if previous.seq else None,
            at=self.at,
            actor=self.actor,
            action=action,
            subject=subject,
            payload=payload,
            key=self.key,
        )
        self.events.append(ev)
        self.session.add(AuditEventRow(**ev.as_row()))
        return ev


class RegistryStore:
    """The database, the artifact store and the audit key of one registry home."""

    def __init__(self, home: Path, engine: Engine, key: AuditKey) -> None:
        self.home = home
        self.engine = engine
        self.artifacts = ArtifactStore(home / "artifacts")
        self.key = key
        self._writer = engine.execution_options(**{_SQLITE_IMMEDIATE: True})

    @classmethod
    def open(cls, home: str | Path | None = None, url: str | None = None) -> RegistryStore:
        """Open (creating and migrating when new) the registry in ``home`` (default
        :func:`default_home`) on ``url`` (default ``$ROBUSTOPS_REGISTRY_URL``, else the SQLite
        file ``<home>/registry.db``)."""
        root = Path(home) if home is not None else default_home()
        root.mkdir(parents=True, exist_ok=True)
        url = url or os.environ.get(ENV_URL) or f"sqlite:///{root / 'registry.db'}"
        try:
            engine = _sqlite_engine(url) if url.startswith("sqlite") else sa.create_engine(url)
            _migrate(engine)
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot open the registry database {url}: {exc}") from None
        key = AuditKey.load_or_create(default_key_path(root))
        store = cls(root, engine, key)
        store._register_key()
        return store

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def _register_key(self) -> None:
        with Session(self.engine) as s:
            if s.get(AuditKeyRow, self.key.key_id) is not None:
                return
        with self.write("system") as tx:
            if tx.session.get(AuditKeyRow, self.key.key_id) is None:
                tx.session.add(
                    AuditKeyRow(
                        key_id=self.key.key_id,
                        public_key=self.key.public_raw.hex(),
                        created_at=tx.at,
                    )
                )
                tx.log("key", self.key.key_id, {"public_key": self.key.public_raw.hex()})

    def read(self) -> Session:
        """A read-only session (the caller closes it; use it as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def write(self, actor: str) -> Iterator[WriteTx]:
        """One serialised write transaction acting as ``actor`` (see the module docstring)."""
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            head = session.execute(
                select(ChainHead).where(ChainHead.id == 1).with_for_update()
            ).scalar_one()
            # Never earlier than the newest event: with clocks that differ between hosts (or
            # step back) the times would otherwise disagree with the order of the changes,
            # and history and alias-at-time, which go by time, would reorder them.
            last_at = session.scalar(select(AuditEventRow.at).where(AuditEventRow.seq == head.seq))
            at = max(utc_now(), last_at or "")
            tx = WriteTx(session=session, actor=actor, at=at, key=self.key, head=head)
            yield tx
            if tx.events:
                last = tx.events[-1]
                head.seq, head.hash, head.signature = last.seq, last.hash, last.signature

    def principal(self, session: Session, name: str) -> Principal | None:
        """The principal called ``name``, or None."""
        return session.get(Principal, name)
