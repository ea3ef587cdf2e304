"""A sharded suite equals the single-process one sample by sample, resumes from its shard
checkpoints, and runs the same on Ray."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from real_components import missing_component
from result_helpers import assert_same_per_sample
from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.data import Dataset
from robustops.data.embedded import load_digits
from robustops.evaluation import SuiteOptions, SuiteRecord, SuiteResult, SuiteThreat, run_suite
from robustops.evaluation.sharding import SuitePlan, run_sharded, shard_bounds
from robustops.models.reference import mlp

N = 60
_FACTORY = functools.partial(mlp, input_dim=64, hidden=(32,), num_classes=10, seed=0)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def model_state(digits: Dataset) -> dict[str, Tensor]:
    """A small MLP trained for a few epochs on the digits (about 90 % clean accuracy)."""
    model = _FACTORY()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.x_train, digits.y_train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _threats() -> list[SuiteThreat]:
    linf = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
    l2 = ThreatModel(name="l2-targeted", norm="l2", epsilon=1.0, targeted=True)
    return [
        SuiteThreat(
            linf,
            [
                build_attack("fgsm", linf, random_start=True, start_scale=0.5),
                build_attack("pgd", linf, steps=5),
                build_attack("square", linf, queries=30),
            ],
        ),
        SuiteThreat(l2, [build_attack("pgd", l2, steps=5), build_attack("square", l2, queries=20)]),
    ]


def _plan(digits: Dataset, state: dict[str, Tensor]) -> SuitePlan:
    return SuitePlan(
        model_factory=_FACTORY,
        state_dict=state,
        inputs=digits.x_test[:N],
        labels=digits.y_test[:N],
        threats=_threats(),
        # A batch size that cuts shards differently from single-process batches.
        options=SuiteOptions(batch_size=7, seed=3, latency_calls=0, n_examples=3),
        record=SuiteRecord(name="digits", indices=list(range(100, 100 + N))),
    )


def _single(plan: SuitePlan) -> SuiteResult:
    model = plan.model_factory()
    model.load_state_dict(plan.state_dict or {})
    return run_suite(
        model,
        plan.inputs,
        plan.labels,
        plan.threats,
        plan.options,
        record=plan.record,
    )


@pytest.fixture(scope="module")
def single(digits: Dataset, model_state: dict[str, Tensor]) -> SuiteResult:
    result = _single(_plan(digits, model_state))
    # The fixture exercises what it should: samples broken by each kind of attack, some robust.
    linf = result.threat("linf-0.1")
    assert 0 < linf.n_robust < linf.n_attacked
    assert result.threat("l2-targeted").targets is not None
    return result


def test_shard_bounds_tile_the_samples() -> None:
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]


def test_two_local_processes_equal_one_process_sample_by_sample(
    digits: Dataset, model_state: dict[str, Tensor], single: SuiteResult, tmp_path: Path
) -> None:
    plan = _plan(digits, model_state)
    merged = run_sharded(plan, shards=2, executor="local", workers=2, shard_dir=tmp_path)
    assert_same_per_sample(merged, single)
    assert merged.topology is not None
    assert merged.topology.executor == "local" and merged.topology.workers == 2
    assert [(s.start, s.stop) for s in merged.topology.shards] == [(0, 30), (30, 60)]
    assert len({s.pid for s in merged.topology.shards}) == 2  # two processes really ran
    assert [s.node for s in merged.topology.shards] == [None, None]  # no cluster node
    # The merged result passes the result's own consistency checks once saved and read back.
    again = SuiteResult.load(merged.save(tmp_path / "merged.json"))
    assert again.topology == merged.topology


def test_a_rerun_only_runs_the_missing_shards(
    digits: Dataset, model_state: dict[str, Tensor], single: SuiteResult, tmp_path: Path
) -> None:
    plan = _plan(digits, model_state)
    first = run_sharded(plan, shards=3, executor="inline", shard_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000.json",
        "shard-00001.json",
        "shard-00002.json",
    ]
    # A killed run: shard 1 never finished; shard 2's file was torn mid-write by something else.
    (tmp_path / "shard-00001.json").unlink()
    resumed = run_sharded(plan, shards=3, executor="inline", shard_dir=tmp_path)
    assert resumed.topology is not None
    assert [s.resumed for s in resumed.topology.shards] == [True, False, True]
    assert_same_per_sample(resumed, single)
    assert_same_per_sample(first, single)
    # A checkpoint from another plan (another seed) is not reused.
    other = SuitePlan(**{**plan.__dict__, "options": SuiteOptions(batch_size=7, seed=4)})
    redone = run_sharded(other, shards=3, executor="inline", shard_dir=tmp_path)
    assert redone.topology is not None
    assert not any(s.resumed for s in redone.topology.shards)


def test_a_torn_checkpoint_only_costs_its_shard(
    digits: Dataset, model_state: dict[str, Tensor], tmp_path: Path
) -> None:
    plan = _plan(digits, model_state)
    run_sharded(plan, shards=2, executor="inline", shard_dir=tmp_path)
    path = tmp_path / "shard-00000.json"
    path.write_text(path.read_text()[:100])
    again = run_sharded(plan, shards=2, executor="inline", shard_dir=tmp_path)
    assert again.topology is not None
    assert [s.resumed for s in again.topology.shards] == [False, True]
    assert json.loads(path.read_text())["index"] == 0


def test_ray_cluster_equals_one_process_sample_by_sample(
    digits: Dataset, model_state: dict[str, Tensor], single: SuiteResult, tmp_path: Path
) -> None:
    try:
        import ray
    except ImportError:
        missing_component("Ray is not installed: pip install 'robustops[ray]' (CI installs it)")
    temp = tempfile.mkdtemp(prefix="ro-ray-")  # short: Ray's socket paths are limited to 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    try:
        plan = _plan(digits, model_state)
        merged = run_sharded(plan, shards=2, executor="ray", ray_address="auto")
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert_same_per_sample(merged, single)
    assert merged.topology is not None and merged.topology.executor == "ray"
    # Each shard records the Ray node that ran it (one node here).
    nodes = {s.node for s in merged.topology.shards}
    assert len(nodes) == 1 and None not in nodes


def test_no_samples_are_refused_before_any_worker_starts(
    digits: Dataset, model_state: dict[str, Tensor]
) -> None:
    plan = _plan(digits, model_state)
    empty = SuitePlan(
        **{
            **plan.__dict__,
            "inputs": plan.inputs[:0],
            "labels": plan.labels[:0],
            "record": SuiteRecord(name="digits"),
        }
    )
    with pytest.raises(ValueError, match="no samples"):
        run_sharded(empty, shards=2, executor="local")
