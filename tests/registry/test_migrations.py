"""A registry made by an older release opens under the newest schema with its rows intact."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from robustops.registry.service import Registry
from robustops.registry.store import _MIGRATIONS


def test_a_revision_0001_registry_upgrades_on_open(tmp_path: Path) -> None:
    home = tmp_path / "reg"
    home.mkdir()
    engine = sa.create_engine(f"sqlite:///{home / 'registry.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO model_versions (id, name, version, weights_sha256, weights_size, "
                "data, recipe, metrics, robustops_version, environment, description, "
                "registered_by, registered_at) VALUES (1, 'old', 1, :sha, 3, '{}', '{}', '{}', "
                "'0.0.9', '{}', '', 'ada', '2026-01-01T00:00:00.000000Z')"
            ),
            {"sha": "ab" * 32},
        )
        columns = {c["name"] for c in sa.inspect(conn).get_columns("model_versions")}
    engine.dispose()
    assert "weights_name" not in columns

    reg = Registry.open(home)
    try:
        v = reg.get("old@1")
        assert v.weights_sha256 == "ab" * 32 and v.weights_name is None
        with reg.store.engine.connect() as conn:
            rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        assert rev == "0004"
    finally:
        reg.close()
