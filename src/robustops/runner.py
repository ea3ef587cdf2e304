"""Run what a pipeline spec describes: train its model, evaluate it with its suite."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustops._util import environment, file_sha256, make_generator, state_dict_sha256
from robustops.config import PipelineSpec
from robustops.data import TEXT_DATASETS, Dataset, TextDataset, load_dataset, load_source
from robustops.defenses import fit_temperature_on
from robustops.defenses.smoothing import CertificationResult, certify_dataset
from robustops.errors import ModelRuntimeError, OutputError, RobustOpsError, SpecError
from robustops.evaluation import (
    ProgressEvent,
    SuiteOptions,
    SuiteRecord,
    SuiteResult,
    SuiteThreat,
    run_suite,
)
from robustops.evaluation.masking import AuditResult, audit_gradient_masking
from robustops.evaluation.metrics import TemperatureFit
from robustops.evaluation.sharding import (
    ArchitectureFactory,
    ScaleOut,
    SuitePlan,
    run_sharded,
    run_sharded_torchrun,
)
from robustops.io import atomic_write_text, check_writable
from robustops.models import Normalized, build_model, save_weights
from robustops.models.loading import resolve_factory
from robustops.registry.service import Registry, label, resolve_actor
from robustops.text.hf import HFTextClassifier
from robustops.text.models import TextClassifier, TorchTextClassifier, check_texts
from robustops.threats.catalog import ThreatCatalog
from robustops.training import (
    BatchEvent,
    EpochMetrics,
    FitHooks,
    FitOptions,
    TextTrainResult,
    TrainResult,
    fit,
    init_distributed,
)

__all__ = [
    "certify_spec",
    "check_outputs",
    "evaluate_loaded",
    "evaluate_spec",
    "load_spec_dataset",
    "model_stage",
    "recipe_label",
    "replay_attack",
    "save_result",
    "train_spec",
]


@contextlib.contextmanager
def model_stage(stage: str) -> Iterator[None]:
    """Run a block that calls the user's model (or factory): anything it raises that is not a
    :class:`RobustOpsError` becomes a :class:`ModelRuntimeError` naming ``stage`` (the original
    exception chained, for debugging)."""
    try:
        yield
    except RobustOpsError:
        raise
    except Exception as exc:
        raise ModelRuntimeError(stage, exc) from exc


def _check_code(spec: PipelineSpec) -> None:
    """Refuse, before any work, a spec naming code the trust policy does not allow."""
    errors = spec.untrusted_code()
    if errors:
        raise SpecError(errors)


def check_outputs(spec: PipelineSpec) -> None:
    """Before training: the weights file (the folder, for a Hugging Face model), the checkpoint
    folder and the metrics file of the ``train`` section can all be written
    (:class:`OutputError` naming the field otherwise)."""
    if spec.train is None:
        return
    rec = spec.train
    check_writable(rec.out, "train.out", folder=spec.model.huggingface is not None)
    check_writable(Path(str(rec.out) + ".json"), "train.out")
    check_writable(rec.metrics_path(), "train.metrics")
    if spec.data.modality != "text":
        check_writable(rec.checkpoint_path(), "train.checkpoint_dir", folder=True)


def _fallback_path(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="robustops-kept-")) / name


def _save_or_keep(option: str, path: Path, save: Callable[[Path], object]) -> None:
    """``save(path)``; when that fails (full disk, permissions changed meanwhile), save to a
    fresh temporary folder instead and raise :class:`OutputError` naming both places."""
    try:
        save(path)
    except OSError as exc:
        fallback = _fallback_path(path.name)
        try:
            save(fallback)
        except OSError:
            raise OutputError(option, path, exc.strerror or str(exc)) from None
        raise OutputError(option, path, exc.strerror or str(exc), kept=fallback) from None


def save_result(result: SuiteResult, path: str | Path, option: str = "--out") -> Path:
    """``result.save(path)``; on failure the result is kept in a temporary folder and
    :class:`OutputError` says where (nothing computed is lost)."""
    _save_or_keep(option, Path(path), result.save)
    return Path(path)


def load_spec_dataset(spec: PipelineSpec) -> Dataset | TextDataset:
    """The spec's data set, fingerprint-checked and split (a :class:`TextDataset` for text):
    an embedded set, or the user's ``data.source`` read by
    :func:`robustops.data.load_source`."""
    d = spec.data
    if d.source is not None:
        data = load_source(d.source, name=d.label, test_fraction=d.test_fraction, seed=d.split_seed)
    elif d.modality == "text":
        data = TEXT_DATASETS[d.label](test_fraction=d.test_fraction, seed=d.split_seed)
    else:
        data = load_dataset(d.label, test_fraction=d.test_fraction, seed=d.split_seed)
    if isinstance(data, TextDataset):
        check_texts(data.texts_train, max_chars=spec.data.max_text_chars, field="data.train")
        check_texts(data.texts_test, max_chars=spec.data.max_text_chars, field="data.test")
    return data


def training_dataset(spec: PipelineSpec) -> Dataset | TextDataset:
    """:func:`load_spec_dataset` with the spec's ``data.extra_train`` files (sha256-checked)
    appended to the training split only; the test split and the fingerprint are unchanged, the
    extra files' lineage is in ``describe()["extra_train"]``."""
    from robustops.data.extra import add_extra_train

    data = load_spec_dataset(spec)
    if isinstance(data, TextDataset):
        data = add_extra_train(data, spec.data.extra_train)
        if data.extra_train:
            check_texts(
                data.texts_train, max_chars=spec.data.max_text_chars, field="data.extra_train"
            )
        return data
    return add_extra_train(data, spec.data.extra_train)


