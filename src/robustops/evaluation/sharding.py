"""The suite sharded across processes, torchrun ranks or a Ray cluster, merged per sample.

The samples are split by position into contiguous shards; each shard runs
:func:`~robustops.evaluation.suite.run_suite_detailed` in a worker on its slice (its
``SuiteRecord.indices`` the slice of the split's indices), and the driver merges the shards'
*per-sample* outcomes (robust, broken_by, queries, targets, worst-case logits, clean logits,
the sizes of the successful perturbations) and recomputes every figure from them, so the merged
:class:`SuiteResult` equals the single-process one sample by sample (auto-attack#45: totals
cannot be merged into a per-sample worst case). This holds because nothing a sample gets depends
on its neighbours: attacks draw from per-sample generators keyed by content
(:meth:`robustops.attacks.Attack._randomness`), targets from (seed, sample index). Only wall
times and the latency figures (shard 0's worker) differ.

Workers rebuild the model from a :class:`SuitePlan`: a picklable factory of the architecture
(e.g. ``functools.partial(build_model, "robustops.models:mlp", kwargs)``) and its state dict;
no model object crosses a process boundary. Each finished shard is written by the driver to
``shard_dir`` (``shard-00003.json``, atomically) with a key of the plan; a rerun reads the
shards whose key matches and runs only the others, so a killed worker costs at most its shard.

Executors: ``inline`` (this process, one shard after another), ``local`` (a
``ProcessPoolExecutor`` with the ``spawn`` context), ``ray`` (one ``ray.remote`` task per shard,
on ``ray.init(address=...)``; ``"local"`` starts a head on this machine for the run), and
``torchrun`` (:func:`run_sharded_torchrun`: rank ``r`` runs shard ``r`` and rank 0 gathers and
merges over gloo).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustops._util import environment, state_dict_sha256
from robustops.evaluation.metrics import TemperatureFit
from robustops.evaluation.result import (
    AdversarialExample,
    AttackFigures,
    SamplesRecord,
    ShardRecord,
    StochasticRecord,
    SuiteResult,
    ThreatResult,
    TopologyRecord,
)
from robustops.evaluation.suite import (
    AttackTally,
    SuiteOptions,
    SuiteRecord,
    SuiteRun,
    SuiteThreat,
    ThreatDetails,
    run_suite_detailed,
    suite_calibration,
    threat_calibration,
)
from robustops.io import atomic_write_text, read_text_file
from robustops.models.normalize import Normalized

__all__ = [
    "ArchitectureFactory",
    "Executor",
    "ScaleOut",
    "ShardOutcome",
    "SuitePlan",
    "merge_shards",
    "run_sharded",
    "run_sharded_torchrun",
    "shard_bounds",
]

log = logging.getLogger(__name__)

Executor = Literal["inline", "local", "ray"]

_MAX_SHARD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ScaleOut:
    """How to spread a suite run (what ``robustops evaluate --workers/--ray/--shard-dir`` set).

    Attributes:
        workers: local worker processes (``local`` executor), or Ray tasks in flight.
        ray_address: a Ray cluster address (``"local"``: a head started on this machine for the
            run); ``None``: local processes.
        shard_dir: shard checkpoints (``None``: none).
        shards: how many shards (default: the workers).
    """

    workers: int = 1
    ray_address: str | None = None
    shard_dir: str | Path | None = None
    shards: int | None = None

    @property
    def executor(self) -> Executor:
        if self.ray_address is not None:
            return "ray"
        return "local" if self.workers > 1 else "inline"


@dataclass(frozen=True)
class ArchitectureFactory:
    """``fn(**kwargs)`` moved to ``device`` in eval mode: a model's architecture, rebuilt in a
    worker (``fn`` pickles by reference, as the module and name the parent already resolved
    under its trust policy)."""

    fn: Callable[..., nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """``(mean, std)`` when the model expects normalised inputs: the architecture is wrapped in
    :class:`robustops.models.Normalized`, as the parent's model is."""

    def __call__(self) -> nn.Module:
        model = self.fn(**self.kwargs)
        if self.normalize is not None:
            model = Normalized(model, list(self.normalize[0]), list(self.normalize[1]))
        return model.to(self.device).eval()


