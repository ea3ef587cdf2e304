"""monitoring.rollback: roll_back refuses cleanly (no earlier version, an earlier version the
policy no longer accepts, an alias that already moved), needs a known engineer, and
roll_back_on_alert acts only right after a promotion, once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitoring.canary_helpers import MODEL, MONITOR_ACTOR, World, build_world, fresh_registry
from robustops.monitoring.config import RollbackConfig
from robustops.monitoring.rollback import (
    RollbackConfigError,
    parse_model_label,
    roll_back,
    roll_back_on_alert,
)
from robustops.registry.service import Registry


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


@pytest.fixture
def reg(world: World, tmp_path: Path) -> Registry:
    r = Registry.open(fresh_registry(world, tmp_path))
    yield r  # type: ignore[misc]
    r.close()


def _break_glass(reg: Registry) -> None:
    reg.move_alias("ada", f"{MODEL}@2", "production", break_glass="drill")


def test_actor_must_be_a_known_engineer(reg: Registry) -> None:
    with pytest.raises(RollbackConfigError, match=r"monitor\.rollback\.actor: 'nobody' is not"):
        roll_back(reg, actor="nobody", model=MODEL, reason="x")
    reg.add_principal("ada", "vic", "viewer")
    with pytest.raises(RollbackConfigError, match="'vic' is viewer"):
        roll_back(reg, actor="vic", model=MODEL, reason="x")


def test_refusals_come_back_as_outcomes(reg: Registry) -> None:
    alone = roll_back(reg, actor=MONITOR_ACTOR, model=MODEL, reason="x")
    assert not alone.rolled_back and "has held no other version" in str(alone.refused)
    assert alone.from_version == f"{MODEL}@1"
    nowhere = roll_back(reg, actor=MONITOR_ACTOR, model=MODEL, alias="staging", reason="x")
    assert not nowhere.rolled_back and "points to no version" in str(nowhere.refused)

    _break_glass(reg)
    moved = roll_back(reg, actor=MONITOR_ACTOR, model=MODEL, reason="x", only_if=f"{MODEL}@1")
    assert not moved.rolled_back and "not to canary-digits@1" in str(moved.refused)

    reg.set_policy("ada", MODEL, "production", {"min_clean_accuracy": 0.99})  # stricter now
    stale = roll_back(reg, actor=MONITOR_ACTOR, model=MODEL, reason="x")
    assert not stale.rolled_back and "no gate record under the policy in force" in str(
        stale.refused
    )
    assert reg.get(f"{MODEL}:production").version == 2  # nothing moved


def test_roll_back_records_reason_and_evidence(reg: Registry) -> None:
    _break_glass(reg)
    out = roll_back(
        reg,
        actor=MONITOR_ACTOR,
        model=MODEL,
        reason="canary: clean accuracy dropped",
        evidence={"p_value": 1e-9},
        only_if=f"{MODEL}@2",
    )
    assert out.rolled_back and (out.from_version, out.to_version) == (f"{MODEL}@2", f"{MODEL}@1")
    ev = reg.history(MODEL, "production", limit=1)[0]
    assert ev.kind == "rollback" and ev.reason == "canary: clean accuracy dropped"
    (audit,) = [e for e in reg.recent_events(1) if e.seq == out.audit_seq]
    payload = json.loads(audit.payload)
    assert payload["evidence"] == {"p_value": 1e-9} and payload["kind"] == "rollback"
    assert reg.verify_audit(full=True).ok


def test_roll_back_on_alert_acts_once_right_after_a_promotion(reg: Registry) -> None:
    home = reg.store.home
    config = RollbackConfig(actor=MONITOR_ACTOR, after_promotion_seconds=600)
    alert = {"rule": "abstention-spike", "model": f"{MODEL}:v2", "ts": time.time() + 1}
    assert roll_back_on_alert(config, alert, home) is None  # v2 never held production
    _break_glass(reg)
    late = {**alert, "ts": time.time() + 3600}
    assert roll_back_on_alert(config, late, home) is None  # long after the promotion
    now = time.time()
    shaped = {"rule": "abstention-spike", "model": f"{MODEL}@2", "fired_ts": now + 1}
    done = roll_back_on_alert(config, shaped | {"fired_at": "2000-01-01T00:00:00Z"}, home)
    assert done is not None and done["rolled_back"] and done["to_version"] == f"{MODEL}@1"
    assert "alert abstention-spike fired" in done["reason"]
    payload = json.loads(reg.recent_events(1)[0].payload)
    assert payload["evidence"]["alert"]["rule"] == "abstention-spike"
    again = {**alert, "ts": time.time() + 2}
    assert roll_back_on_alert(config, again, home) is None  # never undo a rollback
    assert reg.get(f"{MODEL}:production").version == 1


def test_roll_back_on_alert_needs_a_model(reg: Registry) -> None:
    config = RollbackConfig(actor=MONITOR_ACTOR)
    with pytest.raises(RollbackConfigError, match=r"monitor\.rollback\.model"):
        roll_back_on_alert(config, {"rule": "x"}, reg.store.home)
    bad = RollbackConfig(actor="nobody", model=MODEL)
    with pytest.raises(RollbackConfigError, match="nobody"):
        roll_back_on_alert(bad, {"rule": "x"}, reg.store.home)


def test_model_labels() -> None:
    assert parse_model_label("mnist-small-cnn:v3") == ("mnist-small-cnn", 3)
    assert parse_model_label("tiny@12") == ("tiny", 12)
    assert parse_model_label("tiny") == ("tiny", None)
    with pytest.raises(RollbackConfigError, match=r"alert\.model"):
        parse_model_label("no spaces:v1 ")