def _normalized(spec: PipelineSpec, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped in :class:`Normalized` when the spec has ``model.normalize``."""
    norm = spec.model.normalize
    if norm is None:
        return model
    return Normalized(model, norm.mean, norm.std).to(_device_of(model))


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The model whose weights are saved: the one inside :class:`Normalized`, if wrapped."""
    return model.model if isinstance(model, Normalized) else model


def _tensor_data(spec: PipelineSpec) -> Dataset:
    data = load_spec_dataset(spec)
    assert isinstance(data, Dataset)
    return data


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
    NCCL on CUDA) and train one DistributedDataParallel model; rank 0 writes every file. Text
    specs train in one process with :func:`robustops.training.text.fit_text` (``on_epoch`` then
    receives :class:`~robustops.training.TextEpochMetrics`; no batches, no checkpoints).

    Returns the sidecar's content (on every rank).
    """
    if spec.train is None:
        raise SpecError.single("train", "the spec has no train section")
    _check_code(spec)
    check_outputs(spec)
    if spec.data.modality == "text":
        if resume:
            raise SpecError.single(
                "train", "text models train in seconds and keep no checkpoints; drop --resume"
            )
        if os.environ.get("WORLD_SIZE", "1") != "1":
            raise SpecError.single(
                "train",
                "text models train in one process (every torchrun rank would train and write "
                "the same files); run robustops train without torchrun",
            )
        return _train_text(spec, on_epoch)
    return _train_tensors(spec, FitHooks(on_epoch=on_epoch, on_batch=on_batch), resume)


def recipe_label(spec: PipelineSpec) -> str:
    """What the spec's training is called in sidecars and progress bars: the objective
    (``pgd-at``, ``trades``, …) for tensor data; ``augment`` or ``standard`` for text."""
    assert spec.train is not None
    if spec.data.modality == "text":
        return "augment" if spec.train.augment is not None else "standard"
    return spec.train.objective.name


def _train_meta(
    spec: PipelineSpec, data: Dataset | TextDataset, module: torch.nn.Module
) -> dict[str, Any]:
    """The sidecar fields every trained model has: recipe, spec, seed, model, data, state."""
    assert spec.train is not None
    return {
        "recipe": recipe_label(spec),
        "spec_name": spec.name,
        "train": spec.train.model_dump(mode="json"),
        "seed": spec.seed,
        "model_factory": spec.model.factory,
        "model_kwargs": spec.model.kwargs,
        "model_normalize": spec.model.normalize.model_dump() if spec.model.normalize else None,
        "model_huggingface": _hf_info(spec),
        "data": data.describe(),
        "state_sha256": state_dict_sha256(module),
    }


def _save_trained(out: Path, save: Callable[[Path], str]) -> str:
    """``save(out)`` (weights file; :func:`_save_or_keep` on failure); returns its sha256."""
    shas: list[str] = []
    _save_or_keep("train.out", out, lambda p: shas.append(save(p)))
    return shas[-1]


def _train_tensors(spec: PipelineSpec, hooks: FitHooks, resume: bool) -> dict[str, Any]:
    """Tensor branch of :func:`train_spec` (images, tables), in one process or under torchrun."""
    assert spec.train is not None
    rec = spec.train
    device = spec.resolved_device()
    ctx = init_distributed(device)
    try:
        if device == "cuda" and ctx.enabled:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        data = training_dataset(spec)
        assert isinstance(data, Dataset)
        torch.manual_seed(spec.seed)
        with model_stage("building the model"):
            model = _normalized(
                spec, build_model(_factory_ref(spec), spec.model.kwargs, device=device)
            )
        options = FitOptions(
            checkpoint_dir=rec.checkpoint_path(),
            resume=resume,
            keep_checkpoints=rec.keep_checkpoints,
            metrics_path=rec.metrics_path(),
            data_info=data.describe(),
            ctx=ctx,
        )
        with _training_stage(rec.checkpoint_path(), model):
            result = fit(
                model, data.x_train, data.y_train, rec, seed=spec.seed, options=options, hooks=hooks
            )
        sidecar_path = Path(str(rec.out) + ".json")
        if ctx.is_main:
            sidecar = _write_tensor_outputs(spec, data, _inner(model), result)
        ctx.barrier()
        if not ctx.is_main:
            sidecar = json.loads(sidecar_path.read_text())
        return sidecar
    finally:
        ctx.close()


def _write_tensor_outputs(
    spec: PipelineSpec, data: Dataset, model: torch.nn.Module, result: TrainResult
) -> dict[str, Any]:
    """Write the trained weights (safetensors, the metadata in its header) and the JSON
    sidecar; returns the sidecar's content."""
    assert spec.train is not None
    rec = spec.train
    meta = {
        **_train_meta(spec, data, model),
        "final": result.final,
        "best_epoch": result.best_epoch,
        "best_val_robust_accuracy": result.best_robust_accuracy,
        "epochs_run": len(result.history),
        "world_size": result.world_size,
    }
    sha = _save_trained(rec.out, lambda p: save_weights(model, p, metadata=meta))
    sidecar = {
        **meta,
        "weights": str(rec.out),
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
    atomic_write_text(Path(str(rec.out) + ".json"), json.dumps(sidecar, indent=2))
    return sidecar


def _train_text(spec: PipelineSpec, on_epoch: Callable[[Any], None] | None) -> dict[str, Any]:
    """Text branch of :func:`train_spec`: build the classifier with the spec's factory from the
    training texts, train it with :func:`robustops.training.text.fit_text` (adversarial
    augmentation when the recipe has ``augment``) and write its files
    (:func:`_write_text_outputs`)."""
    from robustops.training.text import fit_text

    assert spec.train is not None
    data = training_dataset(spec)
    assert isinstance(data, TextDataset)
    if spec.model.huggingface is not None:
        return _train_hf(spec, data, on_epoch)
    clf = _text_classifier(spec, data)
    with model_stage("training"):
        result = fit_text(
            clf, data.texts_train, data.y_train, spec.train, seed=spec.seed, on_epoch=on_epoch
        )
    return _write_text_outputs(spec, data, clf, result)


def _factory_ref(spec: PipelineSpec) -> str:
    """``model.factory`` (:class:`SpecError` when the model is a Hugging Face one instead)."""
    if spec.model.factory is None:
        raise SpecError.single("model.factory", "this step needs a factory model")
    return spec.model.factory


def _hf_info(spec: PipelineSpec) -> dict[str, Any] | None:
    """The ``model.huggingface`` section as JSON (``None`` for a factory model)."""
    hf = spec.model.huggingface
    return None if hf is None else hf.model_dump(mode="json")


def _load_hf(spec: PipelineSpec, path: Path, sha256: str | None, field: str) -> HFTextClassifier:
    """The spec's Hugging Face classifier read from directory ``path`` (local files only)."""
    hf = spec.model.huggingface
    assert hf is not None
    with model_stage("loading the Hugging Face model"):
        return HFTextClassifier.load(
            path,
            sha256=sha256,
            max_length=hf.max_length,
            batch_size=hf.batch_size,
            device=spec.resolved_device(),
            field=field,
        )


def _train_hf(
    spec: PipelineSpec, data: TextDataset, on_epoch: Callable[[Any], None] | None
) -> dict[str, Any]:
    """Hugging Face branch of :func:`train_spec`: fine-tune ``model.huggingface.path`` with
    :func:`robustops.training.hf.fit_hf` (adversarial augmentation when the recipe has
    ``augment``) and write ``train.out`` as a ``save_pretrained`` folder (safetensors + tokenizer),
    ``<out>.json``, the metrics and the augmentation log."""
    from robustops.training.hf import fit_hf

    assert spec.train is not None and spec.model.huggingface is not None
    clf = _load_hf(spec, spec.model.huggingface.path, None, "model.huggingface.path")
    if clf.num_classes != data.num_classes:
        raise SpecError.single(
            "model.huggingface.path",
            f"the model has {clf.num_classes} labels, data set {spec.data.name!r} "
            f"{data.num_classes} classes",
        )
    base = clf.fingerprint
    torch.manual_seed(spec.seed)
    with model_stage("training"):
        result = fit_hf(
            clf, data.texts_train, data.y_train, spec.train, seed=spec.seed, on_epoch=on_epoch
        )
    sidecar = _write_text_outputs(spec, data, clf, result)
    sidecar["base_fingerprint"] = base
    atomic_write_text(Path(str(spec.train.out) + ".json"), json.dumps(sidecar, indent=2))
    return sidecar


def _text_classifier(spec: PipelineSpec, data: TextDataset) -> TorchTextClassifier:
    """The untrained classifier the spec's factory builds from the training texts."""
    from robustops.models.loading import resolve_factory

    factory = resolve_factory(_factory_ref(spec), field="model.factory")
    try:
        with model_stage("building the model"):
            clf = factory(
                data.texts_train, seed=spec.seed, num_classes=data.num_classes, **spec.model.kwargs
            )
    except ModelRuntimeError as exc:
        if not isinstance(exc.__cause__, TypeError):
            raise
        raise SpecError.single("model.kwargs", f"{spec.model.factory}: {exc.__cause__}") from None
    if not isinstance(clf, TorchTextClassifier):
        raise SpecError.single(
            "model.factory",
            f"{spec.model.factory} must return a TorchTextClassifier for text data "
            f"(e.g. robustops.text:char_ngram_classifier), got {type(clf).__name__}",
        )
    return clf


def _write_text_outputs(
    spec: PipelineSpec,
    data: TextDataset,
    clf: TorchTextClassifier | HFTextClassifier,
    result: TextTrainResult,
) -> dict[str, Any]:
    """Write the safetensors file (vocabulary in its metadata), the metrics (JSON lines), the
    augmented texts (``<out>.augment.jsonl``, one record per adversarial text added to
    training: lineage of what the model learnt from) and the JSON sidecar; returns the
    sidecar's content."""
    assert spec.train is not None
    rec = spec.train
    out = rec.out
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics_path = rec.metrics_path()
    augment_path = out.with_name(out.name + ".augment.jsonl")
    meta = {
        **_train_meta(spec, data, clf.module),
        "final": "last",
        "epochs_run": len(result.history),
        "augmented_texts": len(result.augmented),
    }
    if isinstance(clf, HFTextClassifier):  # a folder; its content fingerprint as sha256
        sha = _save_trained(out, clf.save)
    else:
        sha = _save_trained(out, lambda p: clf.save(p, metadata=meta))
    atomic_write_text(metrics_path, "".join(json.dumps(h.to_json()) + "\n" for h in result.history))
    if rec.augment is not None:
        atomic_write_text(
            augment_path,
            "".join(json.dumps(a.to_json(), ensure_ascii=False) + "\n" for a in result.augmented),
        )
    sidecar = {
        **meta,
        "weights": str(out),
        "sha256": sha,
        "metrics": str(metrics_path),
        "augment_log": str(augment_path) if rec.augment is not None else None,
        "wall_time_s": result.wall_time_s,
        "history": [h.to_json() for h in result.history],
        "environment": environment(),
    }
    atomic_write_text(Path(str(out) + ".json"), json.dumps(sidecar, indent=2))
    return sidecar


_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO})


