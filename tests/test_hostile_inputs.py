"""RobustOps used as a hostile or careless user would (issue 17): a checklist of probes.

Each test is named after its probe and reproduces a hole of the tool on the code before the
fix: a spec that runs ``os:system``, racing writers, output paths found broken after the
work, crafted text-model files, YAML alias bombs, tracebacks where one line belongs. Read top
to bottom, it is the list of what the trust model (docs/security.md) promises.

Names added by the fix are imported inside the tests, so each probe fails on its own on the
old code instead of the whole module failing to import.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from robustops.cli import app
from robustops.errors import RobustOpsError, SpecError, UnsafeArtifactError
from robustops.models import mlp, save_weights
from spec_helpers import spec_with, write_spec

runner = CliRunner()

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {
        "factory": "robustops.models:mlp",
        "kwargs": {"input_dim": 64, "hidden": [16]},
        "weights": "w/mlp.safetensors",
    },
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.01, "out": "w/mlp.safetensors"},
    "evaluation": {
        "n_samples": 20,
        "batch_size": 20,
        "calibration": {"enabled": False},
        "threats": [{"name": "linf", "epsilon": 0.1, "attacks": [{"name": "fgsm"}]}],
    },
}

# a module the user brings: imported only when trusted
USER_CODE = """
import pathlib
import torch
from robustops.models import MLP

pathlib.Path(__file__).with_suffix(".imported").touch()


def good(**kwargs):
    return MLP(**kwargs)


def raises(**kwargs):
    raise RuntimeError("the factory could not find its config")


class FailsMidRun(MLP):
    calls = 0

    def forward(self, x):
        FailsMidRun.calls += 1
        if FailsMidRun.calls > 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().forward(x)


def fails_mid_run(**kwargs):
    return FailsMidRun(**kwargs)
"""


def _user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A fresh user module on ``sys.path``; returns its name and the marker file its import
    creates."""
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(folder))
    return name, folder / f"{name}.imported"


def _spec(tmp_path: Path, **changes: Any) -> Path:
    spec = TINY
    for path, value in changes.items():
        spec = spec_with(spec, path.replace("__", "."), value)
    return write_spec(tmp_path, spec)


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "w" / "mlp.safetensors"
    save_weights(mlp(input_dim=64, hidden=[16]), path)
    return path


def _one_line_error(result: Any) -> str:
    """The CLI ended with exit 2 and a message, not a traceback."""
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), out
    return str(out)


