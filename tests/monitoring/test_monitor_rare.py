"""A rule whose calibration window never moved (no flag at all): the rare-events counter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustops.monitoring.config import MonitorConfig
from robustops.monitoring.monitor import Monitor
from robustops.monitoring.rare import RareEvents, fit_rare_events

from .monitor_helpers import monitor_section, stream, write_log


def test_threshold_from_the_poisson_bound_and_exact_resume() -> None:
    assert fit_rare_events([0.0, 1.0], direction="up", false_alarms_per_10k=1.0) is None
    det = fit_rare_events([0.0] * 200, direction="up", false_alarms_per_10k=1.0)
    assert det is not None
    # 200 values without an event: rate ≤ 2.3/200; 50 values: λ ≈ 0.58; P(X ≥ 6) ≈ 4e-5 ≤ 1e-4
    assert det.threshold == 6
    assert det.calibration["tail_probability"] <= 1e-4
    stricter = fit_rare_events([0.0] * 200, direction="up", false_alarms_per_10k=0.01)
    assert stricter is not None and stricter.threshold > det.threshold
    assert [det.update(x) for x in [1.0] + [0.0] * 20 + [1.0] * 4] == [None] * 25
    copy = RareEvents.from_state_dict(json.loads(json.dumps(det.state_dict())))
    fired = det.update(1.0)
    assert fired is not None and fired.statistic == 6 and fired.threshold == 6
    assert copy.update(1.0) == fired
    assert det.update(1.0) is None, "reset after firing"
    down = fit_rare_events([1.0] * 200, direction="down", false_alarms_per_10k=1.0)
    assert down is not None and all(down.update(2.0) is None for _ in range(60))


def test_a_window_with_a_few_events() -> None:
    few = [0.0] * 199 + [1.0]
    assert fit_rare_events(few, direction="up", false_alarms_per_10k=1.0) is None
    det = fit_rare_events(few, direction="up", false_alarms_per_10k=1.0, max_share=0.05)
    assert det is not None and det.calibration["events"] == 1
    quiet = fit_rare_events([0.0] * 200, direction="up", false_alarms_per_10k=1.0)
    assert quiet is not None and det.threshold >= quiet.threshold
    # λ₉₀(1) = 3.89: 1 event in 200 bounds the rate at 1.9 %
    assert det.calibration["rate_upper_90"] == pytest.approx(3.8897 / 200, rel=1e-3)
    assert (
        fit_rare_events(
            [0.0] * 180 + [1.0] * 20, direction="up", false_alarms_per_10k=1.0, max_share=0.05
        )
        is None
    )


def test_a_flag_rule_calibrated_on_traffic_without_flags_fires_on_an_attack(
    tmp_path: Path,
) -> None:
    rule = {"name": "flags", "signal": "flag", "severity": "critical"}
    cfg = MonitorConfig.model_validate(monitor_section(tmp_path, [rule]))
    recs = stream(600)
    for i, r in enumerate(recs):
        r["action"] = "ok"
        if i in (150, 300, 301):  # stray flags: no alert
            r["action"] = "flag"
        if i >= 500 and i % 3 == 0:  # an attacker: a third of the traffic, all flagged
            r["key"], r["action"] = "attacker", "throttle"
    write_log(tmp_path / "log", recs)
    with Monitor(cfg, sinks=[]) as mon:
        mon.run(once=True)
        alerts = mon.state.alerts()
    assert len(alerts) == 1
    a = alerts[0]
    assert a["detection"]["detector"] == "rare-events"
    assert a["calibration"]["detector"]["n"] == 100
    # 100 values without a flag: rate ≤ 2.3 %, λ = 1.15 per 50 requests: 8 flags in 50 alert
    assert a["threshold"] == a["calibration"]["detector"]["threshold"] == 8
    assert 500 <= int(a["window"]["last_request_id"], 16) <= 530
    assert "rare-events" in json.dumps(a["calibration"])


@pytest.mark.parametrize("requests", [100, 200])
def test_batch_test_window_fits_the_calibration_window(tmp_path: Path, requests: int) -> None:
    rule = {"name": "mix", "signal": "predicted_class", "detector": "batch-test"}
    cfg = MonitorConfig.model_validate(
        monitor_section(tmp_path, [rule], calibration={"requests": requests})
    )
    write_log(tmp_path / "log", stream(100))
    with Monitor(cfg, sinks=[]) as mon:
        mon.run(once=True)
        assert mon.rules[0].status == "fitted"


def test_one_flag_in_the_calibration_window_still_calibrates(tmp_path: Path) -> None:
    rule = {"name": "flags", "signal": "flag", "severity": "critical"}
    cfg = MonitorConfig.model_validate(monitor_section(tmp_path, [rule]))
    recs = stream(600)
    for i, r in enumerate(recs):
        r["action"] = "flag" if i == 50 or (i >= 500 and i % 3 == 0) else "ok"
    write_log(tmp_path / "log", recs)
    with Monitor(cfg, sinks=[]) as mon:
        mon.run(once=True)
        assert mon.rules[0].status == "fitted" and mon.rules[0].error is None
        alerts = mon.state.alerts()
    assert len(alerts) == 1
    assert 500 <= int(alerts[0]["window"]["last_request_id"], 16) <= 540
