"""Run what a pipeline spec describes: train its model, evaluate it with its suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from robustops._util import environment, file_sha256, state_dict_sha256
from robustops.config import PipelineSpec
from robustops.data import Dataset, load_dataset
from robustops.errors import SpecError
from robustops.evaluation import ProgressEvent, SuiteResult, run_suite
from robustops.models import build_model, save_weights
from robustops.training import EpochStats, train_standard

__all__ = ["evaluate_spec", "load_spec_dataset", "train_spec"]


def load_spec_dataset(spec: PipelineSpec) -> Dataset:
    """The spec's data set, fingerprint-checked and split."""
    return load_dataset(
        spec.data.name, test_fraction=spec.data.test_fraction, seed=spec.data.split_seed
    )


def train_spec(
    spec: PipelineSpec, on_epoch: Callable[[EpochStats], None] | None = None
) -> dict[str, Any]:
    """Train the spec's model from its factory and write safetensors weights to ``train.out``
    plus a JSON sidecar (``<out>.json``: recipe, seed, data fingerprint, sha256, history).

    Returns the sidecar's content.
    """
    if spec.train is None:
        raise SpecError.single("train", "the spec has no train section")
    data = load_spec_dataset(spec)
    device = spec.resolved_device()
    torch.manual_seed(spec.seed)
    model = build_model(spec.model.factory, spec.model.kwargs, device=device)
    history = train_standard(
        model,
        data.x_train,
        data.y_train,
        x_val=data.x_test,
        y_val=data.y_test,
        epochs=spec.train.epochs,
        batch_size=spec.train.batch_size,
        lr=spec.train.lr,
        weight_decay=spec.train.weight_decay,
        seed=spec.seed,
        on_epoch=on_epoch,
    )
    out = spec.train.out
    meta = {
        "recipe": "standard",
        "spec_name": spec.name,
        "train": spec.train.model_dump(mode="json"),
        "seed": spec.seed,
        "model_factory": spec.model.factory,
        "model_kwargs": spec.model.kwargs,
        "data": data.describe(),
        "state_sha256": state_dict_sha256(model),
    }
    sha = save_weights(model, out, metadata=meta)
    sidecar = {
        **meta,
        "weights": str(out),
        "sha256": sha,
        "history": [vars(h) for h in history],
        "environment": environment(),
    }
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    return sidecar


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
    )
