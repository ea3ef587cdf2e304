"""The one trainer: objectives, AWP, curriculum, schedules, validation, early stopping, the
catastrophic-overfitting guard, checkpoints with exact resume, and DDP.

Everything random comes from one CPU generator seeded from ``seed`` (its state is checkpointed),
shuffling from :class:`~torch.utils.data.DistributedSampler` (seeded by ``seed`` and the epoch),
validation noise from a generator seeded by ``seed`` and the epoch. A run interrupted after an
epoch and resumed from its checkpoint therefore ends with the same weights as an uninterrupted
one (bit for bit on CPU with ``deterministic``), and N processes under ``torchrun`` compute the
same updates as one process up to floating-point summation order (see
:mod:`robustops.training.distributed`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler, TensorDataset

from robustops._util import make_generator
from robustops.errors import SpecError
from robustops.io import atomic_write_text
from robustops.training.awp import WeightPerturbation
from robustops.training.checkpoint import (
    epoch_stem,
    latest_checkpoint,
    model_state,
    optimizer_from_tensors,
    prune,
    read_checkpoint,
    write_checkpoint,
)
from robustops.training.distributed import DistContext
from robustops.training.perturb import BatchRandom, InnerLoss, Perturbation, SearchConfig, search
from robustops.training.recipe import PerturbationSpec, Recipe
from robustops.training.schedules import adaptive_update, curriculum_factor, learning_rate

__all__ = [
    "BatchEvent",
    "EpochMetrics",
    "FitHooks",
    "FitOptions",
    "TrainResult",
    "fit",
    "split_holdout",
]

log = logging.getLogger(__name__)

# Fields of a recipe that may differ between a run and its resumption (where files go).
_RESUME_FREE = frozenset({"out", "checkpoint_dir", "metrics", "keep_checkpoints"})


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch did; one line of the metrics file (JSON lines).

    Attributes:
        epoch: 1-based epoch number.
        lr: learning rate at the epoch's last batch.
        epsilon_factor: curriculum factor at the epoch's last batch, in [0, 1].
        epsilon: the primary threat's budget at that factor (input units), ``None`` without one.
        loss: mean training loss over the epoch's samples.
        train_accuracy: accuracy on the inputs the model was trained on (perturbed for
            adversarial objectives), in [0, 1].
        val_clean_accuracy, val_robust_accuracy: on the holdout; robust under PGD at the full
            budget (``None`` without a holdout).
        guard_fgsm_accuracy, guard_pgd_accuracy: the overfitting guard's figures.
        guard_restored: the guard found a collapse and restored the last good epoch's weights.
        step_scale: multiplier of the inner step size (lowered by the guard).
        best_epoch: epoch of the best validation robust accuracy so far.
        time_s: wall time of the epoch, validation included (seconds).
    """

    epoch: int
    lr: float
    epsilon_factor: float
    epsilon: float | None
    loss: float
    train_accuracy: float
    val_clean_accuracy: float | None = None
    val_robust_accuracy: float | None = None
    guard_fgsm_accuracy: float | None = None
    guard_pgd_accuracy: float | None = None
    guard_restored: bool = False
    step_scale: float = 1.0
    best_epoch: int | None = None
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class BatchEvent:
    """Sent after each training batch (for progress bars)."""

    epoch: int
    batch: int
    n_batches: int
    loss: float


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`fit`.

    Attributes:
        history: one :class:`EpochMetrics` per epoch run (resumed epochs included).
        final: ``"best"`` when the model holds the best-validation weights, else ``"last"``.
        best_epoch, best_robust_accuracy: the best validation epoch (``None`` without one).
        stopped_early: early stopping ended the run before ``recipe.epochs``.
        restores: times the overfitting guard restored weights.
        resumed_from: the epoch whose checkpoint the run resumed from, if any.
        world_size: processes that trained.
        wall_time_s: wall time of this call (seconds).
    """

    history: list[EpochMetrics]
    final: str
    best_epoch: int | None
    best_robust_accuracy: float | None
    stopped_early: bool
    restores: int
    resumed_from: int | None
    world_size: int
    wall_time_s: float


@dataclass(frozen=True)
class FitOptions:
    """Where a :func:`fit` run keeps its files, whether it resumes, and which processes train.

    Attributes:
        checkpoint_dir: where to write a checkpoint after every epoch (and ``best`` with a
            holdout); ``None``: no checkpoints.
        resume: continue from the newest complete checkpoint in ``checkpoint_dir`` (a fresh
            start when there is none). The recipe, seed and data must match.
        keep_checkpoints: epoch checkpoints to keep (older ones are deleted).
        metrics_path: JSON-lines file with one :class:`EpochMetrics` per epoch (rewritten from
            the checkpoint's history on resume); ``None``: no metrics file.
        data_info: identity of the data (``fingerprint`` at least) recorded in checkpoints.
        ctx: process group context (:func:`robustops.training.init_distributed`); default alone.
    """

    checkpoint_dir: Path | None = None
    resume: bool = False
    keep_checkpoints: int = 2
    metrics_path: Path | None = None
    data_info: dict[str, Any] | None = None
    ctx: DistContext = field(default_factory=DistContext)

    def __post_init__(self) -> None:
        for name in ("checkpoint_dir", "metrics_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class FitHooks:
    """Progress callbacks of :func:`fit`: ``on_epoch`` after each epoch (rank 0 and the others
    alike), ``on_batch`` after each training batch (for progress bars)."""

    on_epoch: Callable[[EpochMetrics], None] | None = None
    on_batch: Callable[[BatchEvent], None] | None = None


@dataclass(frozen=True)
class _Validation:
    """Accuracies on the holdout, in [0, 1] (``None`` when not measured).

    Attributes:
        clean: clean accuracy (``None`` without a holdout).
        robust: robust accuracy under PGD at the full budget (needs a norm-ball threat).
        robust_current: robust accuracy at the curriculum's current budget (what an adaptive
            curriculum follows; ``robust`` otherwise).
        guard_fgsm, guard_pgd: the overfitting guard's FGSM and PGD accuracies on its samples.
    """

    clean: float | None = None
    robust: float | None = None
    robust_current: float | None = None
    guard_fgsm: float | None = None
    guard_pgd: float | None = None


@dataclass(frozen=True)
class _Split:
    """The training inputs ``(N, ...)`` and labels ``(N,)`` and the holdout (maybe empty)."""

    x_tr: Tensor
    y_tr: Tensor
    x_va: Tensor
    y_va: Tensor


@dataclass(frozen=True)
class _EpochFit:
    """One epoch's training, summed over the ranks: mean loss, training accuracy, and the
    learning rate and curriculum factor at its last batch."""

    loss: float
    train_accuracy: float
    lr: float
    factor: float


@dataclass
class _State:
    """The trainer's mutable state, checkpointed as JSON."""

    epoch: int = 0
    global_step: int = 0
    adaptive: float = 0.0
    step_scale: float = 1.0
    guard_ref_pgd: float | None = None
    guard_ref_fgsm: float | None = None
    restores: int = 0
    best_robust: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def split_holdout(n: int, holdout: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train, holdout)`` of ``n`` samples: ``holdout`` drawn with ``seed``, both
    sorted."""
    if holdout >= n:
        raise SpecError.single(
            "train.validation.holdout", f"must be < the {n} training samples, got {holdout}"
        )
    perm = torch.randperm(n, generator=make_generator(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def _recipe_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "train") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in _RESUME_FREE and prefix == "train":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _recipe_diff(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}")
    return out


class _Trainer:
    """One :func:`fit` call's machinery (kept private; :func:`fit` is the API)."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        *,
        seed: int,
        options: FitOptions,
        device: torch.device,
    ) -> None:
        self.model = model
        self.recipe = recipe
        self.seed = seed
        self.options = options
        self.ctx = options.ctx
        self.device = device
        self.gen = make_generator(seed + 1)
        self.state = _State(adaptive=recipe.curriculum.start)
        self.opt = self._optimizer()
        primary = recipe.primary_norm_threat()
        self.primary = primary
        self.net: nn.Module = model
        self.awp = (
            WeightPerturbation(model, recipe.awp.gamma, self.ctx)
            if recipe.awp is not None
            else None
        )
        self._good: tuple[dict[str, Tensor], dict[str, Any]] | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.channels_last = False

    def inputs_to_device(self, x: Tensor) -> Tensor:
        """A batch on the training device, in the memory format the model runs in."""
        if self.channels_last:
            return x.to(self.device, memory_format=torch.channels_last)
        return x.to(self.device)

    def use_channels_last(self, input_dims: int) -> None:
        """Switch the model (and the batches) to channels-last when the recipe asks for it, or
        for ``auto`` with image batches ``(N, C, H, W)``; :meth:`restore_format` undoes it."""
        fmt = self.recipe.memory_format
        self.channels_last = fmt == "channels_last" or (fmt == "auto" and input_dims == 4)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def restore_format(self) -> None:
        """Give the model back its parameters in the default (contiguous) layout."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
            self.channels_last = False

    # -- set-up ---------------------------------------------------------------------------

    def _optimizer(self) -> torch.optim.Optimizer:
        o, r = self.recipe.optimizer, self.recipe
        if o.name == "sgd":
            return torch.optim.SGD(
                self.model.parameters(),
                lr=r.lr,
                momentum=o.momentum,
                nesterov=o.nesterov,
                weight_decay=r.weight_decay,
            )
        return torch.optim.Adam(
            self.model.parameters(), lr=r.lr, betas=o.betas, weight_decay=r.weight_decay
        )

    def wrap(self) -> None:
        """Wrap the model in DDP when several processes train."""
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Remember the current weights and optimizer state as the last good ones."""
        self._good = (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            copy.deepcopy(self.opt.state_dict()),
        )

    def restore_good(self) -> None:
        """Return to the last good weights and optimizer state."""
        if self._good is None:
            return
        weights, opt_state = self._good
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(copy.deepcopy(opt_state))

    def write_metrics(self) -> None:
        """Rewrite the metrics file from the history (rank 0; nothing without a file)."""
        path = self.options.metrics_path
        if self.ctx.is_main and path is not None:
            atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in self.state.history))

    def rng_state(self) -> dict[str, Tensor]:
        out = {"train": self.gen.get_state(), "torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            out["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def load(self, sidecar: Path, fingerprint: str | None) -> int:
        """Resume from a checkpoint sidecar; returns its epoch."""
        meta, tensors = read_checkpoint(sidecar)
        diff = _recipe_diff(meta.get("recipe", {}), self.recipe.model_dump(mode="json"))
        if diff:
            raise SpecError(
                [(p, f"differs from the checkpoint being resumed ({sidecar})") for p in diff]
            )
        old_fp = (meta.get("data") or {}).get("fingerprint")
        if fingerprint is not None and old_fp is not None and old_fp != fingerprint:
            raise SpecError.single(
                "data", f"the checkpoint was trained on data {old_fp}, not {fingerprint}"
            )
        if meta.get("seed") != self.seed:
            raise SpecError.single("seed", f"the checkpoint used seed {meta.get('seed')}")
        self.model.load_state_dict(model_state(tensors), strict=True)
        if meta.get("optimizer") is not None:
            optimizer_from_tensors(self.opt, tensors, meta["optimizer"])
        self.gen.set_state(tensors["rng.train"])
        torch.set_rng_state(tensors["rng.torch_cpu"])
        if "rng.torch_cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
        self.state = _State(**meta["trainer_state"])
        return self.state.epoch

    # -- one batch ------------------------------------------------------------------------

    def _perturbation(self, spec: PerturbationSpec, factor: float) -> Perturbation:
        bounds = self.recipe.bounds
        if spec.kind in ("linf", "l2"):
            return Perturbation(spec.kind, epsilon=float(spec.epsilon or 0) * factor, bounds=bounds)
        if spec.kind == "patch":
            return Perturbation("patch", size=int(spec.size or 1), bounds=bounds)
        return Perturbation("noise", sigma=float(spec.sigma or 0) * factor, bounds=bounds)

    def rel_step(self) -> float:
        """Inner step relative to the budget, before the guard's scale."""
        obj = self.recipe.objective
        if obj.step_size is not None:
            ref = self.primary.epsilon if self.primary is not None else None
            if ref:
                return obj.step_size / ref
            low, high = self.recipe.bounds
            return obj.step_size / (high - low)
        return 1.25 if obj.name == "fast" else 2.5 / obj.resolved_steps()

    def _inputs(
        self, x: Tensor, y: Tensor, factor: float, rand: BatchRandom
    ) -> tuple[Tensor, Tensor | None]:
        """``(inputs to train on, adversarial inputs for TRADES or None)``."""
        r, obj = self.recipe, self.recipe.objective
        if obj.name == "standard":
            return x, None
        if obj.name == "gaussian":
            return x + obj.sigma * rand.normal(x), None
        spec = r.threats[rand.choice([t.weight for t in r.threats])] if r.threats else None
        if spec is None:
            return x, None
        pert = self._perturbation(spec, factor)
        loss: InnerLoss = "kl" if obj.name == "trades" else "ce"
        was_training = self.model.training
        self.model.eval()
        try:
            config = SearchConfig(
                steps=obj.resolved_steps(),
                rel_step=self.rel_step() * self.state.step_scale,
                random_start=obj.random_start,
                loss=loss,
                start_scale=obj.start_scale if obj.name == "fast" else 1.0,
                clip=obj.clip or obj.name != "fast",
                precision=self.recipe.inner_precision,
            )
            adv = search(self.model, x, y, pert, rand, config)
        finally:
            self.model.train(was_training)
        return (x, adv) if obj.name == "trades" else (adv, None)

    def _loss(
        self, net: nn.Module, inputs: Tensor, adv: Tensor | None, y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(scalar training loss, logits used for the training accuracy)``."""
        if adv is None:
            logits = net(inputs)
            return F.cross_entropy(logits, y), logits
        beta = self.recipe.objective.beta
        both = net(torch.cat([inputs, adv]))
        nat, adv_logits = both[: inputs.shape[0]], both[inputs.shape[0] :]
        kl = F.kl_div(
            F.log_softmax(adv_logits, dim=1), F.softmax(nat, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(nat, y) + beta * kl, adv_logits

    def step(self, x: Tensor, y: Tensor, factor: float, rand: BatchRandom) -> tuple[Tensor, Tensor]:
        """One update on a local batch ``x`` ``(n, ...)``, ``y`` ``(n,)``; returns ``(loss summed
        over the batch, correct count)`` as detached scalar tensors."""
        inputs, adv = self._inputs(x, y, factor, rand)
        self.model.train()
        use_awp = (
            self.awp is not None
            and self.recipe.awp is not None
            and self.state.epoch >= self.recipe.awp.warmup_epochs
        )
        if use_awp and self.awp is not None:
            self.awp.perturb(lambda: self._loss(self.model, inputs, adv, y)[0])
        loss, logits = self._loss(self.net, inputs, adv, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.opt.step()
        if use_awp and self.awp is not None:
            self.awp.restore()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss.detach() * y.shape[0], correct

    # -- validation -----------------------------------------------------------------------

    @torch.no_grad()
    def _predict(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x).argmax(1)
        return out

    def _robust_correct(
        self,
        x: Tensor,
        y: Tensor,
        pert: Perturbation,
        config: SearchConfig,
        gen: torch.Generator,
        limit: int = 0,
    ) -> tuple[int, int]:
        """Samples of this rank's shard of the holdout ``x`` predicted correctly both clean and
        under :func:`search` with ``config``: over the shard, and over its samples whose holdout
        index is below ``limit``. Random draws are made for the whole holdout, chunk by chunk,
        so they do not depend on the shards."""
        bs = self.recipe.validation.batch_size
        ctx = self.ctx
        correct = correct_head = 0
        for s in range(0, x.shape[0], bs):
            xb, yb = x[s : s + bs], y[s : s + bs]
            local = torch.arange(xb.shape[0])[ctx.rank :: ctx.world_size]
            rand = _ChunkRandom(gen, ctx, xb.shape[0])
            xl, yl = self.inputs_to_device(xb[local]), yb[local].to(self.device)
            # An empty shard still runs, so that its generator advances like the others'.
            adv = search(self.model, xl, yl, pert, rand, config)
            # Robust means correct when clean *and* under attack (an iterate that lands on the
            # right class does not make a misclassified sample robust).
            ok = ((self._predict(adv) == yl) & (self._predict(xl) == yl)).cpu()
            correct += int(ok.sum())
            correct_head += int((ok & (local + s < limit)).sum())
        return correct, correct_head

    def validate(self, x: Tensor, y: Tensor, factor: float) -> _Validation:
        """Accuracies on the holdout ``x`` ``(n, ...)``, ``y`` ``(n,)`` at curriculum factor
        ``factor`` (the same on every rank)."""
        g = self.recipe.guard
        was_training = self.model.training
        self.model.eval()
        try:
            counts = [float(self._clean_correct(x, y))]
            if self.primary is not None:
                counts += self._robust_counts(x, y, factor)
            total = self.ctx.all_reduce_sum(torch.tensor(counts, dtype=torch.float64)).tolist()
        finally:
            self.model.train(was_training)
        n = x.shape[0]
        if self.primary is None:
            return _Validation(clean=total[0] / n)
        if g is None:
            return _Validation(total[0] / n, total[1] / n, total[2] / n)
        gs = min(g.samples, n)
        return _Validation(total[0] / n, total[1] / n, total[2] / n, total[3] / gs, total[4] / gs)

    def _clean_correct(self, x: Tensor, y: Tensor) -> int:
        """Samples of this rank's shard of the holdout predicted correctly."""
        bs = self.recipe.validation.batch_size
        idx = torch.arange(x.shape[0])[self.ctx.rank :: self.ctx.world_size]
        clean = 0
        for s in range(0, idx.numel(), bs):
            b = idx[s : s + bs]
            pred = self._predict(self.inputs_to_device(x[b]))
            clean += int((pred == y[b].to(self.device)).sum())
        return clean

    def _robust_counts(self, x: Tensor, y: Tensor, factor: float) -> list[int]:
        """This rank's robust counts: PGD at the full budget, at the current one, and (with the
        guard, on its first samples) FGSM and PGD at the full budget."""
        v, g, primary = self.recipe.validation, self.recipe.guard, self.primary
        assert primary is not None
        full = self._perturbation(primary, 1.0)
        gen = make_generator(self.seed * 1_000_003 + 17 * self.state.epoch + 5)
        pgd = SearchConfig(steps=v.pgd_steps, rel_step=2.5 / v.pgd_steps)
        reuse = g is not None and g.pgd_steps == v.pgd_steps
        limit = g.samples if g and reuse else 0
        rob, head = self._robust_correct(x, y, full, pgd, gen, limit=limit)
        counts = [rob]
        if self.recipe.curriculum.kind == "adaptive" and factor < 1.0:
            cur = self._perturbation(primary, factor)
            counts.append(self._robust_correct(x, y, cur, pgd, gen)[0])
        else:
            counts.append(rob)
        if g is not None:
            xs, ys = x[: g.samples], y[: g.samples]
            fgsm = SearchConfig(steps=1, rel_step=1.0, random_start=False)
            counts.append(self._robust_correct(xs, ys, full, fgsm, gen)[0])
            if not reuse:
                pgd_g = SearchConfig(steps=g.pgd_steps, rel_step=2.5 / g.pgd_steps)
                head = self._robust_correct(xs, ys, full, pgd_g, gen)[0]
            counts.append(head)
        return counts


class _ChunkRandom(BatchRandom):
    """Draws for a chunk of ``global_n`` holdout samples, of which this rank keeps rows
    ``rank::world_size`` (the shards may differ in size by one)."""

    def __init__(self, gen: torch.Generator, ctx: DistContext, global_n: int) -> None:
        super().__init__(gen, ctx)
        self.global_n = global_n

    def _global(self, n_local: int) -> int:
        return self.global_n


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    recipe: Recipe,
    *,
    seed: int = 0,
    options: FitOptions | None = None,
    hooks: FitHooks | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``recipe`` on inputs ``x`` ``(N, ...)`` (in the recipe's
    bounds) and labels ``y`` ``(N,)``.

    Args:
        model: a module returning logits, on the device to train on; left in eval mode with the
            best-validation weights (``recipe.keep_best`` and a holdout) or the last ones.
        seed: seeds the holdout draw, shuffling, random starts, patch positions and noise.
        options: checkpoints, resuming, the metrics file, the data identity and the process
            group (:class:`FitOptions`; default: no files, one process).
        hooks: progress callbacks (:class:`FitHooks`).

    Returns a :class:`TrainResult`; files are written by rank 0 only.
    """
    t_start = time.perf_counter()
    options = options or FitOptions()
    device = _checked_device(model, x, y, recipe, options.ctx)
    data = _split(x, y, recipe, seed)
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(recipe.deterministic, warn_only=device.type == "cuda")
    tr = _Trainer(model, recipe, seed=seed, options=options, device=device)
    try:
        tr.use_channels_last(x.dim())
        resumed_from = _resume(tr)
        tr.snapshot()
        tr.wrap()
        tr.write_metrics()
        _run_epochs(tr, data, hooks or FitHooks())
        final = _load_final(tr)
        model.eval()
        st = tr.state
        return TrainResult(
            history=[EpochMetrics(**h) for h in st.history],
            final=final,
            best_epoch=st.best_epoch,
            best_robust_accuracy=st.best_robust,
            stopped_early=st.stopped_early,
            restores=st.restores,
            resumed_from=resumed_from,
            world_size=options.ctx.world_size,
            wall_time_s=time.perf_counter() - t_start,
        )
    finally:
        tr.restore_format()
        torch.use_deterministic_algorithms(prev_det)


def _checked_device(
    model: nn.Module, x: Tensor, y: Tensor, recipe: Recipe, ctx: DistContext
) -> torch.device:
    """The device ``model`` trains on, after refusing what :func:`fit` cannot train: a text
    augmentation recipe, a batch that does not split across the processes, inputs and labels of
    different lengths, a model without parameters, inputs outside the recipe's bounds."""
    if recipe.augment is not None:
        raise SpecError.single(
            "train.augment",
            "augmentation is for text data (robustops.training.text.fit_text); image/tabular "
            "training hardens with adversarial objectives (objective: pgd-at, trades, fast)",
        )
    if recipe.batch_size % ctx.world_size:
        raise SpecError.single(
            "train.batch_size",
            f"{recipe.batch_size} does not split evenly across {ctx.world_size} processes",
        )
    if x.shape[0] != y.shape[0]:
        raise SpecError.single("train", "inputs and labels differ in length")
    params = list(model.parameters())
    if not params:
        raise SpecError.single("model", "the model has no parameters to train")
    low, high = recipe.bounds
    if x.numel() and (float(x.min()) < low or float(x.max()) > high):
        raise SpecError.single("train.bounds", f"training inputs leave the bounds {recipe.bounds}")
    return params[0].device


def _split(x: Tensor, y: Tensor, recipe: Recipe, seed: int) -> _Split:
    """``x``, ``y`` on the CPU (labels int64), split into training data and the holdout of
    ``recipe.validation.holdout`` samples drawn with ``seed``."""
    x, y = x.detach().cpu(), y.detach().cpu().to(torch.int64)
    holdout = recipe.validation.holdout
    if not holdout:
        return _Split(x, y, x[:0], y[:0])
    tr_idx, va_idx = split_holdout(x.shape[0], holdout, seed)
    return _Split(x[tr_idx], y[tr_idx], x[va_idx], y[va_idx])


def _resume(tr: _Trainer) -> int | None:
    """Load the newest checkpoint when the options ask to resume; returns its epoch."""
    opts = tr.options
    if not opts.resume or opts.checkpoint_dir is None:
        return None
    side = latest_checkpoint(opts.checkpoint_dir)
    if side is None:
        return None
    fingerprint = (opts.data_info or {}).get("fingerprint")
    epoch = tr.load(side, fingerprint if isinstance(fingerprint, str) else None)
    log.info("resumed from %s (epoch %d)", side, epoch)
    return epoch


def _load_final(tr: _Trainer) -> str:
    """Give the model the best-validation weights when the recipe keeps them (``"best"``),
    else leave the last ones (``"last"``)."""
    st, ckpt = tr.state, tr.options.checkpoint_dir
    if not tr.recipe.keep_best or st.best_epoch is None:
        return "last"
    if ckpt is not None:
        tr.ctx.barrier()
        _, tensors = read_checkpoint(ckpt / "best.json")
        tr.model.load_state_dict(model_state(tensors), strict=True)
        return "best"
    if tr.best_weights is not None:
        tr.model.load_state_dict(tr.best_weights, strict=True)
        return "best"
    return "last"


class _Batches:
    """This rank's batches of the training split: a :class:`DistributedSampler` seeded with
    the run's seed, reshuffled every epoch, cut into local batches."""

    def __init__(self, tr: _Trainer, y_tr: Tensor) -> None:
        ctx = tr.ctx
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            TensorDataset(y_tr),
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=tr.seed,
            drop_last=True,
        )
        self.size = tr.recipe.batch_size // ctx.world_size
        self.count = max(1, math.ceil(len(self.sampler) / self.size))

    def order(self, epoch: int) -> Tensor:
        """This rank's sample indices for (0-based) ``epoch``, int64."""
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(iter(self.sampler)), dtype=torch.int64)


