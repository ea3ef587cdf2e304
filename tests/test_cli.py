"""Specs and the command line: bad fields are named, the main verbs run end to end."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from robustops.cli import app
from robustops.config import load_spec
from robustops.errors import SpecError
from robustops.evaluation import SuiteResult
from spec_helpers import spec_with, write_spec

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {
        "factory": "robustops.models:mlp",
        "kwargs": {"input_dim": 64, "hidden": [32]},
        "weights": "w/mlp.safetensors",
    },
    "catalog": {
        "entries": [
            {
                "id": "digit-evasion",
                "title": "bounded pixel changes",
                "component": "model",
                "channel": "image",
                "perturbation": "linf",
                "likelihood": 3,
                "impact": 4,
                "owner": "ml",
                "exercised_by": ["linf", "l2"],
            }
        ]
    },
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.005, "out": "w/mlp.safetensors"},
    "evaluation": {
        "n_samples": 60,
        "batch_size": 30,
        "threats": [
            {
                "name": "linf",
                "epsilon": 0.1,
                "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 10}],
            },
            {"name": "l2", "norm": "l2", "epsilon": 0.5, "attacks": [{"name": "pgd", "steps": 10}]},
        ],
    },
}


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    return write_spec(tmp_path, spec)


def _with(path: str, value: Any) -> dict[str, Any]:
    return spec_with(TINY, path, value)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("evaluation.threats.0.epsilon", -0.1, "evaluation.threats.0.epsilon"),
        ("evaluation.threats.0.norm", "l7", "evaluation.threats.0.norm"),
        ("evaluation.threats.0.bounds", [1.0, 0.0], "evaluation.threats.0"),
        ("evaluation.threats.0.attacks.1.steps", 0, "evaluation.threats.0.attacks.1.steps"),
        ("evaluation.threats.0.attacks.1.stepz", 3, "evaluation.threats.0.attacks.1.stepz"),
        ("evaluation.threats.1.attacks.0.name", "nope", "evaluation.threats.1.attacks.0.name"),
        ("model.weights", "w/model.pt", "model.weights"),
        ("model.factory", "not a factory", "model.factory"),
        ("data.name", "imagenet", "data.name"),
        ("train.epochs", "many", "train.epochs"),
        ("seed", "x", "seed"),
        ("colour", "red", "colour"),
        ("evaluation.calibration", {"threat": "nope"}, "evaluation.calibration.threat"),
        ("evaluation.calibration", {"fit_on": "both"}, "evaluation.calibration.fit_on"),
        (
            "evaluation.calibration",
            {"attack": {"name": "pgd", "stepz": 3}},
            "evaluation.calibration.attack.stepz",
        ),
        ("evaluation.audit", {"threats": ["linf", "x"]}, "evaluation.audit.threats.1"),
        ("evaluation.audit", {"n_samples": 0}, "evaluation.audit.n_samples"),
        ("evaluation.certification", {"sigma": -1}, "evaluation.certification.sigma"),
        ("evaluation.tiers", {"quick": {"threats": ["nope"]}}, "evaluation.tiers.quick.threats.0"),
        ("evaluation.tiers", {"quick": {"n_samples": 0}}, "evaluation.tiers.quick.n_samples"),
        (
            "evaluation.certification",
            {"sigma": 0.5, "alpha": 2},
            "evaluation.certification.alpha",
        ),
        (
            "evaluation.certification",
            {"sigma": 0.5, "radii": [-1]},
            "evaluation.certification.radii",
        ),
    ],
)
def test_bad_spec_names_the_field(tmp_path: Path, path: str, value: Any, expected: str) -> None:
    spec_path = _write(tmp_path, _with(path, value))
    with pytest.raises(SpecError) as info:
        load_spec(spec_path)
    assert expected in [p for p, _ in info.value.errors], info.value.errors
    result = CliRunner().invoke(app, ["validate", str(spec_path)])
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output


def test_train_then_evaluate_end_to_end(tmp_path: Path) -> None:
    spec_path = _write(tmp_path, TINY)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--spec", str(spec_path)])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "w" / "mlp.safetensors").is_file()
    assert (tmp_path / "w" / "mlp.safetensors.json").is_file()
    out = tmp_path / "result.json"
    plots = tmp_path / "plots"
    evaluated = runner.invoke(
        app, ["evaluate", "--spec", str(spec_path), "--out", str(out), "--plots", str(plots)]
    )
    assert evaluated.exit_code == 0, evaluated.output
    res = SuiteResult.load(out)
    assert res.n_samples == 60 and [t.name for t in res.threats] == ["linf", "l2"]
    assert res.data["fingerprint"] and len(res.model["weights_sha256"]) == 64
    assert "robust acc" in evaluated.output
    assert res.catalog_sha256 == load_spec(spec_path).catalog.content_hash()  # type: ignore[union-attr]
    # Calibration is on by default: a temperature fitted on the 300 test samples not evaluated.
    cal = res.calibration
    assert cal is not None and cal.temperature is not None
    assert cal.temperature.n_clean == cal.temperature.n_adversarial == 300
    assert cal.temperature.threat == "linf" and cal.temperature.attack == "pgd"
    assert all(t.calibration is not None for t in res.threats)
    assert "ECE" in evaluated.output
    assert (plots / "reliability.png").stat().st_size > 1000
    assert (plots / "reliability_scaled.png").stat().st_size > 1000
    # With every test sample evaluated none is left to fit the temperature on: a clear error.
    everything = _write(tmp_path, _with("evaluation.n_samples", None))
    refused = runner.invoke(app, ["evaluate", "--spec", str(everything), "--out", str(out)])
    assert refused.exit_code == 2
    assert "evaluation.calibration.n_samples" in refused.output

    # Audit and certification on demand, written into the same result.
    extra = _with("evaluation.audit", {"threats": ["linf"], "n_samples": 30, "steps": 5})
    extra["evaluation"]["certification"] = {"sigma": 0.25, "n0": 20, "n": 200, "n_samples": 10}
    full_spec = _write(tmp_path, extra)
    full = runner.invoke(
        app, ["evaluate", "--spec", str(full_spec), "--out", str(out), "--plots", str(plots)]
    )
    assert full.exit_code == 0, full.output
    res = SuiteResult.load(out)
    assert [a.threat for a in res.audit] == ["linf"]
    assert res.audit_verdict() == "pass"  # an honest CNN: no sign of gradient masking
    assert len(res.audit[0].checks) == 7
    assert res.certification is not None and res.certification.n_samples == 10
    assert "gradient-masking audit" in full.output and "randomized smoothing" in full.output
    assert (plots / "certified_accuracy.png").stat().st_size > 1000
    cert_out = tmp_path / "cert.json"
    certified = runner.invoke(app, ["certify", "--spec", str(full_spec), "--out", str(cert_out)])
    assert certified.exit_code == 0, certified.output
    cert = SuiteResult.load(cert_out)
    assert cert.threats == [] and cert.certification is not None
    assert cert.certification.radii == res.certification.radii  # same seed, same certificates
    # certify needs its section.
    plain = _write(tmp_path, TINY)
    no_cert = runner.invoke(app, ["certify", "--spec", str(plain), "--out", str(cert_out)])
    assert no_cert.exit_code == 2 and "evaluation.certification" in no_cert.output


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    spec_path = _write(tmp_path, TINY)
    result = CliRunner().invoke(
        app, ["evaluate", "--spec", str(spec_path), "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 2
    assert "model.weights" in result.output and "Traceback" not in result.output


def test_attacks_listing() -> None:
    result = CliRunner().invoke(app, ["attacks"])
    assert result.exit_code == 0 and "pgd" in result.output


_COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", ["", *_COMMANDS])
def test_help_reads_as_plain_sentences(command: str, columns: int) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(columns)}, prog_name="robustops")
    assert result.exit_code == 0, result.output
    # No reStructuredText: neither ``literals`` nor roles such as :class:`X` reach the terminal.
    assert "`" not in result.output
    assert not re.search(r":[a-z]+:", result.output.replace("Exit code:", ""))
    assert max(len(line) for line in result.output.splitlines()) <= columns
    if command:
        assert "Usage: robustops " + command in result.output


def test_command_list_shows_one_summary_per_command() -> None:
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert set(_COMMANDS) >= {"train", "evaluate", "certify", "gate", "threats", "report"}
    for command in _COMMANDS:
        (row,) = [line for line in out.splitlines() if re.match(rf"│ {command} ", line)]
        assert row.rstrip(" │").endswith("."), row  # the first paragraph, one sentence


def test_version_is_the_installed_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"robustops {version('robustops')}"


def test_budget_tiers_cut_the_suite_down(tmp_path: Path) -> None:
    tiers = {
        "quick": {"n_samples": 20, "attacks": ["pgd"], "audit": False},
        "l2-only": {"threats": ["l2"]},
        "broken": {"attacks": ["fgsm"]},
        "nightly": {},
    }
    spec = _with("evaluation.tiers", tiers)
    spec["evaluation"]["audit"] = {"n_samples": 10}
    s = load_spec(_write(tmp_path, spec))
    quick = s.with_tier("quick")
    assert quick.evaluation is not None and quick.evaluation.n_samples == 20
    assert [[a.name for a in t.attacks] for t in quick.evaluation.threats] == [["pgd"], ["pgd"]]
    assert quick.evaluation.audit is None
    only = s.with_tier("l2-only")
    assert only.evaluation is not None and [t.name for t in only.evaluation.threats] == ["l2"]
    assert s.with_tier("nightly").evaluation == s.evaluation
    with pytest.raises(SpecError) as info:
        s.with_tier("broken")  # the l2 threat has no fgsm
    assert info.value.errors[0][0] == "evaluation.tiers.broken.attacks"
    with pytest.raises(SpecError) as info:
        s.with_tier("weekly")
    assert info.value.errors[0][0] == "evaluation.tiers"


def test_calibration_attack_follows_the_threats_knowledge(tmp_path: Path) -> None:
    """A score-based threat used to be refused because the default calibration attack (PGD,
    white-box) was validated against it, even with calibration disabled."""
    score = _with(
        "evaluation.threats",
        [
            {
                "name": "sq",
                "epsilon": 0.1,
                "knowledge": "score-based",
                "attacks": [{"name": "square", "queries": 50}],
            }
        ],
    )
    score["catalog"]["entries"][0]["exercised_by"] = ["sq"]
    off = spec_with(score, "evaluation.calibration", {"enabled": False})
    assert load_spec(_write(tmp_path, off)).build_calibration_attack() is None
    on = load_spec(_write(tmp_path, score)).build_calibration_attack()
    assert on is not None and on.name == "square"
    decision = spec_with(score, "evaluation.threats.0.knowledge", "decision-based")
    decision["evaluation"]["threats"][0]["attacks"] = [{"name": "uniform_noise"}]
    built = load_spec(_write(tmp_path, decision)).build_calibration_attack()
    assert built is not None and built.name == "uniform_noise"