@contextlib.contextmanager
def _training_stage(checkpoint_dir: Path, model: torch.nn.Module) -> Iterator[None]:
    """:func:`model_stage` for training, and a failed checkpoint write (full disk) as an
    :class:`OutputError` naming the checkpoint folder, the current weights kept elsewhere."""
    try:
        with model_stage("training"):
            yield
    except ModelRuntimeError as exc:
        cause = exc.__cause__
        if not isinstance(cause, OSError) or cause.errno not in _DISK_ERRORS:
            raise
        reason = cause.strerror or str(cause)
        fallback = _fallback_path("interrupted.safetensors")
        try:
            save_weights(model, fallback)
        except OSError:
            raise OutputError("train.checkpoint_dir", checkpoint_dir, reason) from None
        raise OutputError("train.checkpoint_dir", checkpoint_dir, reason, kept=fallback) from None


def load_for_evaluation(
    spec: PipelineSpec,
) -> tuple[
    Dataset | TextDataset, torch.nn.Module | TorchTextClassifier | HFTextClassifier, str, int
]:
    """Data, model with its weights, device, and how many test samples the suite evaluates
    (text: a :class:`TorchTextClassifier` read from its safetensors file, on the CPU)."""
    if spec.evaluation is None:
        raise SpecError.single("evaluation", "the spec has no evaluation section")
    if spec.model.weights is None and spec.model.huggingface is None:
        raise SpecError.single(
            "model.weights", "evaluation needs trained weights (a .safetensors file)"
        )
    _check_code(spec)
    data = load_spec_dataset(spec)
    model: torch.nn.Module | TorchTextClassifier | HFTextClassifier
    if isinstance(data, TextDataset):
        device = "cpu"
        if spec.model.huggingface is not None:  # the fine-tuned folder, else the base model
            field = "model.weights" if spec.model.weights else "model.huggingface.path"
            path = spec.model.weights or spec.model.huggingface.path
            model = _load_hf(spec, path, spec.model.sha256, field)
        else:
            assert spec.model.weights is not None
            model = TorchTextClassifier.load(spec.model.weights, sha256=spec.model.sha256)
        n_test = len(data.texts_test)
    else:
        device = spec.resolved_device()
        with model_stage("building the model"):
            model = _normalized(
                spec,
                build_model(
                    _factory_ref(spec),
                    spec.model.kwargs,
                    spec.model.weights,
                    sha256=spec.model.sha256,
                    device=device,
                ),
            )
        n_test = data.x_test.shape[0]
    n = n_test if spec.evaluation.n_samples is None else min(spec.evaluation.n_samples, n_test)
    return data, model, device, n