# -- 1. a spec is not a shell ---------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["train", "evaluate", "validate"])
def test_spec_factory_os_system_runs_a_command(
    tmp_path: Path, verb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    spec = _spec(
        tmp_path,
        model__factory="os:system",
        model__kwargs={"command": f"touch {marker}"},
    )
    _weights(tmp_path)
    args = [verb, str(spec)] if verb == "validate" else [verb, "--spec", str(spec)]
    result = runner.invoke(app, args)
    out = _one_line_error(result)
    assert not marker.exists()
    assert "model.factory" in out and "--trust-code" in out


def test_validate_lists_the_code_a_spec_would_import_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, imported = _user_module(tmp_path, monkeypatch)
    spec = _spec(
        tmp_path,
        model__factory="robustops.models:ensemble",
        model__kwargs={"members": [{"factory": f"{name}:good", "kwargs": {"input_dim": 64}}]},
    )
    refused = runner.invoke(app, ["validate", str(spec)])
    out = _one_line_error(refused)
    assert "model.kwargs.members.0.factory" in out
    trusted = runner.invoke(app, ["validate", str(spec), "--trust-code", name])
    assert trusted.exit_code == 0, trusted.output
    assert "model.factory = robustops.models:ensemble (built-in)" in trusted.output
    assert f"model.kwargs.members.0.factory = {name}:good (trusted)" in trusted.output
    assert not imported.exists()  # listed, never imported


def test_user_factory_runs_only_when_trusted_outside_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustops.models import build_model
    from robustops.trust import ENV_VAR, trusting

    name, imported = _user_module(tmp_path, monkeypatch)
    with pytest.raises(SpecError, match="--trust-code"):
        build_model(f"{name}:good", {"input_dim": 64})
    assert not imported.exists()  # refused before the import
    with trusting([name]):
        assert isinstance(build_model(f"{name}:good", {"input_dim": 64}), torch.nn.Module)
    monkeypatch.setenv(ENV_VAR, f"other,{name}")
    assert isinstance(build_model(f"{name}:good", {"input_dim": 64}), torch.nn.Module)


@pytest.mark.parametrize(
    ("factory", "kwargs", "field"),
    [
        ("os:getcwd", {}, "model.factory"),
        ("robustops.models:save_weights", {}, "model.factory"),  # RobustOps, but not a factory
        ("robustops.models:ensemble", {"members": [{"factory": "os:getcwd"}]}, "members.0.factory"),
    ],
)
def test_every_callable_a_spec_names_is_checked(
    factory: str, kwargs: dict[str, Any], field: str
) -> None:
    from robustops.models import build_model

    with pytest.raises(SpecError) as info:
        build_model(factory, kwargs)
    assert type(info.value).__name__ == "UntrustedCodeError"
    assert info.value.errors[0][0].endswith(field)


def test_text_preprocess_named_in_kwargs_needs_trust() -> None:
    from robustops.text import char_ngram_classifier

    with pytest.raises(SpecError) as info:
        char_ngram_classifier(["free prize now", "see you later"], preprocess="os:getcwd")
    assert type(info.value).__name__ == "UntrustedCodeError"
    assert info.value.errors[0][0] == "model.kwargs.preprocess"


# -- 5. crafted text-model files ----------------------------------------------------------------


def _text_model_file(path: Path, meta: Any, *, vocab: int = 3, dim: int = 4) -> Path:
    from safetensors.torch import save_file

    tensors = {
        "embedding.weight": torch.zeros(max(vocab, 1), dim),
        "fc.weight": torch.zeros(2, dim),
        "fc.bias": torch.zeros(2),
    }
    raw = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(tensors, str(path), metadata={"robustops": raw})
    return path


def _good_meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": "robustops.text.TorchTextClassifier/1",
        "model": {"vocab_size": 3, "num_classes": 2, "embed_dim": 4},
        "vocab": {
            "kind": "char_ngram",
            "ngram_range": [1, 2],
            "lowercase": True,
            "ngrams": ["a", "b", "c"],
        },
        "preprocess": None,
        "user": {},
    }
    meta.update(changes)
    return meta


def test_text_model_pinned_hash_is_checked_before_metadata_is_parsed(tmp_path: Path) -> None:
    from robustops.text import TorchTextClassifier

    path = _text_model_file(tmp_path / "m.safetensors", _good_meta(vocab={"kind": "char_ngram"}))
    with pytest.raises(UnsafeArtifactError, match="sha256"):
        TorchTextClassifier.load(path, sha256="0" * 64)


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ("{not json", "not valid JSON"),
        (_good_meta(vocab=None), "vocab"),
        ({k: v for k, v in _good_meta().items() if k != "vocab"}, "vocab"),
        (_good_meta(model={"vocab_size": 3, "num_classes": 2, "embed_dim": 4, "x": 1}), "x"),
        (_good_meta(surprise=True), "surprise"),
        (
            _good_meta(model={"vocab_size": 4_000_000_000, "num_classes": 2, "embed_dim": 64}),
            "vocab_size",
        ),
    ],
)
def test_malformed_text_model_metadata_gets_a_clear_error(
    tmp_path: Path, meta: Any, expected: str
) -> None:
    from robustops.text import TorchTextClassifier

    path = _text_model_file(tmp_path / "m.safetensors", meta)
    with pytest.raises(SpecError) as info:
        TorchTextClassifier.load(path)
    assert expected in str(info.value)


def test_text_model_hook_must_be_on_the_built_in_list(tmp_path: Path) -> None:
    from robustops.text import TorchTextClassifier

    path = _text_model_file(
        tmp_path / "m.safetensors", _good_meta(preprocess="robustops.models:save_weights")
    )
    with pytest.raises(SpecError) as info:
        TorchTextClassifier.load(path)
    assert type(info.value).__name__ == "UntrustedCodeError"
    ok = _text_model_file(
        tmp_path / "ok.safetensors", _good_meta(preprocess="robustops.text.sanitize:sanitize")
    )
    assert TorchTextClassifier.load(ok).preprocess is not None


# -- 2. atomic writes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_result(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from robustops.config import load_spec
    from robustops.runner import evaluate_spec

    folder = tmp_path_factory.mktemp("result")
    _weights(folder)
    return evaluate_spec(load_spec(write_spec(folder, TINY)))


