"""Training checkpoints: safetensors for the model, the optimizer state and the random-number
generators, plus a JSON sidecar. Nothing is pickled and nothing pickled is ever loaded.

Layout of one checkpoint ``<dir>/epoch-0003``:

* ``epoch-0003.safetensors``: tensors ``model.<key>`` (the state dict), ``optim.<index>.<key>``
  (per-parameter optimizer state, e.g. Adam's ``exp_avg``), ``rng.<name>`` (generator states as
  uint8 tensors);
* ``epoch-0003.json``: format, recipe, seed, epoch, data fingerprint, the sha256 of the
  safetensors file, the optimizer's hyper-parameters and scalar state, the trainer's state
  (curriculum, guard, best epoch, history), the environment.

The sidecar is written last (atomically), so a run killed mid-write leaves the previous
checkpoint as the newest complete one. Loading checks the sha256 first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustops._util import environment, file_sha256
from robustops.errors import UnsafeArtifactError
from robustops.io import atomic_write_text, save_safetensors

__all__ = [
    "CHECKPOINT_FORMAT",
    "latest_checkpoint",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "read_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "robustops-train-checkpoint/1"
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.json$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (``optim.<i>.<key>``) and a JSON-ready rest
    (``param_groups`` and non-tensor per-parameter values)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Load what :func:`optimizer_to_tensors` produced back into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        group = dict(g)
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    opt.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint(
    directory: Path,
    stem: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rng: dict[str, Tensor],
    sidecar: dict[str, Any],
) -> dict[str, Any]:
    """Write ``<directory>/<stem>.safetensors`` and ``<stem>.json``; return the sidecar as written
    (with ``format``, ``weights``, ``sha256`` and ``environment`` added)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.{k}": v.detach().to("cpu").contiguous().clone()
        for k, v in model.state_dict().items()
    }
    optim_meta: dict[str, Any] | None = None
    if optimizer is not None:
        opt_tensors, optim_meta = optimizer_to_tensors(optimizer)
        tensors.update(opt_tensors)
    for name, state in rng.items():
        tensors[f"rng.{name}"] = state.detach().to("cpu", torch.uint8).contiguous().clone()
    weights = directory / f"{stem}.safetensors"
    save_safetensors(tensors, weights, metadata={"format": CHECKPOINT_FORMAT})
    full = {
        "format": CHECKPOINT_FORMAT,
        **sidecar,
        "weights": weights.name,
        "sha256": file_sha256(weights),
        "optimizer": optim_meta,
        "environment": environment(),
    }
    side = directory / f"{stem}.json"
    atomic_write_text(side, json.dumps(full, indent=1, sort_keys=True))
    return full


def read_checkpoint(sidecar_path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a checkpoint's sidecar and tensors after checking the sha256 of the weights file.

    Raises :class:`UnsafeArtifactError` for a missing, altered or non-safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsafeArtifactError(f"checkpoint sidecar {sidecar_path} unreadable: {exc}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UnsafeArtifactError(
            f"{sidecar_path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    weights = sidecar_path.parent / str(meta.get("weights", ""))
    if not weights.is_file():
        raise UnsafeArtifactError(f"{sidecar_path}: weights file {weights} is missing")
    got = file_sha256(weights)
    if got != meta.get("sha256"):
        raise UnsafeArtifactError(
            f"{weights}: sha256 {got} does not match the sidecar's {meta.get('sha256')}"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeArtifactError(f"{weights} is not a valid safetensors file ({exc})") from None
    return meta, tensors


def model_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``model.`` entries of a checkpoint's tensors, as a state dict."""
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def latest_checkpoint(directory: Path) -> Path | None:
    """The sidecar of the newest complete epoch checkpoint in ``directory``, if any.

    A checkpoint is complete when its sidecar exists and names an existing weights file (the
    sha256 is checked on reading).
    """
    if not directory.is_dir():
        return None
    found = []
    for p in directory.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m and (directory / f"epoch-{m.group(1)}.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def epoch_stem(epoch: int) -> str:
    """File stem of the checkpoint taken after ``epoch`` (1-based) epochs."""
    return f"epoch-{epoch:04d}"


def prune(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest epoch checkpoints."""
    found = sorted(
        (int(m.group(1)), m.group(1))
        for p in directory.iterdir()
        if (m := _EPOCH_FILE.match(p.name))
    )
    for _, num in found[: max(0, len(found) - keep)]:
        for suffix in (".json", ".safetensors"):
            (directory / f"epoch-{num}{suffix}").unlink(missing_ok=True)