def _test_split(data: Dataset | TextDataset) -> tuple[Tensor | list[str], Tensor]:
    """The test inputs (tensor or texts) and labels."""
    if isinstance(data, TextDataset):
        return data.texts_test, data.y_test
    return data.x_test, data.y_test


def _model_info(
    spec: PipelineSpec, model: torch.nn.Module | TorchTextClassifier | HFTextClassifier
) -> dict[str, Any]:
    if isinstance(model, HFTextClassifier):
        return {
            "huggingface": _hf_info(spec),
            "architecture": type(model.module).__name__,
            "class_names": model.class_names,
            "weights": str(model.source),
            "fingerprint": model.fingerprint,
            "state_sha256": state_dict_sha256(model.module),
        }
    assert spec.model.weights is not None
    module = model.module if isinstance(model, TorchTextClassifier) else model
    return {
        "factory": spec.model.factory,
        "kwargs": spec.model.kwargs,
        "weights": str(spec.model.weights),
        "weights_sha256": file_sha256(spec.model.weights),
        "state_sha256": state_dict_sha256(_inner(module)),
        **({"normalize": spec.model.normalize.model_dump()} if spec.model.normalize else {}),
    }


def evaluate_spec(
    spec: PipelineSpec,
    *,
    seed: int | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    tier: str | None = None,
    scale: ScaleOut | None = None,
) -> SuiteResult:
    """Run the spec's evaluation suite on its model and the first ``n_samples`` test samples,
    with the calibration figures (temperature fitted on the test samples after them), and the
    gradient-masking audit and certification when the spec asks for them. ``tier`` is only
    recorded in the result: cut the spec down with :meth:`PipelineSpec.with_tier` first.
    ``scale``: shard the suite across processes or a Ray cluster (tensor models; see
    :mod:`robustops.evaluation.sharding`); under ``torchrun`` (``WORLD_SIZE`` > 1) every rank
    runs its shard, rank 0 merges, and every rank returns the merged result (write it from
    rank 0 only; ``scale`` may then only name a ``shard_dir``); a text spec is refused there, as
    by :func:`train_spec`."""
    if _under_torchrun() and spec.data.modality == "text":
        raise SpecError.single(
            "evaluate",
            "text models are evaluated in one process (every torchrun rank would evaluate every "
            "sample); run robustops evaluate without torchrun",
        )
    if _under_torchrun() and scale is not None and (scale.workers > 1 or scale.ray_address):
        raise SpecError.single(
            "--workers",
            "under torchrun every rank runs one shard (torchrun's --nproc_per_node and --nnodes "
            "set the shards); drop --workers and --ray",
        )
    data, model, device, n = load_for_evaluation(spec)
    return evaluate_loaded(
        spec, data, model, device, n, seed=seed, progress=progress, tier=tier, scale=scale
    )


