"""The lifecycle run: its page and timeline (fast), and the whole loop on MNIST (slow; CI runs
it through `make lifecycle` after the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustops.lifecycle import Timeline, _canary_finding, render_page, run_lifecycle

ROOT = Path(__file__).resolve().parents[1]


def test_page_escapes_what_it_shows() -> None:
    tl = Timeline(echo=lambda line: None)
    tl.mark("alert", "<script>alert(1)</script>", evidence={"x": "</pre>"})
    page = render_page("t <b>", tl, {"k": "<i>"})
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "&lt;/pre&gt;" in page and "t &lt;b&gt;" in page and "&lt;i&gt;" in page


def test_canary_finding_reads_the_run_that_rolled_back(tmp_path: Path) -> None:
    ok = {"verdict": "ok", "rollback": None, "tests": {}}
    bad = {
        "verdict": "regression",
        "served": {"version": "m@2"},
        "vulnerability": "RVULN-0001",
        "queries": 10,
        "rollback": {"rolled_back": True},
        "tests": {
            "clean": {"baseline_correct": 96, "canary_correct": 68, "n": 100, "p_value": 3.7e-9}
        },
    }
    (tmp_path / "canary-1.json").write_text(json.dumps(ok))
    (tmp_path / "canary-2.json").write_text(json.dumps(bad))
    found = _canary_finding(tmp_path)
    assert found is not None
    assert "m@2" in found["detail"] and "96→68/100" in found["detail"]
    assert "RVULN-0001" in found["detail"] and found["record"] == "canary-2.json"
    assert _canary_finding(tmp_path / "none") is None


@pytest.mark.slow
def test_the_whole_loop(tmp_path: Path) -> None:
    summary = run_lifecycle(ROOT / "configs" / "lifecycle.yaml", tmp_path / "run", echo=print)
    assert summary["bad_promotion_to_rollback_s"] <= 60
    assert summary["first_alert"] == "flag-rate"
    assert summary["attack"]["flagged"] > 0
    events = json.loads((tmp_path / "run" / "timeline.json").read_text())["events"]
    steps = [e["step"] for e in events]
    alert = steps.index("alert")  # the first alert, then the canary run that follows it
    canary_run = next(i for i, step in enumerate(steps) if step == "canary" and i > alert)
    assert steps.index("rollback") > canary_run > alert
    assert steps.index("canary") < steps.index("serve")  # the canary set is picked first
    assert steps[-2] == "retrain"
