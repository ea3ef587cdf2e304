"""``robustops evaluate`` sharded from the command line: ``--workers 2``, two torchrun ranks on
one node and on two nodes, and a two-node Ray cluster reached by its address write the
single-process result sample by sample; text specs run in one process."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from real_components import finish_all, missing_component
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


_TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def _torchrun_cmd(spec: Path, launch: list[str], *args: str) -> list[str]:
    """``torchrun LAUNCH -m robustops evaluate --spec SPEC ARGS``."""
    return [
        sys.executable, "-m", "torch.distributed.run", *launch,
        "-m", "robustops", "evaluate", "--spec", str(spec), *args,
    ]  # fmt: skip


def _torchrun(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 -m robustops evaluate --spec SPEC ARGS`` on 127.0.0.1."""
    launch = ["--nnodes", "1", "--nproc_per_node", "2"]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    return subprocess.run(
        _torchrun_cmd(spec, launch, *args),
        env={**os.environ, **_TORCHRUN_ENV},
        cwd=spec.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
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


def test_torchrun_on_two_nodes_equals_one_process(trained: tuple[Path, SuiteResult]) -> None:
    """Two torchrun launches at once, node ranks 0 and 1 of ``--nnodes 2`` (static rendezvous
    at node 0's master over loopback), one process each: what two machines run."""
    spec, single = trained
    folder = spec.parent / "two-nodes"
    folder.mkdir()
    out = folder / "F.json"
    port = str(_free_port())
    procs = []
    for node_rank in ("0", "1"):
        launch = ["--nnodes", "2", "--node_rank", node_rank, "--nproc_per_node", "1"]
        launch += ["--master_addr", "127.0.0.1", "--master_port", port]
        procs.append(
            subprocess.Popen(
                _torchrun_cmd(spec, launch, "--out", str(out)),
                env={**os.environ, **_TORCHRUN_ENV},
                cwd=spec.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    finish_all(procs)
    merged = SuiteResult.load(out)
    assert_same_per_sample(merged, single)
    topo = merged.topology
    assert topo is not None and topo.executor == "torchrun" and topo.workers == 2
    assert topo.address == f"127.0.0.1:{port}"
    assert [(s.start, s.stop) for s in topo.shards] == [(0, 20), (20, 40)]
    # Shard r ran on node r (torchrun's GROUP_RANK), in two processes.
    assert [s.node for s in topo.shards] == ["0", "1"]
    assert len({s.pid for s in topo.shards}) == 2
    # Global rank 0 (on node 0) wrote the result; node 1 wrote nothing.
    assert sorted(p.name for p in folder.iterdir()) == ["F.json"]


def _ray_command(*args: str) -> list[str]:
    """The ``ray`` command line of the Ray installed with this Python."""
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def _stop_process_groups(groups: list[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM the process groups, SIGKILL what is left after ``grace_s`` (Ray's head ignores
    SIGTERM for a while); returns the groups that had to be killed."""
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGTERM)

    def alive() -> list[int]:
        out = []
        for g in groups:
            try:
                os.killpg(g, 0)
                out.append(g)
            except ProcessLookupError:
                pass
        return out

    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = alive()
    for g in killed:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return killed


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[str, dict[str, str], set[str]]]:
    """A Ray cluster of two nodes started as a real one would be: ``ray start --head`` and
    ``ray start --address HEAD:PORT`` (a second raylet joining it, on this machine), one CPU
    each, token authentication with a fresh token (every node and the driver get it through
    ``RAY_AUTH_TOKEN``; nothing under ``~/.ray`` is read or written). Yields the head's address,
    the variables a driver needs in its environment, and the ids of the two nodes; every process
    of the cluster is stopped afterwards (by process group: ``ray stop`` would stop every Ray on
    the machine)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        missing_component("Ray is not installed: pip install 'robustops[ray]' (CI installs it)")
    # Short: Ray's socket paths under it are limited to 107 bytes.
    temp = tempfile.mkdtemp(prefix="ro-ray-")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    env = {**os.environ, **ray_env}
    node = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--temp-dir", temp]
    node += ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    starts = [
        ["start", "--head", "--port", str(port), "--include-dashboard=false", *node],
        ["start", "--address", address, *node],
    ]
    groups: list[int] = []
    try:
        for args in starts:
            # Its own process group: the daemons `ray start` leaves behind stay in it.
            proc = subprocess.Popen(
                _ray_command(*args),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            groups.append(proc.pid)
            log = proc.communicate(timeout=120)[0]
            assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{log[-3000:]}"
        nodes = _wait_for_nodes(address, env, 2)
        yield address, ray_env, nodes
    finally:
        _stop_process_groups(groups)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(address: str, env: dict[str, str], n: int, timeout_s: float = 60) -> set[str]:
    """The ids of the cluster's active nodes once there are ``n`` (``ray status``)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            _ray_command("status", "--address", address),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = status.stdout + status.stderr
        active = text.split("Active:", 1)[-1].split("Pending:", 1)[0]
        nodes = set(re.findall(r"node_([0-9a-f]+)", active))
        if status.returncode == 0 and len(nodes) >= n:
            return nodes
        time.sleep(0.5)
    raise AssertionError(f"the Ray cluster at {address} never had {n} nodes:\n{text[-3000:]}")


@pytest.mark.slow  # about 30 s: two `ray start`s, a driver and two Ray workers, the stop
def test_a_two_node_ray_cluster_by_address_equals_one_process(
    trained: tuple[Path, SuiteResult], ray_cluster: tuple[str, dict[str, str], set[str]]
) -> None:
    """``robustops evaluate --ray HEAD:PORT --workers 2`` run as a separate driver process: one
    shard on each node of the cluster, merged into the single-process result."""
    spec, single = trained
    address, ray_env, nodes = ray_cluster
    out = spec.parent / "G.json"
    args = ["--out", str(out), "--ray", address, "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "robustops", "evaluate", "--spec", str(spec), *args],
        env={**os.environ, **ray_env},
        cwd=spec.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = SuiteResult.load(out)
    assert_same_per_sample(merged, single)
    topo = merged.topology
    assert topo is not None and topo.executor == "ray" and topo.workers == 2
    assert topo.address == address
    assert [(s.start, s.stop) for s in topo.shards] == [(0, 20), (20, 40)]
    # Each node of the cluster ran one shard: the host name cannot tell them apart here (both
    # nodes are on this machine), the recorded Ray node ids do.
    assert {s.node for s in topo.shards} == nodes
    assert len({s.host for s in topo.shards}) == 1
    # The driver kept the shard checkpoints next to the result.
    shards = sorted(p.name for p in (spec.parent / "G.json.shards").iterdir())
    assert shards == ["shard-00000.json", "shard-00001.json"]