def _run_epochs(tr: _Trainer, data: _Split, hooks: FitHooks) -> None:
    """Train the remaining epochs: train, validate, guard, keep the best, write the files."""
    r, st = tr.recipe, tr.state
    batches = _Batches(tr, data.y_tr)
    rand = BatchRandom(tr.gen, tr.ctx)
    while st.epoch < r.epochs and not st.stopped_early:
        t0 = time.perf_counter()
        done = _train_epoch(tr, data, batches, rand, hooks.on_batch)
        m = _close_epoch(tr, data, done, t0)
        st.history.append(m.to_json())
        _write_epoch(tr)
        log.info("epoch %d: %s", st.epoch, m)
        if hooks.on_epoch is not None:
            hooks.on_epoch(m)


def _train_epoch(
    tr: _Trainer,
    data: _Split,
    batches: _Batches,
    rand: BatchRandom,
    on_batch: Callable[[BatchEvent], None] | None,
) -> _EpochFit:
    """One pass over the training split; advances ``tr.state.epoch``."""
    r, st = tr.recipe, tr.state
    epoch = st.epoch
    order = batches.order(epoch)
    sums = torch.zeros(3, dtype=torch.float64)
    lr = factor = 0.0
    for k in range(batches.count):
        t = epoch + k / batches.count
        lr = learning_rate(r.schedule, r.lr, t, float(r.epochs))
        for group in tr.opt.param_groups:
            group["lr"] = lr
        factor = curriculum_factor(r.curriculum, t, st.adaptive)
        idx = order[k * batches.size : (k + 1) * batches.size]
        xb, yb = tr.inputs_to_device(data.x_tr[idx]), data.y_tr[idx].to(tr.device)
        loss_sum, correct = tr.step(xb, yb, factor, rand)
        sums += torch.stack(
            [loss_sum.double().cpu(), correct.double().cpu(), torch.tensor(float(idx.numel()))]
        )
        st.global_step += 1
        if on_batch is not None:
            on_batch(BatchEvent(epoch + 1, k + 1, batches.count, float(loss_sum) / idx.numel()))
    tr.ctx.all_reduce_sum(sums)
    st.epoch = epoch + 1
    loss_mean, train_acc = float(sums[0] / sums[2]), float(sums[1] / sums[2])
    if not math.isfinite(loss_mean):
        raise FloatingPointError(f"training loss is {loss_mean} at epoch {st.epoch}")
    return _EpochFit(loss=loss_mean, train_accuracy=train_acc, lr=lr, factor=factor)


