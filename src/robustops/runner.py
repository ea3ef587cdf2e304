"""Run what a pipeline spec describes: train its model, evaluate it with its suite."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robustops._util import environment, file_sha256, make_generator, state_dict_sha256
from robustops.config import PipelineSpec
from robustops.data import Dataset, load_dataset
from robustops.defenses import fit_temperature_on
from robustops.errors import SpecError
from robustops.evaluation import ProgressEvent, SuiteResult, run_suite
from robustops.evaluation.metrics import TemperatureFit
from robustops.models import build_model, save_weights
from robustops.training import BatchEvent, EpochMetrics, fit, init_distributed

__all__ = ["evaluate_spec", "load_spec_dataset", "train_spec"]


def load_spec_dataset(spec: PipelineSpec) -> Dataset:
    """The spec's data set, fingerprint-checked and split."""
    return load_dataset(
        spec.data.name, test_fraction=spec.data.test_fraction, seed=spec.data.split_seed
    )


def train_spec(
    spec: PipelineSpec,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    *,
    on_batch: Callable[[BatchEvent], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the spec's model from its factory with the ``train`` recipe and write safetensors
    weights to ``train.out`` plus a JSON sidecar (``<out>.json``: recipe, seed, data
    fingerprint, sha256, history, best epoch).

    Checkpoints go to ``train.checkpoint_dir`` after every epoch; ``resume`` continues from the
    newest one. Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes join a group (gloo on CPU,
    NCCL on CUDA) and train one DistributedDataParallel model; rank 0 writes every file.

    Returns the sidecar's content (on every rank).
    """
    if spec.train is None:
        raise SpecError.single("train", "the spec has no train section")
    rec = spec.train
    device = spec.resolved_device()
    ctx = init_distributed(device)
    try:
        if device == "cuda" and ctx.enabled:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        data = load_spec_dataset(spec)
        torch.manual_seed(spec.seed)
        model = build_model(spec.model.factory, spec.model.kwargs, device=device)
        result = fit(
            model,
            data.x_train,
            data.y_train,
            rec,
            seed=spec.seed,
            checkpoint_dir=rec.checkpoint_path(),
            resume=resume,
            keep_checkpoints=rec.keep_checkpoints,
            metrics_path=rec.metrics_path(),
            data_info=data.describe(),
            ctx=ctx,
            on_epoch=on_epoch,
            on_batch=on_batch,
        )
        out = rec.out
        meta = {
            "recipe": rec.objective.name,
            "spec_name": spec.name,
            "train": rec.model_dump(mode="json"),
            "seed": spec.seed,
            "model_factory": spec.model.factory,
            "model_kwargs": spec.model.kwargs,
            "data": data.describe(),
            "state_sha256": state_dict_sha256(model),
            "final": result.final,
            "best_epoch": result.best_epoch,
            "best_val_robust_accuracy": result.best_robust_accuracy,
            "epochs_run": len(result.history),
            "world_size": result.world_size,
        }
        sidecar_path = Path(str(out) + ".json")
        if ctx.is_main:
            sha = save_weights(model, out, metadata=meta)
            sidecar = {
                **meta,
                "weights": str(out),
                "sha256": sha,
                "checkpoint_dir": str(rec.checkpoint_path()),
                "metrics": str(rec.metrics_path()),
                "stopped_early": result.stopped_early,
                "guard_restores": result.restores,
                "resumed_from_epoch": result.resumed_from,
                "wall_time_s": result.wall_time_s,
                "history": [h.to_json() for h in result.history],
                "environment": environment(),
            }
            sidecar_path.write_text(json.dumps(sidecar, indent=2))
        ctx.barrier()
        if not ctx.is_main:
            sidecar = json.loads(sidecar_path.read_text())
        return sidecar
    finally:
        ctx.close()


def evaluate_spec(
    spec: PipelineSpec,
    *,
    seed: int | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> SuiteResult:
    """Run the spec's evaluation suite on its model and the first ``n_samples`` test samples."""
    if spec.evaluation is None:
        raise SpecError.single("evaluation", "the spec has no evaluation section")
    if spec.model.weights is None:
        raise SpecError.single(
            "model.weights", "evaluation needs trained weights (a .safetensors file)"
        )
    run_seed = spec.seed if seed is None else seed
    data = load_spec_dataset(spec)
    device = spec.resolved_device()
    model = build_model(
        spec.model.factory,
        spec.model.kwargs,
        spec.model.weights,
        sha256=spec.model.sha256,
        device=device,
    )
    n = (
        data.x_test.shape[0]
        if spec.evaluation.n_samples is None
        else min(spec.evaluation.n_samples, data.x_test.shape[0])
    )
    temperature = _fit_temperature(spec, model, data, n, run_seed, device)
    model_info = {
        "factory": spec.model.factory,
        "kwargs": spec.model.kwargs,
        "weights": str(spec.model.weights),
        "weights_sha256": file_sha256(spec.model.weights),
        "state_sha256": state_dict_sha256(model),
    }
    return run_suite(
        model,
        data.x_test[:n],
        data.y_test[:n],
        spec.build_threats(seed=run_seed),
        name=spec.name,
        batch_size=spec.evaluation.batch_size,
        seed=run_seed,
        device=device,
        indices=list(range(n)),
        data_info=data.describe(),
        model_info=model_info,
        progress=progress,
        calibration=spec.evaluation.calibration.enabled,
        temperature=temperature,
        n_bins=spec.evaluation.calibration.n_bins,
    )


def _fit_temperature(
    spec: PipelineSpec, model: torch.nn.Module, data: Dataset, n_eval: int, seed: int, device: str
) -> TemperatureFit | None:
    """Fit the temperature the spec asks for on the test samples after the evaluated ones."""
    assert spec.evaluation is not None
    ev = spec.evaluation
    cal = ev.calibration
    if not cal.enabled or cal.fit_on == "none":
        return None
    attack = spec.build_calibration_attack(seed=seed)
    if cal.fit_on != "clean" and attack is None:
        raise SpecError.single(
            "evaluation.calibration.fit_on",
            f"fit_on {cal.fit_on!r} needs a threat for its adversarial inputs; use clean or none",
        )
    available = data.x_test.shape[0] - n_eval
    want = cal.n_samples if cal.n_samples is not None else available
    if available <= 0 or want > available:
        raise SpecError.single(
            "evaluation.calibration.n_samples",
            f"the temperature is fitted on test samples the suite does not evaluate; "
            f"{max(available, 0)} are left after the {n_eval} evaluated ones (need {want}). "
            "Lower evaluation.n_samples or calibration.n_samples, or set calibration.fit_on: none",
        )
    x = data.x_test[n_eval : n_eval + want]
    y = data.y_test[n_eval : n_eval + want]
    targets = None
    if attack is not None and attack.threat.targeted:
        shift = torch.randint(1, data.num_classes, (want,), generator=make_generator(seed))
        targets = (y + shift) % data.num_classes
    return fit_temperature_on(
        model,
        x,
        y,
        fit_on=cal.fit_on,
        attack=attack,
        targets=targets,
        batch_size=ev.batch_size,
        device=device,
    )
