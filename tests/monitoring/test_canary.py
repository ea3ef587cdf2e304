"""Canary runs against a real guard serving the registry's production alias: the gated model
passes, a weak model promoted by break-glass is caught (McNemar), gets a vulnerability record,
and production rolls back; all in the audit log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitoring.canary_helpers import (
    MODEL,
    MONITOR_ACTOR,
    World,
    build_world,
    fresh_registry,
    guard,
    spec_dict,
    write,
)
from robustops.canary import init_canary, load_canary_set, run_canary
from robustops.config import load_spec
from robustops.registry.service import Registry
from robustops.registry.vulnerabilities import list_vulnerabilities


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the test's folder: whatever the guard writes relative to it (its request log
    folder, by default ``guard/requests``) stays there, next to ``monitor.request_log``."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory)


def _setup(world: World, tmp_path: Path, **canary: object) -> tuple[Path, Path]:
    """A copy of the registry and a spec whose canary files live in ``tmp_path``, with the
    canary set drawn and registered."""
    home = fresh_registry(world, tmp_path)
    spec = write(tmp_path, spec_dict(tmp_path, **canary) | {"train": None})
    return home, spec


def test_canary_set_is_drawn_from_the_accepted_result(world: World, tmp_path: Path) -> None:
    home, spec_path = _setup(world, tmp_path)
    spec = load_spec(spec_path)
    made = init_canary(spec, registry_home=home, actor="eve")
    assert made.baseline.accepted and made.baseline.version == f"{MODEL}@1"
    doc = load_canary_set(made.path)
    assert len(doc["samples"]) == 40 and doc["modality"] == "tensor"
    result = made.baseline.result
    for s in doc["samples"]:
        p = s["position"]
        assert result.samples.indices[p] == s["index"] and result.samples.labels[p] == s["label"]
        assert s["robust"] == {"linf": result.threats[0].robust[p]}
        assert len(s["input"]) == 1 and len(s["input"][0]) == 8
    again = init_canary(spec, registry_home=home, actor="eve", out=tmp_path / "again.json")
    assert again.dataset == made.dataset == f"{MODEL}-canary@1"  # seeded: the same bytes
    reg = Registry.open(home)
    try:
        ds = reg.dataset(f"{MODEL}-canary")
        assert ds.kind == "canary" and ds.n_samples == 40
        assert ds.lineage["source_result_sha256"] == made.baseline.result_sha256
        assert [e.action for e in reg.recent_events(1)] == ["dataset"]
    finally:
        reg.close()


def test_canary_passes_the_good_model_and_catches_the_weak_one(
    world: World, tmp_path: Path
) -> None:
    home, spec_path = _setup(world, tmp_path)
    spec = load_spec(spec_path)
    init_canary(spec, registry_home=home, actor="eve")

    t0 = time.monotonic()
    with guard(spec_path, home) as url:
        good = run_canary(spec, url, registry_home=home)
    good_s = time.monotonic() - t0
    assert good["served"]["version"] == f"{MODEL}@1"
    assert good["verdict"] == "ok", good["tests"]
    assert good["vulnerability"] is None and good["rollback"] is None
    assert set(good["tests"]) == {"clean", "linf"} and good["tests"]["clean"]["n"] == 40
    assert good["queries"] > 40

    reg = Registry.open(home)
    try:
        reg.move_alias("ada", f"{MODEL}@2", "production", break_glass="drill: ship a bad build")
        assert reg.get(f"{MODEL}:production").version == 2
    finally:
        reg.close()
    t0 = time.monotonic()
    with guard(spec_path, home) as url:
        weak = run_canary(spec, url, registry_home=home)
    weak_s = time.monotonic() - t0
    assert weak["served"]["version"] == f"{MODEL}@2"
    assert weak["verdict"] == "regression"
    assert weak["tests"]["clean"]["significant"] and weak["tests"]["clean"]["p_value"] < 1e-3
    assert weak["rollback"]["rolled_back"] and weak["rollback"]["to_version"] == f"{MODEL}@1"
    print(  # the figures the report quotes (pytest -s)
        f"\ngood: {json.dumps({k: _brief(t) for k, t in good['tests'].items()})} "
        f"{good['queries']} queries {good_s:.1f} s"
        f"\nweak: {json.dumps({k: _brief(t) for k, t in weak['tests'].items()})} "
        f"{weak['queries']} queries {weak_s:.1f} s"
    )

    reg = Registry.open(home)
    try:
        assert reg.get(f"{MODEL}:production").version == 1
        (vuln,) = list_vulnerabilities(reg, model=MODEL)
        assert vuln.id == weak["vulnerability"] and vuln.severity == "critical"
        assert vuln.affected == [f"{MODEL}@2"] and vuln.opened_by == MONITOR_ACTOR
        assert vuln.evidence["dataset"] == f"{MODEL}-canary@1"
        assert vuln.evidence["served"]["version"] == f"{MODEL}@2"
        assert vuln.evidence["tests"]["clean"]["p_value"] == weak["tests"]["clean"]["p_value"]
        last = reg.history(MODEL, "production", limit=1)[0]
        assert last.kind == "rollback" and last.actor == MONITOR_ACTOR and vuln.id in last.reason
        actions = [e.action for e in reg.recent_events(5)]
        assert actions[-3:] == ["vuln-open", "alias", "canary-run"]
        payload = json.loads(reg.recent_events(1)[0].payload)
        assert payload["record_sha256"] == weak["record_sha256"] and payload["rolled_back"]
        assert reg.store.artifacts.has(weak["record_sha256"])
        assert reg.verify_audit(full=True).ok
    finally:
        reg.close()
    # A guard that still serves the bad version (it has not followed the alias yet): the next
    # run joins the open record and does not move the alias again.
    with guard(spec_path, home, f"{MODEL}@2") as url:
        stale = run_canary(spec, url, registry_home=home)
    assert stale["verdict"] == "regression" and stale["vulnerability"] == weak["vulnerability"]
    assert stale["vulnerability_existing"] and not stale["rollback"]["rolled_back"]
    assert "points to canary-digits@1 now" in stale["rollback"]["refused"]
    reg = Registry.open(home)
    try:
        assert len(list_vulnerabilities(reg, model=MODEL)) == 1
        assert reg.get(f"{MODEL}:production").version == 1
    finally:
        reg.close()
    record = json.loads(Path(weak["record_path"]).read_text())
    assert record["verdict"] == "regression" and record["outcomes"]["clean"].count(True) < 20


def _brief(t: dict[str, object]) -> dict[str, object]:
    keys = ("n", "baseline_correct", "canary_correct", "baseline_only", "canary_only", "p_value")
    return {k: t[k] for k in keys}


def test_cli_init_and_run(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from robustops.cli import app

    home, spec_path = _setup(world, tmp_path)
    runner = CliRunner()
    base = ["--spec", str(spec_path), "--registry", str(home)]
    made = runner.invoke(app, ["canary", "init", *base, "--as", "eve"])
    assert made.exit_code == 0, made.output
    assert f"canary set {MODEL}-canary@1: 40 samples from {MODEL}@1's accepted result" in (
        " ".join(made.output.split())
    )
    in_spec = tmp_path / "in-spec"  # the registry named by the spec's registry section
    in_spec.mkdir()
    section = spec_dict(tmp_path) | {"registry": {"home": str(home), "model": MODEL}}
    again = runner.invoke(
        app,
        ["canary", "init", "--spec", str(write(in_spec, section))],
        env={"ROBUSTOPS_PRINCIPAL": "eve"},
    )
    assert again.exit_code == 0 and f"{MODEL}-canary@1" in again.output, again.output
    with guard(spec_path, home) as url:
        ok = runner.invoke(
            app, ["canary", "run", *base, "--url", url, "--every", "0.01", "--runs", "2"]
        )
    assert ok.exit_code == 0, ok.output
    said = " ".join(ok.output.split())
    assert said.count(": ok (") == 2 and "linf: baseline" in said
    reg = Registry.open(home)
    try:
        reg.move_alias("ada", f"{MODEL}@2", "production", break_glass="drill")
    finally:
        reg.close()
    with guard(spec_path, home) as url:
        bad = runner.invoke(app, ["canary", "run", *base, "--url", url, "--json", "--once"])
    assert bad.exit_code == 1, bad.output
    record = json.loads(bad.output.strip().splitlines()[-1])
    assert record["verdict"] == "regression" and record["rollback"]["rolled_back"]
    dead = ["canary", "run", *base, "--url", "http://127.0.0.1:9"]
    assert runner.invoke(app, [*dead, "--once"]).exit_code == 2  # no key, no endpoint
    looping = runner.invoke(app, [*dead, "--every", "0", "--runs", "2"])
    assert looping.exit_code == 0 and looping.output.count("canary run failed") == 2
