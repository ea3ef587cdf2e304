"""The monitor in process: calibration then detection, the evidence an alert carries, per-key
rules, canary traffic ignored, restarts without re-alerting, the outbox's retries, rollback
eligibility after a model swap."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from robustops.errors import SpecError
from robustops.monitoring.config import MonitorConfig
from robustops.monitoring.monitor import Monitor, MonitorBusy, default_sinks, monitor_status

from .monitor_helpers import SCORE_RULE, monitor_section, receiver, stream, write_log


def _config(tmp: Path, rules: list[dict[str, Any]], **extra: Any) -> MonitorConfig:
    return MonitorConfig.model_validate(monitor_section(tmp, rules, **extra))


def _run(cfg: MonitorConfig, alerts_file: Path | None = None) -> list[dict[str, Any]]:
    home = str(Path(cfg.state).parent / "registry")  # a rollback never opens ./registry
    with Monitor(cfg, sinks=default_sinks(cfg, alerts_file), registry_home=home) as mon:
        mon.run(once=True)
        return mon.state.alerts()


def test_calibrates_then_alerts_on_a_shift_with_its_evidence(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [SCORE_RULE])
    write_log(tmp_path / "log", stream(200))
    assert _run(cfg) == []  # stable traffic: calibrated, silent
    st = monitor_status(cfg)
    cal = st["rules"][0]["calibration"]
    assert (cal["status"], cal["values"], cal["source"]) == ("fitted", 100, "live")
    assert cal["summary"]["mean"] == pytest.approx(1.0, abs=0.05)

    records = stream(260, shift_at=200)[200:]
    write_log(tmp_path / "log", records)
    alerts = _run(cfg, tmp_path / "alerts.jsonl")
    assert len(alerts) == 1
    a = alerts[0]
    assert (a["rule"], a["signal"], a["detector"], a["severity"]) == (
        "score-up",
        "anomaly_score",
        "cusum",
        "warning",
    )
    fired = int(a["window"]["last_request_id"], 16)
    assert 200 <= fired <= 210, "a 5σ shift is caught within 10 requests"
    assert a["window"]["first_request_id"] == f"{100:08x}"  # the first request after calibration
    assert a["window"]["first_ts"] < a["window"]["last_ts"] == a["fired_ts"]
    assert a["statistic"] is not None and a["threshold"] is not None
    assert a["calibration"]["n"] == 100 and a["calibration"]["source"] == "live"
    assert a["model"] == "digits:v1" and a["key"] is None
    assert 1 <= len(a["examples"]) <= 5
    assert int(a["examples"][0]["request_id"], 16) >= 200, "the most extreme example first"
    assert a["rollback"]["eligible"] is False
    assert list(a["deliveries"]) == [f"file:{tmp_path / 'alerts.jsonl'}"]
    assert a["deliveries"][f"file:{tmp_path / 'alerts.jsonl'}"] is not None
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [a["id"]]
    # nothing new: nothing more
    assert len(_run(cfg, tmp_path / "alerts.jsonl")) == 1
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 1


def test_canary_traffic_is_not_monitored(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [SCORE_RULE])
    write_log(tmp_path / "log", stream(140))
    write_log(tmp_path / "log", stream(200, shift_at=140, role="canary")[140:])
    assert _run(cfg) == []
    assert monitor_status(cfg)["rules"][0]["streams"]["*"]["seen"] == 40


def test_per_key_flag_rate_names_the_key(tmp_path: Path) -> None:
    rule = {"name": "key-flags", "signal": "flag_rate_per_key", "severity": "critical"}
    cfg = _config(tmp_path, [rule], calibration={"requests": 400})
    recs = stream(800)
    rng = random.Random(1)
    for i, r in enumerate(recs):
        r["key"] = "attacker" if i % 2 else "app"
        flagged = rng.random() < 0.2 or (r["key"] == "attacker" and i >= 600)
        r["action"] = "flag" if flagged else "ok"  # 1 in 5 for either key, then the attack
    write_log(tmp_path / "log", recs)
    alerts = _run(cfg)
    assert [a["key"] for a in alerts] == ["attacker"]
    assert alerts[0]["severity"] == "critical"
    assert 600 <= int(alerts[0]["window"]["last_request_id"], 16) <= 640
    streams = monitor_status(cfg)["rules"][0]["streams"]
    assert set(streams) == {"app", "attacker"}


def test_a_restart_resumes_without_re_alerting(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [SCORE_RULE])
    recs = stream(400, shift_at=300)
    whole = tmp_path / "whole"
    whole_cfg = _config(whole, [SCORE_RULE])
    write_log(whole / "log", recs)
    expected = [a["id"] for a in _run(whole_cfg)]
    assert len(expected) == 1
    for lo, hi in ((0, 50), (50, 290), (290, 302), (302, 330), (330, 400)):
        write_log(tmp_path / "log", recs[lo:hi])
        _run(cfg)
    assert [a["id"] for a in _run(cfg)] == expected


def test_one_monitor_per_state_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [SCORE_RULE])
    with Monitor(cfg, sinks=[]), pytest.raises(MonitorBusy, match="another monitor"):
        Monitor(cfg, sinks=[])


def test_webhook_retries_until_2xx_with_auth_and_idempotency_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_AUTH", "Bearer s3cret")
    write_log(tmp_path / "log", stream(260, shift_at=200))
    with receiver(fail_first=2) as rec:
        cfg = _config(tmp_path, [SCORE_RULE], webhooks=[{"url": rec.url, "header": "HOOK_AUTH"}])
        with Monitor(cfg) as mon:
            report = mon.step()
            assert len(report.alerts) == 1 and report.failed == 1
            assert mon.state.undelivered() == 1
            assert mon.deliver() == (0, 0), "not due yet: backoff"
            assert mon.deliver(ignore_backoff=True) == (0, 1)
            assert mon.deliver(ignore_backoff=True) == (1, 0)
            assert mon.state.undelivered() == 0
        assert rec.ids == [report.alerts[0]["id"]]
        assert rec.headers[0]["Authorization"] == "Bearer s3cret"
        assert rec.headers[0]["Idempotency-Key"] == report.alerts[0]["id"]
        assert rec.posts[0]["window"]["last_request_id"]


def test_a_missing_auth_variable_keeps_the_alert_owed(tmp_path: Path) -> None:
    write_log(tmp_path / "log", stream(260, shift_at=200))
    with receiver() as rec:
        cfg = _config(tmp_path, [SCORE_RULE], webhooks=[{"url": rec.url, "header": "NO_SUCH_VAR"}])
        with Monitor(cfg) as mon:
            mon.step()
            assert mon.state.undelivered() == 1
            errors = mon.state.delivery_errors()
        assert "NO_SUCH_VAR is not set" in str(errors[0][3])
        assert rec.ids == []


def test_rollback_is_due_only_soon_after_a_model_swap(tmp_path: Path) -> None:
    rule = {**SCORE_RULE, "rollback": True, "severity": "critical"}
    cfg = _config(tmp_path, [rule], rollback={"after_promotion_seconds": 0.6})
    recs = stream(400, shift_at=250)
    for r in recs[200:]:
        r["model"] = "digits:v2"
    write_log(tmp_path / "log", recs[:200])
    swap = {"event": "model-swap", "ts": recs[199]["ts"], "from": "digits:v1", "to": "digits:v2"}
    later = {**swap, "ts": recs[220]["ts"]}  # a second worker swaps a little later
    write_log(tmp_path / "log", [swap, later])
    write_log(tmp_path / "log", recs[200:])
    alerts = _run(cfg)
    assert len(alerts) == 1
    rb = alerts[0]["rollback"]
    assert rb["eligible"] is True and rb["last_swap"]["model"] == "digits:v2"
    assert rb["seconds_since_swap"] == pytest.approx(0.51, abs=0.1)
    assert rb["pending"] is False and "result" in rb  # the hook ran (its result or its error)

    late = tmp_path / "late"
    cfg = _config(late, [rule], rollback={"after_promotion_seconds": 0.2})
    write_log(late / "log", recs)  # the model label changes: a swap seen from the records
    alerts = _run(cfg)
    assert alerts[0]["rollback"]["last_swap"]["previous"] == "digits:v1"
    assert alerts[0]["rollback"]["eligible"] is False


def test_a_changed_rule_is_calibrated_again(tmp_path: Path) -> None:
    write_log(tmp_path / "log", stream(120))
    _run(_config(tmp_path, [SCORE_RULE]))
    changed = _config(tmp_path, [{**SCORE_RULE, "direction": "both"}])
    assert monitor_status(changed)["rules"][0]["calibration"]["current"] is False
    write_log(tmp_path / "log", stream(150)[120:])
    _run(changed)  # the window starts again with the requests after the change
    cal = monitor_status(changed)["rules"][0]["calibration"]
    assert cal["current"] is True and cal["status"] == "collecting" and cal["values"] == 30


def test_status_of_a_monitor_that_never_ran(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="never ran"):
        monitor_status(_config(tmp_path, [SCORE_RULE]))


def test_class_mix_by_a_categorical_batch_test(tmp_path: Path) -> None:
    rule = {
        "name": "class-mix",
        "signal": "predicted_class",
        "detector": "batch-test",
        "direction": "both",
    }
    cfg = _config(tmp_path, [rule], calibration={"requests": 400})
    recs = stream(400)  # 4 inputs per request: 100 requests calibrate, uniform over 10 classes
    for r in recs[250:]:
        for p in r["predictions"]:
            p["label"] = 3 if random.Random(r["request_id"]).random() < 0.6 else p["label"]
    write_log(tmp_path / "log", recs)
    alerts = _run(cfg)
    assert len(alerts) == 1
    a = alerts[0]
    assert a["detector"] == "batch-test" and a["detection"]["direction"] == "change"
    assert a["detection"]["p_value"] <= a["detection"]["alpha"]
    assert a["detection"]["effect_size"] >= a["detection"]["min_effect"]
    assert 250 <= int(a["window"]["last_request_id"], 16) <= 320


def test_a_failed_commit_falls_back_to_the_state_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [SCORE_RULE])
    recs = stream(300, shift_at=250)
    write_log(tmp_path / "log", recs[:200])
    with Monitor(cfg, sinks=[]) as mon:
        mon.step()
        write_log(tmp_path / "log", recs[200:])
        real = mon.state.add_alert

        def broken(*args: Any, **kw: Any) -> bool:
            raise OSError("disk full")

        mon.state.add_alert = broken  # type: ignore[method-assign]
        with pytest.raises(OSError, match="disk full"):
            mon.step()
        assert mon.state.alerts() == []
        mon.state.add_alert = real  # type: ignore[method-assign]
        report = mon.step()
        assert len(report.alerts) == 1, "the requests after the last commit are read again"
