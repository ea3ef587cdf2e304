"""``robustops monitor``: run --once, status, show, ack, calibrate from a log, and the Prometheus
rules (parsed, structure checked, and checked and unit-tested by promtool)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from robustops.cli import app
from robustops.monitoring.promrules import rate_threshold
from robustops.serving.metrics import PREFIX

from .monitor_helpers import SCORE_RULE, monitor_section, stream, write_log

from real_components import promtool  # isort: skip
from spec_helpers import digits_mlp, write_spec  # isort: skip

FLAG_RULE = {"name": "flags", "signal": "flag", "severity": "critical"}


def _spec(tmp: Path, rules: list[dict[str, Any]], **extra: Any) -> Path:
    return write_spec(tmp, digits_mlp(monitor=monitor_section(tmp, rules, **extra)))


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def _flagged(records: list[dict[str, Any]], share: float, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    for r in records:
        r["action"] = "flag" if rng.random() < share else "ok"
    return records


def test_run_status_show_ack(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [SCORE_RULE])
    write_log(tmp_path / "log", stream(300, shift_at=250))
    out = tmp_path / "alerts.jsonl"
    ran = _invoke(
        "monitor", "run", "--spec", str(spec), "--once", "--json", "--alerts-file", str(out)
    )
    assert ran.exit_code == 0, ran.output
    printed = [json.loads(x) for x in ran.output.splitlines() if x.startswith("{")]
    assert [a["rule"] for a in printed] == ["score-up"]
    aid = printed[0]["id"]
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [aid]

    status = _invoke("monitor", "status", "--spec", str(spec))
    assert status.exit_code == 0
    assert "score-up" in status.output and "fitted 100/100" in status.output
    assert "undelivered: 0" in status.output and "none unread" in status.output

    shown = _invoke("monitor", "show", "--spec", str(spec), aid[:8])
    assert (
        json.loads(shown.output)["window"]["last_request_id"]
        == printed[0]["window"]["last_request_id"]
    )
    acked = _invoke(
        "monitor", "ack", "--spec", str(spec), aid[:8], "--as", "alice", "--note", "known"
    )
    assert acked.exit_code == 0 and aid in acked.output
    st = json.loads(_invoke("monitor", "status", "--spec", str(spec), "--json").output)
    assert (st["alerts"][0]["acked_by"], st["alerts"][0]["ack_note"]) == ("alice", "known")
    assert st["undelivered"] == 0

    missing = _invoke("monitor", "ack", "--spec", str(spec), "ffff0000", "--as", "alice")
    assert missing.exit_code == 2


def test_a_spec_without_monitor_section_or_with_a_bad_rule(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, digits_mlp())
    r = _invoke("monitor", "run", "--spec", str(spec), "--once")
    assert r.exit_code == 2
    bad = write_spec(tmp_path, digits_mlp(monitor={"rules": [{"name": "x", "signal": "entropy"}]}))
    r = _invoke("monitor", "status", "--spec", str(bad))
    assert r.exit_code == 2


def test_calibrate_from_a_log_of_stable_traffic(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [SCORE_RULE])
    write_log(tmp_path / "stable", stream(150, seed=5))
    r = _invoke("monitor", "calibrate", "--spec", str(spec), "--log", str(tmp_path / "stable"))
    assert r.exit_code == 0, r.output
    # detection starts at the first live request: a shift from request 10 on fires
    write_log(tmp_path / "log", stream(40, shift_at=10))
    ran = _invoke("monitor", "run", "--spec", str(spec), "--once", "--json")
    alerts = [json.loads(x) for x in ran.output.splitlines() if x.startswith("{")]
    assert len(alerts) == 1
    assert alerts[0]["calibration"]["source"] == f"log:{tmp_path / 'stable'}"
    assert int(alerts[0]["window"]["first_request_id"], 16) == 0

    too_short = tmp_path / "short"
    write_log(too_short, stream(30))
    r = _invoke("monitor", "calibrate", "--spec", str(spec), "--log", str(too_short))
    assert r.exit_code == 2


def _rules(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    spec = _spec(tmp_path, [FLAG_RULE])
    stable = tmp_path / "stable"
    write_log(stable, _flagged(stream(150), 0.2))
    out = tmp_path / "rules.yml"
    r = _invoke(
        "monitor", "prometheus-rules", "--spec", str(spec), "--out", str(out), "--log", str(stable)
    )
    assert r.exit_code == 0, r.output
    return out, yaml.safe_load(out.read_text())


def test_prometheus_rules_parse_with_a_valid_structure(tmp_path: Path) -> None:
    _, doc = _rules(tmp_path)
    assert list(doc) == ["groups"] and len(doc["groups"]) == 1
    group = doc["groups"][0]
    assert set(group) == {"name", "rules"}
    names = [r["alert"] for r in group["rules"]]
    assert names == [
        "RobustOpsAbstentionRateHigh",
        "RobustOpsFlagRateHigh",
        "RobustOpsRejectionRateHigh",
        "RobustOpsLatencyP99High",
        "RobustOpsGuardDown",
        "RobustOpsRequestLogErrors",
        "RobustOpsModelSwapFailed",
    ]
    for rule in group["rules"]:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["service"] == "tiny-digits"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
        assert rule["expr"].count("(") == rule["expr"].count(")")
        assert PREFIX in rule["expr"]
    flag = group["rules"][1]
    assert flag["labels"]["severity"] == "critical"  # the spec's flag rule's severity
    mean = sum(r["action"] == "flag" for r in _flagged(stream(150), 0.2)[:100]) / 100
    t = rate_threshold(mean, 100)
    assert f"> {t:.6g}" in flag["expr"]


def test_prometheus_rules_pass_promtool_and_fire_when_they_should(tmp_path: Path) -> None:
    tool = promtool()
    out, doc = _rules(tmp_path)
    checked = subprocess.run([tool, "check", "rules", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout

    # promtool's rule unit test: one service flagging half its requests, one flagging 10 %
    req = f"{PREFIX}_requests_total"
    series = [
        {
            "series": f'{req}{{status="200",decision="predict",action="ok",job="bad"}}',
            "values": "0+60x30",
        },
        {
            "series": f'{req}{{status="200",decision="predict",action="flag",job="bad"}}',
            "values": "0+60x30",
        },
        {"series": f'{PREFIX}_workers{{job="bad"}}', "values": "1x30"},
        {"series": f'{PREFIX}_request_log_errors_total{{job="bad"}}', "values": "0x10 1+1x20"},
    ]
    by_name = {r["alert"]: r for r in doc["groups"][0]["rules"]}
    flag, down = by_name["RobustOpsFlagRateHigh"], by_name["RobustOpsGuardDown"]
    logs = by_name["RobustOpsRequestLogErrors"]
    tests = {
        "rule_files": [str(out)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "RobustOpsFlagRateHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": flag["labels"],
                                "exp_annotations": {
                                    **flag["annotations"],
                                    "description": flag["annotations"]["description"].replace(
                                        "{{ $value | humanizePercentage }}", "50%"
                                    ),
                                },
                            }
                        ],
                    },
                    {"eval_time": "15m", "alertname": "RobustOpsGuardDown", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "RobustOpsRequestLogErrors", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "RobustOpsRequestLogErrors",
                        "exp_alerts": [
                            {
                                "exp_labels": {**logs["labels"], "job": "bad"},
                                "exp_annotations": logs["annotations"],
                            }
                        ],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": series[0]["series"], "values": "0+90x30"},
                    {"series": series[1]["series"], "values": "0+10x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "RobustOpsFlagRateHigh", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "RobustOpsGuardDown",
                        "exp_alerts": [
                            {"exp_labels": down["labels"], "exp_annotations": down["annotations"]}
                        ],
                    },
                ],
            },
        ],
    }
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    ran = subprocess.run([tool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_prometheus_rules_need_a_calibration(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [SCORE_RULE])
    r = _invoke(
        "monitor", "prometheus-rules", "--spec", str(spec), "--out", str(tmp_path / "r.yml")
    )
    assert r.exit_code == 2
    r = _invoke(
        "monitor",
        "prometheus-rules",
        "--spec",
        str(spec),
        "--out",
        str(tmp_path / "r.yml"),
        "--window",
        "5 minutes",
    )
    assert r.exit_code == 2


@pytest.mark.parametrize("mean", [0.0, 0.02, 0.5, 0.99])
def test_rate_threshold_is_above_the_mean_and_at_most_one(mean: float) -> None:
    t = rate_threshold(mean, 100)
    assert mean < t <= 1.0