def evaluate_loaded(
    spec: PipelineSpec,
    data: Dataset | TextDataset,
    model: torch.nn.Module | TorchTextClassifier | HFTextClassifier,
    device: str,
    n: int,
    *,
    seed: int | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    tier: str | None = None,
    scale: ScaleOut | None = None,
) -> SuiteResult:
    """What :func:`evaluate_spec` does once :func:`load_for_evaluation` has returned ``data``,
    ``model``, ``device`` and ``n``: the temperature, the suite, the audits and the
    certification (the arguments as there). Separate so that the cost of loading can be told
    from the cost of the suite (``benchmarks/data_sources.py``)."""
    assert spec.evaluation is not None
    ev = spec.evaluation
    with model_stage("evaluation"):
        run_seed = spec.seed if seed is None else seed
        temperature = fit_spec_temperature(spec, model, data, n, run_seed, device)
        inputs, labels = _test_split(data)
        options = SuiteOptions(
            batch_size=ev.batch_size,
            seed=run_seed,
            device=device,
            calibration=ev.calibration.enabled,
            n_bins=ev.calibration.n_bins,
            eot_samples=ev.eot_samples,
        )
        record = SuiteRecord(
            name=spec.name,
            indices=list(range(n)),
            data_info=data.describe(),
            model_info=_model_info(spec, model),
        )
        threats = spec.build_threats(seed=run_seed)
        sharded = _sharded_suite(spec, model, inputs[:n], labels[:n], threats, options, record)
        result = (
            sharded(scale, temperature)
            if sharded is not None and (scale is not None or _under_torchrun())
            else run_suite(
                model,
                inputs[:n],
                labels[:n],
                threats,
                options,
                record=record,
                progress=progress,
                temperature=temperature,
            )
        )
        audits = _audits(spec, data, model, run_seed, device)
        certification = None
        if ev.certification is not None:
            assert isinstance(data, Dataset) and isinstance(model, torch.nn.Module)  # load_spec
            certification = _certify(spec, model, data, n, run_seed, device)
    return result.model_copy(
        update={
            "audit": audits,
            "certification": certification,
            "catalog_sha256": spec.catalog.content_hash() if spec.catalog else None,
            "tier": tier,
        }
    )


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _sharded_suite(
    spec: PipelineSpec,
    model: torch.nn.Module | TextClassifier,
    inputs: Tensor | list[str],
    labels: Tensor,
    threats: list[SuiteThreat],
    options: SuiteOptions,
    record: SuiteRecord,
) -> Callable[[ScaleOut | None, TemperatureFit | None], SuiteResult] | None:
    """How to run the suite sharded (tensor models: workers rebuild the architecture from the
    spec's factory and load its state dict); ``None`` for text models (they run in one
    process)."""
    if not isinstance(model, torch.nn.Module) or not isinstance(inputs, Tensor):
        return None
    module: torch.nn.Module = model
    norm = spec.model.normalize

    def run(scale: ScaleOut | None, temperature: TemperatureFit | None) -> SuiteResult:
        plan = SuitePlan(
            model_factory=ArchitectureFactory(
                resolve_factory(_factory_ref(spec)),
                dict(spec.model.kwargs),
                str(options.device or "cpu"),
                normalize=(tuple(norm.mean), tuple(norm.std)) if norm is not None else None,
            ),
            state_dict={k: v.detach().cpu() for k, v in module.state_dict().items()},
            inputs=inputs,
            labels=labels,
            threats=threats,
            options=options,
            record=record,
            temperature=temperature,
        )
        if _under_torchrun():  # rank r runs shard r; --shard-dir keeps the shards
            return run_sharded_torchrun(plan, shard_dir=scale.shard_dir if scale else None)
        assert scale is not None
        return run_sharded(
            plan,
            shards=scale.shards or scale.workers,
            executor=scale.executor,
            workers=scale.workers,
            shard_dir=scale.shard_dir,
            ray_address=scale.ray_address,
        )

    return run