def test_concurrent_result_writers_and_a_reader(tmp_path: Path, small_result: Any) -> None:
    from robustops.evaluation import SuiteResult

    path = tmp_path / "result.json"
    small_result.save(path)
    stop = time.monotonic() + 2.0
    errors: list[BaseException] = []
    invalid = 0
    reads = 0

    def write() -> None:
        try:
            while time.monotonic() < stop:
                small_result.save(path)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for w in writers:
        w.start()
    while time.monotonic() < stop:
        reads += 1
        try:
            SuiteResult.load(path)
        except SpecError:
            invalid += 1
    for w in writers:
        w.join()
    assert reads > 10
    assert errors == [] and invalid == 0
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp files left


def test_no_writer_in_src_uses_a_fixed_temp_name() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "robustops"
    offenders = [
        f"{p.relative_to(src)}:{i}"
        for p in src.rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if ('with_suffix(".' in line and "tmp" in line) or '+ ".tmp"' in line
    ]
    assert offenders == []


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    from robustops.io import atomic_path

    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk went away")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# -- 3. output problems found before the work ---------------------------------------------------


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_evaluate_out_is_checked_before_the_work(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustops.runner

    spec = _spec(tmp_path)
    _weights(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "adir" if where == "directory" else tmp_path / "afile" / "result.json"
    if where == "directory":
        out.mkdir()
    called: list[bool] = []
    real = robustops.runner.evaluate_spec

    def spy(*args: Any, **kwargs: Any) -> Any:
        called.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(robustops.runner, "evaluate_spec", spy)
    result = runner.invoke(app, ["evaluate", "--spec", str(spec), "--out", str(out)])
    out_text = _one_line_error(result)
    assert "--out" in out_text
    assert called == []  # refused before the evaluation


def _disk_full_for(match: Callable[[Path], bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.replace`` onto a path ``match`` accepts fails with ENOSPC (a full disk)."""
    real = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if match(Path(dst)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_full_disk_when_writing_the_result_keeps_it_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustops.evaluation import SuiteResult

    spec = _spec(tmp_path)
    _weights(tmp_path)
    out = tmp_path / "out" / "result.json"
    _disk_full_for(lambda p: p == out, monkeypatch)
    result = runner.invoke(app, ["evaluate", "--spec", str(spec), "--out", str(out)])
    text = " ".join(_one_line_error(result).split())
    assert "No space left" in text and "kept in" in text
    kept = Path(text.split("kept in ")[1].split()[0])
    assert SuiteResult.load(kept).n_samples == 20
    assert list((tmp_path / "out").iterdir()) == []  # no temp file left behind


# -- 6. bounded documents and messages ----------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    """``[&a0 [x × 9], &a1 [*a0 × 9], …]``: a few hundred bytes, 9**levels items expanded."""
    parts = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(parts) + "]"


def test_yaml_alias_bomb_in_an_attack_parameter(tmp_path: Path) -> None:
    text = f"""
name: bomb
model: {{factory: "robustops.models:mlp", kwargs: {{input_dim: 64}}}}
data: {{name: digits}}
evaluation:
  threats:
    - name: linf
      epsilon: 0.1
      attacks:
        - name: pgd
          steps: {_alias_bomb()}
"""
    spec = tmp_path / "bomb.yaml"
    spec.write_text(text)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from robustops.cli import app\n"
        "sys.argv = ['robustops', 'validate', sys.argv[1]]\n"
        "app()\n"
    )
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "expands to more than" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 60


def test_echoed_values_are_bounded(tmp_path: Path) -> None:
    from robustops.config import load_spec

    huge = [[1] * 1000] * 100  # the attack's own check echoes it whole
    spec = _spec(
        tmp_path,
        evaluation__threats__0__attacks__0={"name": "pgd", "steps": huge},
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert len(str(info.value)) < 2_000


def test_spec_file_size_is_bounded(tmp_path: Path) -> None:
    from robustops.config import load_spec

    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\n# " + "x" * 2_000_000 + "\n")
    with pytest.raises(SpecError, match="larger than"):
        load_spec(spec)


# -- 8. one line instead of a traceback ---------------------------------------------------------


def test_factory_that_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = _user_module(tmp_path, monkeypatch)
    monkeypatch.setenv("ROBUSTOPS_TRUSTED_MODULES", name)
    spec = _spec(tmp_path, model__factory=f"{name}:raises")
    result = runner.invoke(app, ["train", "--spec", str(spec)])
    out = " ".join(_one_line_error(result).split())
    assert "building the model" in out and "could not find its config" in out


def test_model_that_fails_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = _user_module(tmp_path, monkeypatch)
    spec = _spec(tmp_path, model__factory=f"{name}:fails_mid_run")
    _weights(tmp_path)
    args = ["evaluate", "--spec", str(spec), "--out", str(tmp_path / "r.json")]
    monkeypatch.setenv("ROBUSTOPS_TRUSTED_MODULES", name)
    result = runner.invoke(app, args)
    out = " ".join(_one_line_error(result).split())
    assert "during evaluation" in out and "illegal memory access" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(tmp_path: Path) -> None:
    spec = _spec(tmp_path, device="cuda")
    _weights(tmp_path)
    result = runner.invoke(app, ["evaluate", "--spec", str(spec), "-o", str(tmp_path / "r.json")])
    assert "device" in _one_line_error(result)


def test_non_utf8_spec_and_result_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe caf\xe9\n")
    assert "UTF-8" in _one_line_error(runner.invoke(app, ["validate", str(bad)]))
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_clean_accuracy: 0.5\n")
    result = tmp_path / "result.json"
    result.write_bytes(b'{"name": "\xff"}')
    gated = runner.invoke(app, ["gate", "--result", str(result), "--policy", str(policy)])
    assert "UTF-8" in _one_line_error(gated)


def test_full_disk_while_checkpointing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    ckpt = tmp_path / "w" / "mlp.safetensors.ckpt"
    _disk_full_for(lambda p: p.parent == ckpt, monkeypatch)
    result = runner.invoke(app, ["train", "--spec", str(spec)])
    out = " ".join(_one_line_error(result).split())
    assert "checkpoint_dir" in out and "No space left" in out and "kept in" in out


def _fake_texts(monkeypatch: pytest.MonkeyPatch, odd_text: str) -> None:
    import robustops.runner
    from robustops.data import TEXT_DATASETS, TextDataset

    texts = [f"message number {i} free prize" if i % 2 else f"see you at {i}" for i in range(40)]
    texts[3] = odd_text

    def load(test_fraction: float = 0.2, seed: int = 0) -> TextDataset:
        y = torch.tensor([i % 2 for i in range(40)])
        return TextDataset("sms_spam", texts[:30], y[:30], texts[30:], y[30:], ("ham", "spam"),
                           "0" * 64, seed, test_fraction)  # fmt: skip

    monkeypatch.setitem(TEXT_DATASETS, "sms_spam", load)
    monkeypatch.setattr(robustops.runner, "TEXT_DATASETS", TEXT_DATASETS, raising=False)


TEXT_SPEC: dict[str, Any] = {
    "name": "text",
    "data": {"name": "sms_spam"},
    "model": {"factory": "robustops.text:char_ngram_classifier", "kwargs": {"min_count": 1}},
    "train": {"epochs": 1, "batch_size": 8, "lr": 0.05, "out": "t.safetensors"},
}


@pytest.mark.parametrize(
    ("odd_text", "expected"),
    [("lone \ud800 surrogate", "surrogate"), ("word " * 1000, "cap of 1,000")],
)
def test_odd_texts_are_refused_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd_text: str, expected: str
) -> None:
    _fake_texts(monkeypatch, odd_text)
    spec = TEXT_SPEC
    if expected.startswith("cap"):  # the default cap is 10 000; a smaller one keeps it quick
        spec = spec_with(TEXT_SPEC, "data.max_text_chars", 1000)
    result = runner.invoke(app, ["train", "--spec", str(write_spec(tmp_path, spec))])
    assert expected in " ".join(_one_line_error(result).split())


def test_gate_rule_naming_an_undefined_threat_is_a_validate_error(tmp_path: Path) -> None:
    spec = _spec(tmp_path, gate={"min_robust_accuracy": {"linf": 0.1, "l2": 0.2}})
    out = _one_line_error(runner.invoke(app, ["validate", str(spec)]))
    assert "gate.min_robust_accuracy.l2" in out


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    result = runner.invoke(app, ["train", "--spec", str(spec), "--resume"])
    assert result.exit_code == 0, result.output
    assert "starting from scratch" in " ".join(result.output.split())


def test_errors_are_robustops_errors() -> None:
    from robustops import errors

    for name in ("OutputError", "ModelRuntimeError", "UntrustedCodeError"):
        assert issubclass(getattr(errors, name), RobustOpsError)
