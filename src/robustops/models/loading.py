"""Bring your own model: ``module:factory`` plus a safetensors weights file. Pickle is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustops._util import file_sha256, state_dict_sha256
from robustops.errors import SpecError, UnsafeArtifactError
from robustops.io import save_safetensors
from robustops.trust import resolve_callable

__all__ = ["build_model", "load_weights", "model_sha256", "resolve_factory", "save_weights"]

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length then a JSON object."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return False
        n = int.from_bytes(raw, "little")
        if n < 2 or n > path.stat().st_size - 8:
            return False
        header = fh.read(n)
    try:
        return isinstance(json.loads(header), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def _starts_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4).startswith(_PICKLE_MAGIC)


def resolve_factory(ref: str, field: str = "model.factory") -> Any:
    """Import ``"package.module:callable"`` and return the callable, if the trust policy allows
    it (see :mod:`robustops.trust`: RobustOps' built-in factories always; other modules only
    when the user trusts them outside the spec, checked before importing them)."""
    return resolve_callable(ref, field)


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Write ``model``'s state dict as safetensors (``metadata`` JSON-encoded into the header);
    returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"robustops": json.dumps(metadata or {}, sort_keys=True)}
    save_safetensors(tensors, path, metadata=meta)
    return file_sha256(path)


def load_weights(
    model: nn.Module, path: str | Path, *, sha256: str | None = None, field: str = "model.weights"
) -> nn.Module:
    """Load a safetensors file into ``model`` (strict key match).

    Raises :class:`UnsafeArtifactError` for a pickle-based file or a sha256 mismatch, and
    :class:`SpecError` naming ``field`` for a missing file or mismatched keys/shapes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SpecError.single(field, f"weights file not found: {path}")
    if not _looks_like_safetensors(path) and _starts_like_pickle(path):
        raise UnsafeArtifactError(
            f"{field}: {path} is a pickle-based checkpoint; RobustOps loads safetensors only "
            "(convert it once with safetensors.torch.save_file in a trusted environment)"
        )
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            raise UnsafeArtifactError(f"{field}: sha256 of {path} is {got}, expected {sha256}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeArtifactError(
            f"{field}: {path} is not a valid safetensors file ({exc})"
        ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SpecError.single(field, f"weights do not fit the model: {exc}") from None
    return model


def build_model(
    factory: str,
    kwargs: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    *,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Call ``factory(**kwargs)``, load ``weights`` (safetensors) if given, move to ``device``
    and switch to eval mode."""
    fn = resolve_factory(factory)
    try:
        model = fn(**(kwargs or {}))
    except TypeError as exc:
        raise SpecError.single("model.kwargs", f"{factory} rejected its arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SpecError.single(
            "model.factory", f"{factory} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if weights is not None:
        load_weights(model, weights, sha256=sha256)
    return model.to(device).eval()


def model_sha256(model: nn.Module) -> str:
    """Content hash of a model's weights (see :func:`robustops._util.state_dict_sha256`)."""
    return state_dict_sha256(model)