def _close_epoch(tr: _Trainer, data: _Split, done: _EpochFit, t0: float) -> EpochMetrics:
    """Validate after an epoch, let the guard restore or else track the best epoch and adapt
    the curriculum; returns the epoch's metrics (``t0``: its start, ``perf_counter`` seconds)."""
    r, st = tr.recipe, tr.state
    val = tr.validate(data.x_va, data.y_va, done.factor) if data.x_va.shape[0] else _Validation()
    restored = False
    if r.guard is not None and val.guard_fgsm is not None and val.guard_pgd is not None:
        restored = _guard(tr, val.guard_fgsm, val.guard_pgd)
    if not restored:
        _track_best(tr, val.robust, done.factor)
        st.adaptive = adaptive_update(r.curriculum, st.adaptive, val.robust_current)
        tr.snapshot()
    primary = tr.primary
    return EpochMetrics(
        epoch=st.epoch,
        lr=done.lr,
        epsilon_factor=done.factor,
        epsilon=float(primary.epsilon or 0) * done.factor if primary is not None else None,
        loss=done.loss,
        train_accuracy=done.train_accuracy,
        val_clean_accuracy=val.clean,
        val_robust_accuracy=val.robust,
        guard_fgsm_accuracy=val.guard_fgsm,
        guard_pgd_accuracy=val.guard_pgd,
        guard_restored=restored,
        step_scale=st.step_scale,
        best_epoch=st.best_epoch,
        time_s=time.perf_counter() - t0,
    )


