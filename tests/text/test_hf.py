"""Hugging Face sequence-classification models: a tiny BERT and a WordPiece tokenizer built
(:func:`robustops.text.hf.tiny_bert`) and saved by ``robustops.data.export`` (nothing is
downloaded: ``HF_HUB_OFFLINE=1``), loaded through the spec, attacked, evaluated by the suite and
the CLI, fine-tuned with adversarial augmentation; pickle refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip(
    "transformers", reason="Hugging Face models need the hf extra: pip install 'robustops[hf]'"
)
pytest.importorskip("tokenizers", reason="needs tokenizers (installed with transformers)")

from robustops.attacks.text import CharEdit, SplitWords, edits_within_budget
from robustops.cli import app
from robustops.config import load_spec
from robustops.data.export import write_tiny_sms_bert
from robustops.data.sms_spam import TextDataset
from robustops.errors import SpecError, UnsafeArtifactError
from robustops.evaluation import SuiteOptions, SuiteResult, SuiteThreat, run_suite
from robustops.runner import evaluate_spec
from robustops.text.hf import HFTextClassifier, directory_fingerprint
from robustops.threats import ThreatModel
from robustops.training.hf import fit_hf
from robustops.training.recipe import Recipe
from spec_helpers import spec_with, write_spec

THREAT: dict[str, Any] = {
    "name": "evasion",
    "norm": "word-edits",
    "epsilon": 0.2,
    "knowledge": "score-based",
    "query_budget": 100,
    "targeted": True,
    "target_class": 0,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def hf_dirs(sms: TextDataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``base``: the tiny model, untrained, as ``python -m robustops.data.export tiny-sms-bert``
    writes it; ``tuned``: it fine-tuned on SMS (two epochs, ~5 s); both saved with
    ``save_pretrained``."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    write_tiny_sms_bert(root / "base")
    clf = HFTextClassifier.load(root / "base", max_length=48)
    fit_hf(clf, sms.texts_train, sms.y_train, Recipe(epochs=2, batch_size=64, lr=3e-3), seed=0)
    clf.save(root / "tuned")
    return {"base": root / "base", "tuned": root / "tuned"}


@pytest.fixture(scope="session")
def tuned(hf_dirs: dict[str, Path]) -> HFTextClassifier:
    return HFTextClassifier.load(hf_dirs["tuned"], max_length=48)


def test_saved_folder_is_safetensors_only(hf_dirs: dict[str, Path]) -> None:
    names = sorted(p.name for p in hf_dirs["tuned"].iterdir())
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]


def test_predict_logits_shape_classes_and_accuracy(
    tuned: HFTextClassifier, sms: TextDataset
) -> None:
    texts = sms.texts_test[:300]
    logits = tuned.predict_logits(texts)
    assert logits.shape == (300, 2) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert tuned.num_classes == 2 and tuned.class_names == ["ham", "spam"]
    assert tuned.predict_logits([]).shape == (0, 2)
    # batching and truncation do not change the answer
    assert torch.allclose(tuned.predict_logits(texts[:7]), logits[:7], atol=1e-5)
    accuracy = float((logits.argmax(1) == sms.y_test[:300]).float().mean())
    assert accuracy > 0.9, accuracy
    assert tuned.fingerprint == directory_fingerprint(tuned.source)  # type: ignore[arg-type]


@pytest.mark.parametrize("attack_cls", [CharEdit, SplitWords])
def test_text_attack_runs_within_budget(
    tuned: HFTextClassifier, sms: TextDataset, attack_cls: type
) -> None:
    threat = ThreatModel.model_validate(THREAT)
    spam = [i for i, y in enumerate(sms.y_test.tolist()) if y == 1][:12]
    texts = [sms.texts_test[i] for i in spam]
    labels = sms.y_test[spam]
    attack = attack_cls(threat, seed=0)
    result = attack(tuned, texts, labels, targets=torch.zeros(len(texts), dtype=torch.int64))
    assert edits_within_budget(threat, texts, result).all()
    assert int(result.queries.max()) <= 100


def test_suite_result_round_trips(
    tuned: HFTextClassifier, sms: TextDataset, tmp_path: Path
) -> None:
    threat = ThreatModel.model_validate(THREAT)
    suite = [SuiteThreat(threat, [CharEdit(threat, seed=0), SplitWords(threat, seed=0)])]
    result = run_suite(
        tuned, sms.texts_test[:40], sms.y_test[:40], suite, SuiteOptions(batch_size=64, seed=0)
    )
    assert result.clean_accuracy > 0.8
    back = SuiteResult.load(result.save(tmp_path / "r.json"))
    assert back == result.sealed()


def test_pickle_and_remote_code_are_refused(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    only_bin = tmp_path / "only-bin"
    shutil.copytree(hf_dirs["base"], only_bin)
    (only_bin / "model.safetensors").unlink()
    (only_bin / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeArtifactError, match=r"pytorch_model\.bin"):
        HFTextClassifier.load(only_bin)
    extra = tmp_path / "extra"
    shutil.copytree(hf_dirs["base"], extra)
    (extra / "training_args.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeArtifactError, match=r"training_args\.bin"):
        HFTextClassifier.load(extra)
    remote = tmp_path / "remote"
    shutil.copytree(hf_dirs["base"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeArtifactError, match="remote code"):
        HFTextClassifier.load(remote)
    with pytest.raises(UnsafeArtifactError, match="fingerprint"):
        HFTextClassifier.load(hf_dirs["base"], sha256="0" * 64)


def test_local_files_only_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub name is never fetched: it is not a local folder, so the spec's path is refused
    before transformers is asked (and the hub is offline anyway)."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(SpecError, match="not a directory"):
        HFTextClassifier.load("bert-base-uncased")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="not a directory"):
        HFTextClassifier.load("google/bert_uncased_L-2_H-128_A-2")


def _spec(hf_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "tiny-hf-spam",
        "seed": 0,
        "device": "cpu",
        "data": {"name": "sms_spam"},
        "model": {"huggingface": {"path": str(hf_path), "max_length": 48}},
        "evaluation": {
            "n_samples": 30,
            "batch_size": 64,
            "threats": [{**THREAT, "attacks": [{"name": "char-edit"}, {"name": "split"}]}],
            "calibration": {"n_samples": 30},
        },
        "gate": {"min_clean_accuracy": 0.5, "max_p99_latency_ms": 1000},
        **extra,
    }


def test_spec_validation_names_fields(tmp_path: Path, hf_dirs: dict[str, Path]) -> None:
    spec = _spec(hf_dirs["tuned"])
    both = spec_with(spec, "model.factory", "robustops.text:char_ngram_classifier")
    with pytest.raises(SpecError, match="exactly one of factory and huggingface"):
        load_spec(write_spec(tmp_path, both))
    images = spec_with(spec, "data", {"name": "digits"})
    images["evaluation"]["threats"][0]["norm"] = "linf"
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(tmp_path, images))
    assert "model.huggingface" in [p for p, _ in exc.value.errors]
    file_out = {**spec, "train": {"epochs": 1, "out": "w/model.safetensors"}}
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(tmp_path, file_out))
    assert ("train.out", "must name a folder (no suffix) for this model") in exc.value.errors
    bad = spec_with(spec, "model.huggingface.max_length", 0)
    with pytest.raises(SpecError, match=r"model\.huggingface\.max_length"):
        load_spec(write_spec(tmp_path, bad))


def test_relative_path_resolves_against_the_spec(tmp_path: Path, hf_dirs: dict[str, Path]) -> None:
    import shutil

    shutil.copytree(hf_dirs["tuned"], tmp_path / "models" / "tiny")
    spec = load_spec(write_spec(tmp_path, _spec(Path("models/tiny"))))
    assert spec.model.huggingface is not None
    assert spec.model.huggingface.path == (tmp_path / "models" / "tiny").resolve()


def test_evaluate_spec_and_cli_report_gate(tmp_path: Path, hf_dirs: dict[str, Path]) -> None:
    spec_path = write_spec(tmp_path, _spec(hf_dirs["tuned"]))
    result = evaluate_spec(load_spec(spec_path))
    info = result.model
    assert info["fingerprint"] == directory_fingerprint(hf_dirs["tuned"])
    assert info["class_names"] == ["ham", "spam"]
    assert result.threats[0].name == "evasion"
    runner = CliRunner()
    out = tmp_path / "r.json"
    ran = runner.invoke(app, ["evaluate", "--spec", str(spec_path), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    loaded = SuiteResult.load(out)
    assert [t.robust_accuracy for t in loaded.threats] == [
        t.robust_accuracy for t in result.threats
    ]
    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    gate = runner.invoke(
        app, ["gate", "--result", str(out), "--baseline", str(out), "--policy", str(spec_path)]
    )
    assert gate.exit_code == 0, gate.output


def test_train_with_augmentation_then_evaluate(tmp_path: Path, hf_dirs: dict[str, Path]) -> None:
    """`robustops train` fine-tunes the base model with augmentation rounds and writes a
    save_pretrained folder; the same spec then evaluates that folder (model.weights)."""
    train = {
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.003,
        "augment": {
            "threat": {**THREAT, "name": "augment"},
            "attacks": [{"name": "char-edit"}, {"name": "split"}],
            "samples": 16,
            "start_epoch": 2,
        },
        "out": "w/tiny-hardened",
    }
    raw = _spec(hf_dirs["base"], train=train)
    raw["model"]["weights"] = "w/tiny-hardened"
    spec_path = write_spec(tmp_path, raw)
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--spec", str(spec_path)])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "w" / "tiny-hardened"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    sidecar = json.loads((tmp_path / "w" / "tiny-hardened.json").read_text())
    assert sidecar["sha256"] == directory_fingerprint(out)
    assert sidecar["base_fingerprint"] == directory_fingerprint(hf_dirs["base"])
    assert [h["augment"] is not None for h in sidecar["history"]] == [False, True]
    assert sidecar["history"][-1]["n_train"] >= 3627
    result = evaluate_spec(load_spec(spec_path))
    assert result.model["weights"] == str(out)
    assert result.clean_accuracy > 0.8