def _audits(
    spec: PipelineSpec,
    data: Dataset | TextDataset,
    model: torch.nn.Module | TextClassifier,
    seed: int,
    device: str,
) -> list[AuditResult]:
    """The gradient-masking audits ``evaluation.audit`` asks for, one per audited threat, on the
    first ``audit.n_samples`` test samples (none without an audit section)."""
    assert spec.evaluation is not None
    ev = spec.evaluation
    if ev.audit is None:
        return []
    au = ev.audit
    names = au.threats or [t.name for t in ev.threats]
    assert isinstance(data, Dataset) and isinstance(model, torch.nn.Module)  # load_spec checks
    k = min(au.n_samples, data.x_test.shape[0])
    return [
        audit_gradient_masking(
            model,
            data.x_test[:k],
            data.y_test[:k],
            ts.threat(),
            steps=au.steps,
            square_queries=au.square_queries,
            noise_draws=au.noise_draws,
            eot_samples=au.eot_samples,
            batch_size=ev.batch_size,
            seed=seed,
            device=device,
        )
        for ts in ev.threats
        if ts.name in names
    ]


def certify_spec(spec: PipelineSpec, *, seed: int | None = None) -> SuiteResult:
    """Only the spec's ``evaluation.certification``: randomized-smoothing certificates of its
    model on the first test samples, in a suite result without threats (clean accuracy and
    calibration of the base model included)."""
    data, model, device, n = load_for_evaluation(spec)
    assert spec.evaluation is not None
    if spec.evaluation.certification is None:
        raise SpecError.single(
            "evaluation.certification", "the spec has no certification section (sigma, n, …)"
        )
    run_seed = spec.seed if seed is None else seed
    assert isinstance(data, Dataset) and isinstance(model, torch.nn.Module)  # load_spec checks
    with model_stage("certification"):
        result = run_suite(
            model,
            data.x_test[:n],
            data.y_test[:n],
            [],
            SuiteOptions(
                batch_size=spec.evaluation.batch_size,
                seed=run_seed,
                device=device,
                n_bins=spec.evaluation.calibration.n_bins,
            ),
            record=SuiteRecord(
                name=spec.name,
                indices=list(range(n)),
                data_info=data.describe(),
                model_info=_model_info(spec, model),
            ),
        )
        cert = _certify(spec, model, data, n, run_seed, device)
    return result.model_copy(update={"certification": cert})