def _write_epoch(tr: _Trainer) -> None:
    """After an epoch: its checkpoint (older ones pruned) and the metrics file (rank 0)."""
    r, st, ctx, opts = tr.recipe, tr.state, tr.ctx, tr.options
    ckpt = opts.checkpoint_dir
    if ckpt is not None:
        if ctx.is_main:
            write_checkpoint(
                ckpt,
                epoch_stem(st.epoch),
                tr.model,
                tr.opt,
                tr.rng_state(),
                {
                    "kind": "epoch",
                    "recipe": r.model_dump(mode="json"),
                    "seed": tr.seed,
                    "epoch": st.epoch,
                    "world_size": ctx.world_size,
                    "data": opts.data_info or {},
                    "trainer_state": asdict(st),
                },
            )
            prune(ckpt, opts.keep_checkpoints)
        ctx.barrier()
    tr.write_metrics()


def _guard(tr: _Trainer, fgsm_acc: float, pgd_acc: float) -> bool:
    """Catastrophic-overfitting check; restores the last good state and lowers the step when
    PGD accuracy collapsed while FGSM accuracy held up. Returns whether it restored."""
    g, st = tr.recipe.guard, tr.state
    assert g is not None
    ref_pgd, ref_fgsm = st.guard_ref_pgd, st.guard_ref_fgsm
    collapsed = (
        ref_pgd is not None
        and ref_fgsm is not None
        and pgd_acc <= ref_pgd - g.drop
        and fgsm_acc >= ref_fgsm - g.fgsm_tolerance
    )
    if collapsed and st.restores < g.max_restores:
        log.warning(
            "catastrophic overfitting at epoch %d: PGD accuracy %.3f (was %.3f), FGSM %.3f; "
            "restoring the last good weights, step scale %.3f -> %.3f",
            st.epoch,
            pgd_acc,
            ref_pgd,
            fgsm_acc,
            st.step_scale,
            st.step_scale * g.step_factor,
        )
        tr.restore_good()
        st.restores += 1
        st.step_scale *= g.step_factor
        return True
    st.guard_ref_pgd, st.guard_ref_fgsm = pgd_acc, fgsm_acc
    return False


def _track_best(tr: _Trainer, robust: float | None, factor: float) -> None:
    """Best-checkpoint keeping and early stopping on validation robust accuracy."""
    r, st, ctx, ckpt = tr.recipe, tr.state, tr.ctx, tr.options.checkpoint_dir
    if robust is None:
        return
    es = r.early_stopping
    min_delta = es.min_delta if es is not None else 0.0
    if st.best_robust is None or robust > st.best_robust + min_delta:
        st.best_robust, st.best_epoch, st.bad_epochs = robust, st.epoch, 0
        tr.best_weights = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        if ckpt is not None:
            if ctx.is_main:
                write_checkpoint(
                    ckpt,
                    "best",
                    tr.model,
                    None,
                    {},
                    {
                        "kind": "best",
                        "recipe": r.model_dump(mode="json"),
                        "seed": tr.seed,
                        "epoch": st.epoch,
                        "val_robust_accuracy": robust,
                    },
                )
            ctx.barrier()
    elif factor >= 1.0:
        st.bad_epochs += 1
    if es is not None and st.bad_epochs >= es.patience:
        st.stopped_early = True
