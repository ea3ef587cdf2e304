"""``configs/sms_hf.yaml`` end to end on a tiny budget: ``python -m robustops.data.export
tiny-sms-bert`` into a temporary folder, then ``train`` and ``evaluate`` through
:mod:`robustops.runner` with the spec's paths pointed there; the result round-trips."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip(
    "transformers", reason="Hugging Face models need the hf extra: pip install 'robustops[hf]'"
)
pytest.importorskip("tokenizers", reason="needs tokenizers (installed with transformers)")

from robustops.config import load_spec
from robustops.data.export import main as export_main
from robustops.evaluation import SuiteResult
from robustops.runner import check_outputs, evaluate_spec, train_spec
from robustops.text.hf import check_hf_directory, directory_fingerprint
from spec_helpers import write_spec

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sms_hf.yaml"


@pytest.fixture(autouse=True)
def _offline_one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No hub; one torch thread (the model is too small to share: ~1 s instead of ~13 s on a
    busy 2-core machine), restored afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(base: Path, tmp_path: Path) -> dict[str, Any]:
    """The example spec, its paths in ``tmp_path``: one epoch on ~450 messages (test fraction
    0.9), one augmentation round of 8 messages, 20 evaluated messages, the cheapest attacks."""
    spec = yaml.safe_load(CONFIG.read_text())
    assert spec["model"]["huggingface"]["path"] == "../artifacts/tiny-sms-bert"
    hardened = str(tmp_path / "hardened")
    spec["model"]["huggingface"]["path"] = str(base)
    spec["model"]["weights"] = hardened
    spec["data"]["test_fraction"] = 0.9
    spec["train"].update({"epochs": 1, "out": hardened})
    spec["train"]["augment"].update({"samples": 8, "start_epoch": 1})
    spec["train"]["augment"]["threat"]["query_budget"] = 20
    evaluation = spec["evaluation"]
    evaluation["n_samples"] = 20
    evaluation["calibration"]["n_samples"] = 10
    for threat in evaluation["threats"]:
        threat["query_budget"] = 20
        threat["attacks"] = threat["attacks"][:1]
    return spec


def test_example_spec_exports_trains_and_evaluates(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    base = tmp_path / "tiny-sms-bert"
    assert export_main(["tiny-sms-bert", str(base)]) == 0
    check_hf_directory(base)  # config.json + safetensors, no pickle
    assert {"model.safetensors", "tokenizer.json"} <= {p.name for p in base.iterdir()}
    spec = load_spec(write_spec(tmp_path, _tiny(base, tmp_path)))
    assert spec.gate is not None and spec.train is not None and spec.train.augment is not None

    sidecar = train_spec(spec)
    hardened = tmp_path / "hardened"
    assert sidecar["sha256"] == directory_fingerprint(hardened)
    assert sidecar["base_fingerprint"] == directory_fingerprint(base)
    assert [h["augment"] is not None for h in sidecar["history"]] == [True]
    check_outputs(spec)  # training again into the existing folder is allowed

    result = evaluate_spec(spec)
    assert result.model["fingerprint"] == directory_fingerprint(hardened)
    assert result.model["class_names"] == ["ham", "spam"]
    assert [t.name for t in result.threats] == ["spam-evasion-20pct", "spam-evasion-10pct"]
    assert 0.0 <= result.clean_accuracy <= 1.0
    back = SuiteResult.load(result.save(tmp_path / "result.json"))
    assert back == result.sealed()
    assert time.perf_counter() - t0 < 60