def _certify(
    spec: PipelineSpec, model: torch.nn.Module, data: Dataset, n_eval: int, seed: int, device: str
) -> CertificationResult:
    assert spec.evaluation is not None and spec.evaluation.certification is not None
    c = spec.evaluation.certification
    k = min(c.n_samples or n_eval, data.x_test.shape[0])
    try:
        return certify_dataset(
            model,
            data.x_test[:k],
            data.y_test[:k],
            num_classes=data.num_classes,
            sigma=c.sigma,
            n0=c.n0,
            n=c.n,
            alpha=c.alpha,
            batch_size=c.batch_size,
            seed=seed,
            radii=c.radii,
            device=device,
        )
    except SpecError as exc:
        raise SpecError([(f"evaluation.certification.{p}", m) for p, m in exc.errors]) from None


def fit_spec_temperature(
    spec: PipelineSpec,
    model: torch.nn.Module | TextClassifier,
    data: Dataset | TextDataset,
    n_eval: int,
    seed: int,
    device: str,
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
    inputs, labels = _test_split(data)
    available = len(inputs) - n_eval
    want = cal.n_samples if cal.n_samples is not None else available
    if available <= 0 or want > available:
        raise SpecError.single(
            "evaluation.calibration.n_samples",
            f"the temperature is fitted on test samples the suite does not evaluate; "
            f"{max(available, 0)} are left after the {n_eval} evaluated ones (need {want}). "
            "Lower evaluation.n_samples or calibration.n_samples, or set calibration.fit_on: none",
        )
    x = inputs[n_eval : n_eval + want]
    y = labels[n_eval : n_eval + want]
    targets = (
        attack.threat.draw_targets(y, data.num_classes, make_generator(seed))
        if attack is not None
        else None
    )
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


def registration_inputs(
    weights: str | Path, spec: str | Path | None
) -> tuple[dict[str, Any] | None, str | None, ThreatCatalog | None]:
    """What ``robustops registry register`` records besides the weights: the training sidecar
    ``<weights>.json`` when there is one, and the spec's text and threat catalog (the spec is
    validated first; its factories are not imported)."""
    from robustops.config import load_spec
    from robustops.io import read_text_file

    sidecar = None
    side_path = Path(str(weights) + ".json")
    if side_path.is_file():
        try:
            sidecar = json.loads(read_text_file(side_path, "training sidecar"))
        except json.JSONDecodeError as exc:
            raise SpecError.single("weights", f"{side_path} is not JSON: {exc}") from None
        if not isinstance(sidecar, dict):
            raise SpecError.single("weights", f"{side_path} is not a JSON object")
    if spec is None:
        return sidecar, None, None
    parsed = load_spec(spec)
    return sidecar, read_text_file(spec, "spec"), parsed.catalog


def _registry_for(spec: PipelineSpec, home: str | Path | None) -> tuple[Registry, str]:
    """The registry ``home`` (else the spec's ``registry.home``, else the default) and the
    model's name there (the spec's ``registry.model``, else its name)."""
    section = spec.registry
    folder = home if home is not None else (section.home if section else None)
    name = section.model if section and section.model else spec.name
    return Registry.open(folder), name


def register_trained(
    spec: PipelineSpec,
    spec_path: str | Path,
    meta: dict[str, Any],
    *,
    home: str | Path | None = None,
    actor: str | None = None,
) -> str:
    """Register the weights ``train`` just wrote (``meta``: its sidecar) with the spec and its
    catalog; returns the version's ``NAME@N``."""
    from robustops.io import read_text_file

    assert spec.train is not None
    reg, name = _registry_for(spec, home)
    try:
        v = reg.register(
            resolve_actor(actor),
            name,
            spec.train.out,
            expected_sha256=meta.get("sha256"),
            sidecar=meta,
            spec_text=read_text_file(spec_path, "spec"),
            catalog=spec.catalog,
        )
        return label(v)
    finally:
        reg.close()


def attach_result(
    spec: PipelineSpec,
    result_path: str | Path,
    *,
    home: str | Path | None = None,
    actor: str | None = None,
) -> str:
    """Attach a result ``evaluate`` just wrote to the registered version with the weights it
    judged; returns that version's ``NAME@N``."""
    reg, _ = _registry_for(spec, home)
    try:
        e = reg.attach_evaluation(resolve_actor(actor), None, result_path)
        return reg.version_label(e.version_id) or "?"
    finally:
        reg.close()


def replay_attack(
    spec_path: str | Path,
    weights_path: str | Path,
    reproduce: dict[str, Any],
    *,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """Re-run exactly the attack a vulnerability record reproduces (see
    :func:`robustops.registry.vulnerabilities.findings_from_result`): the spec's model with the
    weights ``weights_path``, the spec's data (its fingerprint must be the recorded one), the
    recorded attack built by :func:`robustops.attacks.registry.build_attack` with its recorded
    parameters and threat, run through the suite (so every success is verified against the
    threat, and targets are drawn from the recorded seed as in the original run) on the
    recorded test samples only.

    Returns ``{"attack", "threat", "n_samples", "n_clean_correct", "n_broken",
    "broken_indices", "not_broken_indices", "reproduced"}``: ``reproduced`` is True when the
    attack broke every recorded sample again.
    """
    from robustops.attacks.registry import build_attack
    from robustops.config import load_spec
    from robustops.threats import ThreatModel

    for key in ("attack", "params", "threat", "seed", "indices"):
        if key not in reproduce:
            raise SpecError.single("reproduce", f"the record has no {key!r} to replay")
    if reproduce.get("split", "test") != "test":
        raise SpecError.single("reproduce.split", "only samples of the test split can be replayed")
    spec = load_spec(spec_path)
    weights = Path(weights_path)
    spec = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"weights": weights, "sha256": weights_sha256})
        }
    )
    data, model, device, _ = load_for_evaluation(spec)
    assert spec.evaluation is not None
    recorded = reproduce.get("data_fingerprint")
    if recorded is not None and recorded != data.fingerprint:
        raise SpecError.single(
            "data",
            f"the spec's data has fingerprint {data.fingerprint[:12]}…, the vulnerability was "
            f"found on {str(recorded)[:12]}…; give the spec it was evaluated with (--spec)",
        )
    inputs, labels = _test_split(data)
    indices = [int(i) for i in reproduce["indices"]]
    bad = [i for i in indices if not 0 <= i < labels.shape[0]]
    if bad:
        raise SpecError.single(
            "reproduce.indices", f"{bad[:5]} are not test samples (the split has {labels.shape[0]})"
        )
    threat = ThreatModel.model_validate(reproduce["threat"])
    attack = build_attack(str(reproduce["attack"]), threat, **dict(reproduce["params"]))
    chosen: Tensor | list[str]
    if isinstance(inputs, Tensor):
        chosen = inputs[torch.tensor(indices, dtype=torch.long)] if indices else inputs[:0]
    else:
        chosen = [inputs[i] for i in indices]
    chosen_labels = labels[torch.tensor(indices, dtype=torch.long)] if indices else labels[:0]
    options = SuiteOptions(
        batch_size=spec.evaluation.batch_size,
        seed=int(reproduce["seed"]),
        device=device,
        calibration=False,
        latency_calls=0,
        n_examples=0,
        eot_samples=spec.evaluation.eot_samples,
    )
    suite_threat = SuiteThreat(threat, [attack], independent=reproduce.get("independent"))
    with model_stage("replay"):
        result = run_suite(
            model,
            chosen,
            chosen_labels,
            [suite_threat],
            options,
            record=SuiteRecord(name="replay", indices=indices),
        )
    t = result.threats[0]
    broken = [indices[p] for p, b in enumerate(t.broken_by) if b is not None]
    kept = [indices[p] for p, b in enumerate(t.broken_by) if b is None]
    return {
        "attack": attack.name,
        "threat": threat.name,
        "n_samples": len(indices),
        "n_clean_correct": sum(result.samples.clean_correct),
        "n_broken": len(broken),
        "broken_indices": broken,
        "not_broken_indices": kept,
        "reproduced": bool(indices) and len(broken) == len(indices),
    }