@dataclass(frozen=True)
class SuitePlan:
    """Everything a worker needs to run its shard (picklable).

    Attributes:
        model_factory: builds the model's architecture (no weights), e.g. a
            ``functools.partial`` of :func:`robustops.models.build_model`.
        state_dict: the model's parameters and buffers (CPU tensors), loaded into what the
            factory builds; ``None`` when the factory already loads them.
        inputs: ``(N, ...)`` tensor inputs in the model's bounds (CPU).
        labels: ``(N,)`` int64 labels.
        threats: threats and their attacks, in order.
        options: the suite's options (the same in every shard).
        record: name, indices of the ``N`` samples in their split, identity records.
        temperature: a held-out temperature for the calibration figures.
        threads: torch threads per worker (``None``: the CPU count over the workers).
    """

    model_factory: Callable[[], nn.Module]
    state_dict: dict[str, Tensor] | None
    inputs: Tensor
    labels: Tensor
    threats: Sequence[SuiteThreat]
    options: SuiteOptions = field(default_factory=SuiteOptions)
    record: SuiteRecord = field(default_factory=SuiteRecord)
    temperature: TemperatureFit | None = None
    threads: int | None = None

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def indices(self) -> list[int]:
        """The samples' indices in their split (default ``0..N-1``)."""
        idx = self.record.indices
        return list(idx) if idx is not None else list(range(self.n))

    def key(self) -> str:
        """sha256 of what decides a shard's outcomes (inputs, labels, indices, model state,
        threats and attacks with their parameters, options): a checkpoint is reused only when
        its key matches."""
        h = hashlib.sha256()
        h.update(self.inputs.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.labels.detach().cpu().to(torch.int64).numpy().tobytes())
        h.update(json.dumps(self.indices()).encode())
        if self.state_dict is not None:
            h.update(_state_sha256(self.state_dict).encode())
        threats = [
            (st.threat.model_dump_json(), [(a.name, repr(a.params())) for a in st.attacks])
            for st in self.threats
        ]
        opts = replace(self.options, device=None)
        h.update(json.dumps([threats, repr(opts), repr(self.temperature)]).encode())
        return h.hexdigest()

    def shard(self, start: int, stop: int) -> SuitePlan:
        """The plan restricted to positions ``[start, stop)``."""
        return replace(
            self,
            inputs=self.inputs[start:stop],
            labels=self.labels[start:stop],
            record=replace(self.record, indices=self.indices()[start:stop]),
        )


