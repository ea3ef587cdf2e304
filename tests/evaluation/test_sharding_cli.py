"""``robustops evaluate`` sharded from the command line: ``--workers 2`` and two torchrun ranks
write the single-process result sample by sample; text specs run in one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from result_helpers import assert_same_per_sample
from robustops.cli import app
from robustops.evaluation import SuiteResult
from spec_helpers import write_spec

SPEC: dict[str, Any] = {
    "name": "sharded-cli",
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits"},
    "model": {
        "factory": "robustops.models:mlp",
        "kwargs": {"input_dim": 64, "hidden": [32]},
        "weights": "w/mlp.safetensors",
    },
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.005, "out": "w/mlp.safetensors"},
    "evaluation": {
        "n_samples": 40,
        "batch_size": 16,
        "threats": [
            {
                "name": "linf",
                "epsilon": 0.1,
                "attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 5}],
            }
        ],
        "calibration": {"n_samples": 40},
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SuiteResult]:
    """The spec with its weights trained, and its single-process result (``A.json``)."""
    folder = tmp_path_factory.mktemp("sharded-cli")
    spec = write_spec(folder, SPEC)
    runner = CliRunner()
    done = runner.invoke(app, ["train", "--spec", str(spec)])
    assert done.exit_code == 0, done.output
    out = folder / "A.json"
    single = runner.invoke(app, ["evaluate", "--spec", str(spec), "--out", str(out)])
    assert single.exit_code == 0, single.output
    result = SuiteResult.load(out)
    assert result.topology is None
    # The fixture exercises what it should: some samples broken, some robust.
    linf = result.threat("linf")
    assert 0 < linf.n_robust < linf.n_attacked
    return spec, result


def test_workers_flag_equals_one_process(trained: tuple[Path, SuiteResult]) -> None:
    spec, single = trained
    out = spec.parent / "B.json"
    done = CliRunner().invoke(
        app, ["evaluate", "--spec", str(spec), "--out", str(out), "--workers", "2"]
    )
    assert done.exit_code == 0, done.output
    sharded = SuiteResult.load(out)
    assert_same_per_sample(sharded, single)
    topo = sharded.topology
    assert topo is not None and topo.executor == "local" and topo.workers == 2
    assert [(s.start, s.stop) for s in topo.shards] == [(0, 20), (20, 40)]
    assert len({s.pid for s in topo.shards}) == 2
    # Shard checkpoints land next to the result by default.
    shards = sorted(p.name for p in (spec.parent / "B.json.shards").iterdir())
    assert shards == ["shard-00000.json", "shard-00001.json"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 -m robustops evaluate --spec SPEC ARGS`` on 127.0.0.1."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "robustops", "evaluate", "--spec", str(spec), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, env=env, cwd=spec.parent, capture_output=True, text=True, timeout=300, check=False
    )


def test_two_torchrun_ranks_equal_one_process(trained: tuple[Path, SuiteResult]) -> None:
    spec, single = trained
    folder = spec.parent / "torchrun"
    folder.mkdir()
    out = folder / "C.json"
    proc = _torchrun(spec, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = SuiteResult.load(out)
    assert_same_per_sample(merged, single)
    topo = merged.topology
    assert topo is not None and topo.executor == "torchrun" and topo.workers == 2
    assert [(s.start, s.stop) for s in topo.shards] == [(0, 20), (20, 40)]
    assert len({s.pid for s in topo.shards}) == 2
    # Only rank 0 wrote: the result and nothing else in its folder (no shard checkpoints, no
    # second result from rank 1).
    assert sorted(p.name for p in folder.iterdir()) == ["C.json"]


def test_torchrun_ranks_keep_and_reuse_shard_checkpoints(
    trained: tuple[Path, SuiteResult],
) -> None:
    spec, single = trained
    shard_dir = spec.parent / "torchrun-shards"
    out = spec.parent / "D.json"
    first = _torchrun(spec, "--out", str(out), "--shard-dir", str(shard_dir))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(p.name for p in shard_dir.iterdir()) == ["shard-00000.json", "shard-00001.json"]
    # A rerun after rank 1's shard was lost: rank 0 reuses its shard, rank 1 runs again.
    (shard_dir / "shard-00001.json").unlink()
    again = _torchrun(spec, "--out", str(out), "--shard-dir", str(shard_dir))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    merged = SuiteResult.load(out)
    assert_same_per_sample(merged, single)
    assert merged.topology is not None
    assert [s.resumed for s in merged.topology.shards] == [True, False]


def test_workers_under_torchrun_are_refused(trained: tuple[Path, SuiteResult]) -> None:
    spec, _ = trained
    out = spec.parent / "E.json"
    proc = _torchrun(spec, "--out", str(out), "--workers", "2")
    assert proc.returncode != 0
    assert "drop --workers and --ray" in proc.stdout + proc.stderr
    assert not out.exists()


TEXT: dict[str, Any] = {
    "name": "text-sharded",
    "seed": 0,
    "data": {"name": "sms_spam"},
    "model": {
        "factory": "robustops.text:char_ngram_classifier",
        "kwargs": {"embed_dim": 16},
        "weights": "w/spam.safetensors",
    },
    "train": {"epochs": 1, "lr": 0.02, "out": "w/spam.safetensors"},
    "evaluation": {
        "n_samples": 20,
        "threats": [
            {
                "name": "evasion",
                "norm": "word-edits",
                "epsilon": 0.2,
                "knowledge": "score-based",
                "query_budget": 50,
                "attacks": [{"name": "char-edit"}],
            }
        ],
        "calibration": {"enabled": False},
    },
}


def test_workers_on_a_text_spec_run_in_one_process(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TEXT)
    runner = CliRunner()
    done = runner.invoke(app, ["train", "--spec", str(spec)])
    assert done.exit_code == 0, done.output
    single = runner.invoke(
        app, ["evaluate", "--spec", str(spec), "--out", str(tmp_path / "a.json")]
    )
    assert single.exit_code == 0, single.output
    args = ["evaluate", "--spec", str(spec), "--out", str(tmp_path / "b.json"), "--workers", "2"]
    two = runner.invoke(app, args)
    assert two.exit_code == 0, two.output
    assert "text models are evaluated in one process" in two.output
    a, b = SuiteResult.load(tmp_path / "a.json"), SuiteResult.load(tmp_path / "b.json")
    # Text models are not sharded: no topology, no shard checkpoints, the one-process result.
    assert b.topology is None
    assert not (tmp_path / "b.json.shards").exists()
    assert_same_per_sample(b, a)


def test_a_text_spec_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for training: every rank would evaluate every text, so torchrun is refused up front
    (before any model or data is loaded)."""
    from robustops.config import load_spec
    from robustops.errors import SpecError
    from robustops.runner import evaluate_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "configs" / "sms_spam.yaml")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SpecError, match="without torchrun"):
        evaluate_spec(spec)
