"""The registry on a real PostgreSQL server (started by the ``pg_server`` fixture): the
migrations against the models, the core flow, refusals that change nothing, and concurrent
writers serialised by ``SELECT … FOR UPDATE`` on the chain head."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from typer.testing import CliRunner

from robustops.cli import app
from robustops.registry.models import Base
from robustops.registry.store import RegistryError

from .conftest import (
    ADMIN,
    APPR,
    ENG,
    MODEL,
    PgServer,
    Populated,
    check_consistent,
    concurrent_promotions,
    dump,
    populate,
    record_gate,
    write_result,
)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture
def pg_pop(tmp_path: Path, pg_url: str) -> Iterator[Populated]:
    pop = populate(tmp_path / "home", tmp_path / "files", pg_url)
    yield pop
    pop.reg.close()


def test_it_is_postgresql_and_the_migrations_equal_the_models(pg_pop: Populated) -> None:
    engine = pg_pop.reg.store.engine
    assert engine.dialect.name == "postgresql"
    assert not (pg_pop.home / "registry.db").exists()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version()").scalar_one().startswith("PostgreSQL")
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_core_flow_on_postgresql(pg_pop: Populated, pg_url: str) -> None:
    pop, reg = pg_pop, pg_pop.reg

    def refused(match: str, call: Any, *args: Any, **kwargs: Any) -> None:
        before = dump(reg)
        with pytest.raises(RegistryError, match=match):
            call(*args, **kwargs)
        assert dump(reg) == before

    v1 = pop.ready(1)
    pop.ready(2)
    pop.ready(3, gate=False, approve=False)
    pop.ready(4, approve=False)
    refused("'eng' is engineer", reg.approve, ENG, "m@4")
    refused("has no gate record", reg.move_alias, ENG, "m@3", "production")
    refused("has no approval", reg.move_alias, ENG, "m@4", "production")
    refused("m@9 not found", reg.move_alias, ENG, "m@9", "production")
    refused("points to no version", reg.rollback, ENG, MODEL, "production")
    moves = [reg.move_alias(ENG, f"m@{n}", "production") for n in (1, 2)]
    reg.move_alias(ENG, "m@3", "staging")
    assert [e.id for e in reg.history(MODEL, "production")] == [m.id for m in reversed(moves)]
    assert reg.alias_at(MODEL, "production", "2000-01-01T00:00:00Z") is None
    assert reg.alias_at(MODEL, "production", moves[0].at).version == 1  # type: ignore[union-attr]
    assert reg.alias_at(MODEL, "production", "2999-01-01T00:00:00Z").version == 2  # type: ignore[union-attr]
    # Rollback re-checks the gate: m@1's newest record now fails.
    failing = write_result(pop.files / "regressed.json", v1.weights_sha256, passing=False)
    record_gate(reg, failing, pop.policy)
    refused("failed", reg.rollback, ENG, MODEL, "production")
    record_gate(reg, write_result(pop.files / "ok.json", v1.weights_sha256), pop.policy)
    assert reg.rollback(ENG, MODEL, "production").kind == "rollback"
    ev = reg.move_alias(ADMIN, "m@3", "production", break_glass="incident")
    assert ev.kind == "break-glass" and reg.get("m:production").version == 3
    reg.approve(APPR, "m@4")
    assert reg.move_alias(ENG, "m@4", "production").kind == "promote"
    check_consistent(reg)
    # The command line on the same database.
    home = ["--home", str(pop.home), "--url", pg_url]
    r = CliRunner().invoke(
        app, ["registry", "history", MODEL, "production", "--at", "2999-01-01", *home]
    )
    assert r.exit_code == 0 and r.output.strip() == "m@4", r.output
    r = CliRunner().invoke(app, ["registry", "promote", "m@3", "production", "--as", ENG, *home])
    assert r.exit_code == 2 and "has no gate record" in r.output, r.output
    r = CliRunner().invoke(app, ["registry", "audit", "verify", "--full", *home])
    assert r.exit_code == 0 and "audit log intact" in r.output, r.output
    # Tampering in the database is detected there too.
    with reg.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"))
    verdict = reg.verify_audit()
    assert not verdict.ok and verdict.first_bad_seq == 5
    r = CliRunner().invoke(app, ["registry", "audit", "verify", *home])
    assert r.exit_code == 1 and "broken at event 5" in r.output, r.output


@pytest.mark.parametrize("n_procs", [2, 8])
def test_concurrent_writers_on_postgresql(
    tmp_path: Path, pg_url: str, mp_ctx: Any, n_procs: int
) -> None:
    pop = populate(tmp_path / "home", tmp_path / "files", pg_url)
    try:
        concurrent_promotions(mp_ctx, pop, pg_url, n_procs)
    finally:
        pop.reg.close()
