"""Text through the pipeline spec and the command line: train (with adversarial augmentation),
evaluate, report and gate work on the SMS spam filter with the same result JSON as images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from robustops.attacks.text import TextEdit, apply_edits
from robustops.cli import app
from robustops.config import load_spec
from robustops.errors import SpecError
from robustops.evaluation import SuiteResult
from robustops.text.models import TorchTextClassifier
from spec_helpers import spec_with, write_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

THREAT: dict[str, Any] = {
    "name": "evasion",
    "norm": "word-edits",
    "epsilon": 0.2,
    "knowledge": "score-based",
    "query_budget": 200,
    "targeted": True,
    "target_class": 0,
}

TINY_TEXT: dict[str, Any] = {
    "name": "tiny-spam",
    "seed": 0,
    "data": {"name": "sms_spam"},
    "model": {
        "factory": "robustops.text:char_ngram_classifier",
        "kwargs": {"embed_dim": 32, "preprocess": "robustops.text.sanitize:sanitize"},
        "weights": "w/spam.safetensors",
    },
    "train": {
        "epochs": 3,
        "lr": 0.02,
        "augment": {
            "threat": {**THREAT, "name": "augment"},
            "attacks": [{"name": "char-edit"}, {"name": "split"}],
            "samples": 60,
            "start_epoch": 2,
        },
        "out": "w/spam.safetensors",
    },
    "evaluation": {
        "n_samples": 60,
        "threats": [{**THREAT, "attacks": [{"name": "char-edit"}, {"name": "split"}]}],
        "calibration": {"n_samples": 40},
    },
    "gate": {"min_clean_accuracy": 0.8, "max_p99_latency_ms": 1000},
}


@pytest.mark.parametrize("name", ["sms_spam.yaml", "sms_spam_standard.yaml"])
def test_shipped_text_specs_are_valid(name: str) -> None:
    spec = load_spec(CONFIGS / name)
    assert spec.data.modality == "text"
    assert {t.norm for t in spec.evaluation.threats} == {"word-edits"}  # type: ignore[union-attr]
    assert spec.build_threats()[0].attacks[0].threat.target_class == 0


def test_train_evaluate_report_gate(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, TINY_TEXT)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--spec", str(spec_path)])
    assert trained.exit_code == 0, trained.output
    weights = tmp_path / "w" / "spam.safetensors"
    sidecar = json.loads((tmp_path / "w" / "spam.safetensors.json").read_text())
    assert sidecar["recipe"] == "augment" and sidecar["epochs_run"] == 3
    assert [h["augment"] is not None for h in sidecar["history"]] == [False, True, True]
    # lineage: every augmented text replays from its training source and keeps its label
    data = load_spec(spec_path)
    from robustops.runner import load_spec_dataset

    ds = load_spec_dataset(data)
    lines = (tmp_path / "w" / "spam.safetensors.augment.jsonl").read_text().splitlines()
    assert len(lines) == sidecar["augmented_texts"] > 0
    for line in lines:
        rec = json.loads(line)
        source = ds.texts_train[rec["source"]]  # type: ignore[union-attr]
        edits = [TextEdit(**e) for e in rec["edits"]]
        assert apply_edits(source, edits) == rec["text"]
        assert rec["label"] == int(ds.y_train[rec["source"]]) == 1
    # the saved model carries its vocabulary and its sanitizer
    model = TorchTextClassifier.load(weights, sha256=sidecar["sha256"])
    assert model.preprocess is not None and model.preprocess("fr\u200bee") == "free"

    out = tmp_path / "result.json"
    evaluated = runner.invoke(app, ["evaluate", "--spec", str(spec_path), "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    res = SuiteResult.load(out)
    t = res.threat("evasion")
    assert res.n_samples == 60 and res.data["name"] == "sms_spam"
    assert res.model["weights_sha256"] == sidecar["sha256"]
    assert t.threat.norm == "word-edits" and t.targets == [0] * 60
    assert t.n_attacked is not None and 0 < t.n_attacked <= 30
    assert [a.name for a in t.attacks] == ["char-edit", "split"]
    cal = res.calibration
    assert cal is not None and cal.temperature is not None
    assert cal.temperature.attack == "char-edit"  # the text default
    assert cal.temperature.n_clean == cal.temperature.n_adversarial == 40
    assert all(a.mean_edits is not None for a in t.attacks if a.n_broken)

    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    assert "word edits" in (tmp_path / "rep" / "report.md").read_text()

    gated = runner.invoke(app, ["gate", "-r", str(out), "-p", str(spec_path), "-b", str(out)])
    assert gated.exit_code == 0, gated.output


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("evaluation.threats.0.norm", "linf", "evaluation.threats.0.norm"),
        ("evaluation.audit", {"n_samples": 10}, "evaluation.audit"),
        ("evaluation.certification", {"sigma": 0.25}, "evaluation.certification"),
        ("train.objective", {"name": "gaussian"}, "train.objective"),
        ("train.augment.attacks", [{"name": "char-edit", "bogus": 1}], "train.augment.attacks.0"),
        ("evaluation.threats.0.attacks", [{"name": "pgd"}], "evaluation.threats.0.attacks.0"),
        ("evaluation.threats.0.epsilon", 2.0, "evaluation.threats.0"),
    ],
)
def test_text_spec_errors_name_the_field(tmp_path: Path, path: str, value: Any, where: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, spec_with(TINY_TEXT, path, value)))
    assert any(p.startswith(where) for p, _ in info.value.errors), info.value.errors


TINY_IMAGE: dict[str, Any] = {
    "name": "tiny-digits",
    "data": {"name": "digits"},
    "model": {"factory": "robustops.models:mlp", "kwargs": {"input_dim": 64, "hidden": [32]}},
    "train": {"epochs": 2, "out": "w/mlp.safetensors"},
    "evaluation": {"threats": [{"name": "linf", "epsilon": 0.1, "attacks": [{"name": "fgsm"}]}]},
}


def test_image_specs_refuse_text_pieces(tmp_path: Path) -> None:
    word = spec_with(
        TINY_IMAGE, "evaluation.threats.0", {**THREAT, "attacks": [{"name": "char-edit"}]}
    )
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, word))
    assert any(p == "evaluation.threats.0.norm" for p, _ in info.value.errors)
    augmented = spec_with(TINY_IMAGE, "train.augment", TINY_TEXT["train"]["augment"])
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, augmented))
    assert any(p == "train.augment" for p, _ in info.value.errors), info.value.errors


def test_text_training_refuses_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank used to train the text model and write the same files."""
    from robustops.runner import train_spec

    monkeypatch.setenv("WORLD_SIZE", "2")
    spec = load_spec(write_spec(tmp_path, TINY_TEXT))
    with pytest.raises(SpecError, match="without torchrun"):
        train_spec(spec)
    assert not (tmp_path / "w" / "spam.safetensors").exists()