def _state_sha256(state: dict[str, Tensor]) -> str:
    module = nn.Module()
    for i, (name, value) in enumerate(state.items()):
        module.register_buffer(f"b{i}_{name.replace('.', '_')}", value)
    return state_dict_sha256(module)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges covering ``0..n-1``, sizes differing by at
    most one (empty shards dropped; no samples: one empty shard)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if n == 0:
        return [(0, 0)]
    size, extra = divmod(n, shards)
    out, start = [], 0
    for k in range(shards):
        stop = start + size + (1 if k < extra else 0)
        if stop > start:
            out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class ShardOutcome:
    """One shard's result and the per-sample tensors behind its figures (JSON-ready through
    :meth:`to_json` / :meth:`from_json`)."""

    index: int
    start: int
    stop: int
    key: str
    run: SuiteRun
    host: str
    pid: int
    resumed: bool = False
    node: str | None = None
    """The cluster node that ran it (Ray node id, torchrun node rank); ``None``: local."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "start": self.start,
                "stop": self.stop,
                "key": self.key,
                "host": self.host,
                "pid": self.pid,
                "node": self.node,
                "resumed": self.resumed,
                "result": self.run.result.model_dump(mode="json"),
                "clean_logits": self.run.clean_logits.tolist(),
                "threats": [
                    {
                        "worst_logits": d.worst_logits.tolist(),
                        "sizes": d.sizes,
                        "edits": d.edits,
                        "success_queries": d.success_queries,
                    }
                    for d in self.run.threats
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str, *, resumed: bool = False) -> ShardOutcome:
        data = json.loads(text)
        result = SuiteResult.model_validate(data["result"])
        k = len(data["clean_logits"][0]) if data["clean_logits"] else 0
        details = [
            ThreatDetails(
                worst_logits=_logits(d["worst_logits"], k),
                sizes=[list(map(float, s)) for s in d["sizes"]],
                edits=[list(map(float, e)) for e in d["edits"]],
                success_queries=[int(q) for q in d["success_queries"]],
            )
            for d in data["threats"]
        ]
        run = SuiteRun(result, _logits(data["clean_logits"], k), details)
        return cls(
            index=int(data["index"]),
            start=int(data["start"]),
            stop=int(data["stop"]),
            key=str(data["key"]),
            run=run,
            host=str(data["host"]),
            pid=int(data["pid"]),
            resumed=resumed or bool(data.get("resumed", False)),
            node=None if data.get("node") is None else str(data["node"]),
        )


def _logits(rows: list[list[float]], k: int) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), k)


def _run_shard(
    plan: SuitePlan, index: int, start: int, stop: int, key: str, node: str | None = None
) -> str:
    """Worker entry point: build the model, run the suite on positions ``[start, stop)``, return
    the :class:`ShardOutcome` as JSON (what crosses the process or network boundary); ``node``:
    the cluster node this runs on, recorded with the host name and process id."""
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    model = plan.model_factory()
    if plan.state_dict is not None:
        model.load_state_dict(plan.state_dict)
    part = plan.shard(start, stop)
    run = run_suite_detailed(
        model,
        part.inputs,
        part.labels,
        part.threats,
        part.options,
        record=part.record,
        temperature=part.temperature,
    )
    outcome = ShardOutcome(
        index, start, stop, key, run, socket.gethostname(), os.getpid(), node=node
    )
    return outcome.to_json()


def _run_shard_on_ray(plan: SuitePlan, index: int, start: int, stop: int, key: str) -> str:
    """:func:`_run_shard` as a Ray task, recording the id of the Ray node it runs on (several
    nodes may share a host name)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return _run_shard(plan, index, start, stop, key, node=node)


def _shard_path(shard_dir: Path, index: int) -> Path:
    return shard_dir / f"shard-{index:05d}.json"


def _read_checkpoint(path: Path, key: str, bounds: tuple[int, int]) -> ShardOutcome | None:
    """The shard saved at ``path`` if it belongs to this plan (same key and bounds), else
    ``None`` (missing, unreadable, or from another plan: the shard runs again)."""
    if not path.is_file():
        return None
    try:
        outcome = ShardOutcome.from_json(
            read_text_file(path, "shard", max_bytes=_MAX_SHARD_BYTES), resumed=True
        )
    except Exception as exc:  # a torn or foreign file only costs its shard
        log.warning("ignoring shard checkpoint %s: %s", path, exc)
        return None
    if outcome.key != key or (outcome.start, outcome.stop) != bounds:
        log.info("shard checkpoint %s is from another plan; running the shard again", path)
        return None
    return outcome


