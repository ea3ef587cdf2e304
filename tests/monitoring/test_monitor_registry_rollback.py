"""The monitor's rollback path end to end on a real registry: a rule marked ``rollback`` fires
right after a break-glass promotion and production goes back to the gated version, with the
alert carrying the outcome and the audit log the alert as evidence; the same spike long after
the promotion only alerts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from monitoring.canary_helpers import MODEL, MONITOR_ACTOR, World, build_world, fresh_registry
from robustops.monitoring.config import MonitorConfig
from robustops.monitoring.monitor import Monitor
from robustops.registry.service import Registry

from .monitor_helpers import monitor_section, stream, write_log

RULE = {
    "name": "abstention-spike",
    "signal": "anomaly_score",
    "detector": "cusum",
    "severity": "critical",
    "rollback": True,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


def _log(folder: Path, *, spike_at: int = 200) -> None:
    """Stable traffic on @1 (100 requests/s), the swap to @2 at request 200 (now: just after
    the break-glass promotion), then a 5σ spike from request ``spike_at`` on."""
    recs = stream(spike_at + 100, shift_at=spike_at)
    start = time.time() - 2.0
    for i, r in enumerate(recs):
        r["ts"] = start + i / 100
        r["model"] = f"{MODEL}@1" if i < 200 else f"{MODEL}@2"
    swap = {"event": "model-swap", "ts": recs[199]["ts"], "from": f"{MODEL}@1", "to": f"{MODEL}@2"}
    write_log(folder, recs[:200])
    write_log(folder, [swap])
    write_log(folder, recs[200:])


def _run(tmp: Path, home: Path, after: float) -> list[dict[str, Any]]:
    cfg = MonitorConfig.model_validate(
        monitor_section(
            tmp, [RULE], rollback={"actor": MONITOR_ACTOR, "after_promotion_seconds": after}
        )
    )
    with Monitor(cfg, sinks=[], registry_home=str(home)) as mon:
        mon.run(once=True)
        return mon.state.alerts()


def test_a_rollback_rule_right_after_a_bad_promotion_rolls_production_back(
    world: World, tmp_path: Path
) -> None:
    home = fresh_registry(world, tmp_path)
    with Registry.open(home) as reg:
        reg.move_alias("ada", f"{MODEL}@2", "production", break_glass="drill")
    _log(tmp_path / "log")
    alerts = _run(tmp_path, home, after=600)
    assert [a["rule"] for a in alerts] == ["abstention-spike"]
    result = alerts[0]["rollback"]["result"]
    assert result["rolled_back"] is True, result
    assert (result["from_version"], result["to_version"]) == (f"{MODEL}@2", f"{MODEL}@1")
    with Registry.open(home) as reg:
        assert reg.get(f"{MODEL}:production").version == 1
        ev = reg.history(MODEL, "production", limit=1)[0]
        assert (ev.kind, ev.actor) == ("rollback", MONITOR_ACTOR)
        assert "abstention-spike" in ev.reason
        payload = json.loads(reg.recent_events(1)[0].payload)
        assert payload["evidence"]["alert"]["id"] == alerts[0]["id"]
        assert reg.verify_audit().ok


def test_the_same_spike_long_after_the_promotion_only_alerts(world: World, tmp_path: Path) -> None:
    home = fresh_registry(world, tmp_path)
    with Registry.open(home) as reg:
        reg.move_alias("ada", f"{MODEL}@2", "production", break_glass="drill")
    _log(tmp_path / "log", spike_at=300)
    alerts = _run(tmp_path, home, after=0.5)  # the spike starts 1 s after the swap
    assert len(alerts) == 1 and alerts[0]["rollback"]["eligible"] is False
    with Registry.open(home) as reg:
        assert reg.get(f"{MODEL}:production").version == 2
