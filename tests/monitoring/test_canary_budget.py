"""The canary's budget: queries per hour (its own run records) and the share of traffic (the
guard's request log), enforced by the HTTP adapter; a run that reaches it stops and says so."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitoring.canary_helpers import World, build_world, fresh_registry, guard, spec_dict, write
from robustops.canary import canary_budget, init_canary, request_log_inputs, run_canary
from robustops.config import load_spec
from robustops.registry.service import Registry


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the test's folder: whatever the guard writes relative to it (its request log
    folder, by default ``guard/requests``) stays there, next to ``monitor.request_log``."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


def _log(folder: Path, lines: list[dict[str, object]], partial: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"host-{len(list(folder.iterdir()))}-1.jsonl").open("w") as fh:
        for line in lines:
            fh.write(json.dumps({"event": "predict", "status": 200, **line}) + "\n")
        fh.write(partial)


def test_request_log_counts_inputs_of_the_last_hour(tmp_path: Path) -> None:
    now = time.time()
    folder = tmp_path / "requests"
    _log(
        folder,
        [
            {"ts": now - 10, "role": "client", "n": 30},
            {"ts": now - 20, "role": "canary", "n": 7},
            {"ts": now - 7200, "role": "client", "n": 1000},  # two hours ago
            {"ts": now - 30, "role": "admin", "n": 0},
        ],
        partial=json.dumps({"ts": now, "role": "client", "n": 500})[:-1],  # being written
    )
    _log(folder, [{"ts": now - 5, "role": "client", "n": 8}])
    (folder / "notes.txt").write_text("not a log")
    assert request_log_inputs(folder, now - 3600) == (7, 38)
    assert request_log_inputs(tmp_path / "missing", now - 3600) == (0, 0)


def test_budget_is_the_smaller_of_queries_per_hour_and_the_traffic_share(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, spec_dict(tmp_path, queries_per_hour=1000, max_traffic_share=0.05))
    )
    now = time.time()
    _log(
        tmp_path / "guard" / "requests",
        [
            {"ts": now - 60, "role": "client", "n": 1900},
            {"ts": now - 50, "role": "canary", "n": 20},
        ],
    )
    b = canary_budget(spec, now)
    assert b["share_allowance"] == 100 - 20  # 5 % of all: 100 canary inputs next to 1900
    assert b["allowance"] == 80 and b["spent_last_hour"] == 0
    (tmp_path / "canary").mkdir()
    old = {"started_ts": now - 4000, "queries": 999}  # over an hour ago: not counted
    (tmp_path / "canary" / "canary-20261207T000000Z.json").write_text(json.dumps(old))
    recent = {"started_ts": now - 100, "queries": 950}
    (tmp_path / "canary" / "canary-20261207T010000Z.json").write_text(json.dumps(recent))
    b = canary_budget(spec, now)
    assert b["spent_last_hour"] == 950 and b["allowance"] == 50


def test_a_run_stops_at_its_query_budget_and_the_next_is_skipped(
    world: World, tmp_path: Path
) -> None:
    home = fresh_registry(world, tmp_path)
    spec_path = write(tmp_path, spec_dict(tmp_path, queries_per_hour=300))
    spec = load_spec(spec_path)
    init_canary(spec, registry_home=home, actor="eve")
    with guard(spec_path, home) as url:
        first = run_canary(spec, url, registry_home=home)
        second = run_canary(spec, url, registry_home=home)
    assert first["queries"] <= 300 and first["budget"]["allowance"] == 300
    assert first["stopped"] is not None and "300 queries was spent" in first["stopped"]
    done = [v for v in first["outcomes"]["linf"] if v is not None]
    assert 0 < len(done) < 40 and first["tests"]["linf"]["n"] == len(done)
    assert first["tests"]["clean"]["n"] == 40 and first["verdict"] == "ok"
    assert second["verdict"] == "skipped" and second["queries"] == 0
    assert second["budget"]["spent_last_hour"] == first["queries"]
    reg = Registry.open(home)
    try:
        (last,) = reg.recent_events(1)  # a skipped run is not audited (no flood at 5 s)
        assert last.action == "canary-run" and last.seq == first["audit_seq"]
        assert json.loads(last.payload)["stopped"] == first["stopped"]
        assert "audit_seq" not in second and Path(second["record_path"]).is_file()
    finally:
        reg.close()


def test_the_traffic_share_bounds_a_run(world: World, tmp_path: Path) -> None:
    home = fresh_registry(world, tmp_path)
    spec_path = write(tmp_path, spec_dict(tmp_path, max_traffic_share=0.1))
    spec = load_spec(spec_path)
    init_canary(spec, registry_home=home, actor="eve")
    _log(tmp_path / "guard" / "requests", [{"ts": time.time() - 5, "role": "client", "n": 900}])
    with guard(spec_path, home) as url:
        record = run_canary(spec, url, registry_home=home)
    assert record["budget"]["share_allowance"] == 100 and record["queries"] <= 100
    assert record["stopped"] is not None