def run_sharded(
    plan: SuitePlan,
    *,
    shards: int,
    executor: Executor = "local",
    workers: int | None = None,
    shard_dir: str | Path | None = None,
    ray_address: str | None = None,
) -> SuiteResult:
    """Run ``plan`` in ``shards`` contiguous shards and merge them (see the module docstring).

    Args:
        shards: how many shards (at least the workers, for balance).
        executor: ``inline``, ``local`` (``workers`` spawned processes) or ``ray``.
        workers: processes in parallel (``local``; default ``shards``); recorded for ``ray``.
        shard_dir: where finished shards are checkpointed and read back on a rerun (``None``:
            no checkpoints).
        ray_address: the Ray cluster (``"local"``: start a head on this machine, shut down
            after the run; ``None``: Ray's own default, ``RAY_ADDRESS`` or a new local one).
    """
    if plan.n == 0:
        raise ValueError("no samples to evaluate")
    t0 = time.perf_counter()
    bounds = shard_bounds(plan.n, shards)
    n_workers = workers or len(bounds) or 1
    if plan.threads is None and executor != "inline":
        cores = os.cpu_count() or 1
        plan = replace(plan, threads=max(1, cores // n_workers))
    key = plan.key()
    folder = Path(shard_dir) if shard_dir is not None else None
    done: dict[int, ShardOutcome] = {}
    todo: list[int] = []
    for k, b in enumerate(bounds):
        found = _read_checkpoint(_shard_path(folder, k), key, b) if folder else None
        if found is not None:
            done[k] = found
        else:
            todo.append(k)
    log.info("%d shards: %d from checkpoints, %d to run", len(bounds), len(done), len(todo))
    for outcome in _execute(plan, bounds, todo, key, executor, n_workers, ray_address):
        if folder is not None:
            atomic_write_text(_shard_path(folder, outcome.index), outcome.to_json())
        done[outcome.index] = outcome
    address = ray_address if executor == "ray" else None
    return merge_shards(
        [done[k] for k in range(len(bounds))],
        plan,
        executor=executor,
        workers=n_workers,
        address=address,
        started=t0,
    )


def _execute(
    plan: SuitePlan,
    bounds: list[tuple[int, int]],
    todo: list[int],
    key: str,
    executor: Executor,
    workers: int,
    ray_address: str | None,
) -> Iterator[ShardOutcome]:
    """Run the shards ``todo``, yielding each outcome as it finishes."""
    if not todo:
        return
    if executor == "inline":
        for k in todo:
            yield ShardOutcome.from_json(_run_shard(plan, k, *bounds[k], key))
    elif executor == "local":
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_shard, plan, k, *bounds[k], key) for k in todo]
            for fut in as_completed(futures):
                yield ShardOutcome.from_json(fut.result())
    elif executor == "ray":
        yield from _execute_ray(plan, bounds, todo, key, ray_address)
    else:
        raise ValueError(f"unknown executor {executor!r}: inline, local or ray")


def _execute_ray(
    plan: SuitePlan,
    bounds: list[tuple[int, int]],
    todo: list[int],
    key: str,
    address: str | None,
) -> Iterator[ShardOutcome]:
    """One Ray task per shard; ``address`` ``"local"`` starts (and then stops) a head here."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("the ray executor needs Ray: pip install 'robustops[ray]'") from exc
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=1)(_run_shard_on_ray)
        plan_ref = ray.put(plan)
        pending = {task.remote(plan_ref, k, *bounds[k], key): k for k in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                yield ShardOutcome.from_json(ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def merge_shards(
    outcomes: Sequence[ShardOutcome],
    plan: SuitePlan,
    *,
    executor: str,
    workers: int,
    address: str | None = None,
    started: float | None = None,
) -> SuiteResult:
    """One :class:`SuiteResult` from contiguous shard outcomes in position order: per-sample
    records concatenated, every figure recomputed from them (the result's own consistency rules
    then re-check it), examples the first ones as a single process keeps them. ``started``: the
    run's ``perf_counter`` start (its wall time; default: the merge's)."""
    t_merge = time.perf_counter()
    parts = sorted(outcomes, key=lambda o: o.start)
    position = 0
    for o in parts:
        if o.start != position:
            raise ValueError(f"shards do not tile the samples: shard {o.index} starts at {o.start}")
        position = o.stop
    if position != plan.n:
        raise ValueError(f"the shards cover {position} of {plan.n} samples")
    results = [o.run.result for o in parts]
    y = plan.labels.detach().cpu().to(torch.int64)
    n = plan.n
    clean_logits = torch.cat([o.run.clean_logits for o in parts]) if parts else torch.empty(0)
    clean_correct = [c for r in results for c in r.samples.clean_correct]
    opts = plan.options
    threats = [
        _merge_threat(k, parts, y, clean_correct, opts, plan.temperature)
        for k in range(len(plan.threats))
    ]
    first = results[0]
    merge_s = time.perf_counter() - t_merge
    shard_records = [
        ShardRecord(
            index=o.index,
            start=o.start,
            stop=o.stop,
            host=o.host,
            pid=o.pid,
            node=o.node,
            wall_time_s=o.run.result.wall_time_s,
            resumed=o.resumed,
        )
        for o in parts
    ]
    return SuiteResult(
        name=first.name,
        created_at=max(r.created_at for r in results),
        seed=opts.seed,
        device=first.device,
        n_samples=n,
        clean_accuracy=sum(clean_correct) / n if n else 0.0,
        threats=threats,
        data=dict(plan.record.data_info),
        model=dict(plan.record.model_info),
        environment=environment(),
        samples=SamplesRecord(
            indices=plan.indices(), labels=y.tolist(), clean_correct=clean_correct
        ),
        wall_time_s=time.perf_counter() - (started if started is not None else t_merge),
        calibration=suite_calibration(clean_logits, y, opts, plan.temperature) if n else None,
        latency=first.latency,
        stochastic=_merge_stochastic([r.stochastic for r in results]),
        topology=TopologyRecord(
            executor=executor,
            workers=workers,
            address=address,
            shards=shard_records,
            merge_time_s=merge_s,
        ),
    )


def _merge_threat(
    k: int,
    parts: Sequence[ShardOutcome],
    y: Tensor,
    clean_correct: list[bool],
    opts: SuiteOptions,
    temperature: TemperatureFit | None,
) -> ThreatResult:
    """Threat ``k`` over every shard, its figures recomputed from the per-sample records."""
    ts = [o.run.result.threats[k] for o in parts]
    details = [o.run.threats[k] for o in parts]
    first = ts[0]
    robust = [r for t in ts for r in t.robust]
    broken_by = [b for t in ts for b in t.broken_by]
    queries = [q for t in ts for q in t.queries]
    targets = [g for t in ts for g in (t.targets or [])] if first.targets is not None else None
    n = len(robust)
    fixed = first.threat.target_class
    attacked = [
        c and not (fixed is not None and label == fixed)
        for c, label in zip(clean_correct, y.tolist(), strict=True)
    ]
    n_attacked, n_robust = sum(attacked), sum(robust)
    n_broken = sum(1 for a, r in zip(attacked, robust, strict=True) if a and not r)
    attacks = [
        _merge_attack(j, ts, details, [o.start for o in parts]) for j in range(len(first.attacks))
    ]
    worst = torch.cat([d.worst_logits for d in details])
    return ThreatResult(
        name=first.name,
        threat=first.threat,
        robust_accuracy=n_robust / n if n else 0.0,
        attack_success_rate=n_broken / n_attacked if n_attacked else 0.0,
        n_robust=n_robust,
        n_attacked=n_attacked,
        attacks=attacks,
        total_queries=sum(queries),
        wall_time_s=sum(t.wall_time_s for t in ts),
        robust=robust,
        broken_by=broken_by,
        queries=queries,
        targets=targets,
        examples=_merge_examples(ts, [o.start for o in parts], opts.n_examples),
        calibration=threat_calibration(worst, y, opts, temperature)
        if opts.calibration and n
        else None,
        independent=first.independent,
    )


def _merge_attack(
    j: int, ts: Sequence[ThreatResult], details: Sequence[ThreatDetails], offsets: list[int]
) -> AttackFigures:
    """Attack ``j`` of a threat over every shard: counts and queries summed, shares and medians
    recomputed from the per-sample sizes."""
    figs = [t.attacks[j] for t in ts]
    broken = (
        sorted(i + off for f, off in zip(figs, offsets, strict=True) for i in (f.broken or []))
        if figs[0].broken is not None
        else None
    )
    tally = AttackTally(
        n_broken=sum(f.n_broken for f in figs),
        total_queries=sum(f.total_queries for f in figs),
        success_queries=sum(d.success_queries[j] for d in details),
        sizes=[torch.tensor([s for d in details for s in d.sizes[j]], dtype=torch.float32)],
        edits=[torch.tensor([e for d in details for e in d.edits[j]], dtype=torch.float32)],
        record_broken=broken is not None,
        broken=broken or [],
    )
    return tally.figures(
        figs[0].name,
        figs[0].params,
        sum(f.n_attacked for f in figs),
        sum(f.wall_time_s for f in figs),
    )


def _merge_examples(
    ts: Sequence[ThreatResult], offsets: list[int], n_examples: int
) -> list[AdversarialExample]:
    """The examples a single process keeps: the first broken samples in the order the attacks
    ran, by position within an attack (each shard kept its own first ones)."""
    order = {a.name: i for i, a in reversed(list(enumerate(ts[0].attacks)))}
    shifted = [
        ex.model_copy(update={"index": ex.index + off})
        for t, off in zip(ts, offsets, strict=True)
        for ex in t.examples
    ]
    shifted.sort(key=lambda ex: (order.get(ex.attack, len(order)), ex.index))
    return shifted[:n_examples]


def _merge_stochastic(records: Sequence[StochasticRecord | None]) -> StochasticRecord | None:
    present = [r for r in records if r is not None]
    if not present:
        return None
    return StochasticRecord(
        detected=any(r.detected for r in present),
        max_logit_gap=max(r.max_logit_gap for r in present),
        eot_samples=max(r.eot_samples for r in present),
        adapted_attacks=sorted({a for r in present for a in r.adapted_attacks}),
        unadapted_attacks=sorted({a for r in present for a in r.unadapted_attacks}),
    )


def run_sharded_torchrun(plan: SuitePlan, *, shard_dir: str | Path | None = None) -> SuiteResult:
    """Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): rank ``r`` runs shard ``r`` of
    ``WORLD_SIZE`` (reusing its checkpoint in ``shard_dir`` if any), the outcomes are gathered
    to rank 0 over gloo (CPU), which merges them; the merged result is broadcast back, so every
    rank returns it (write it from rank 0 only)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    t0 = time.perf_counter()
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    try:
        bounds = shard_bounds(plan.n, world)
        key = plan.key()
        folder = Path(shard_dir) if shard_dir is not None else None
        text: str | None = None
        if rank < len(bounds):
            found = (
                _read_checkpoint(_shard_path(folder, rank), key, bounds[rank]) if folder else None
            )
            if found is not None:
                text = found.to_json()
            else:
                node = os.environ.get("GROUP_RANK")  # torchrun's node rank
                text = _run_shard(plan, rank, *bounds[rank], key, node=node)
                if folder is not None:
                    atomic_write_text(_shard_path(folder, rank), text)
        gathered: list[Any] = [None] * world if rank == 0 else []
        dist.gather_object(text, gathered if rank == 0 else None, dst=0)
        box: list[Any] = [None]
        if rank == 0:
            outcomes = [ShardOutcome.from_json(t) for t in gathered if t is not None]
            master = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
            merged = merge_shards(
                outcomes, plan, executor="torchrun", workers=world, address=master, started=t0
            )
            box = [merged.model_dump_json()]
        dist.broadcast_object_list(box, src=0)
        return SuiteResult.model_validate_json(box[0])
    finally:
        if own:
            dist.destroy_process_group()
