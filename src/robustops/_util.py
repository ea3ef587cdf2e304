"""Small private helpers shared across subpackages: hashing, seeding, environment."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

import torch

__all__ = [
    "cpu_model",
    "digest_seed",
    "environment",
    "file_sha256",
    "make_generator",
    "state_dict_sha256",
]


def make_generator(
    seed: int | torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` on ``device``: ``seed`` may be an int, a generator (returned as is) or
    ``None`` (seed 0, so nothing is ever silently non-deterministic)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def digest_seed(digest: bytes) -> int:
    """A generator seed (a non-negative int64) from the first 8 bytes of a hash ``digest``: how
    per-sample randomness is keyed (by content in the attacks, by split index for targets)."""
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(names: Iterable[str], get: Callable[[str], torch.Tensor]) -> str:
    """Hex sha256 of named tensors (names, dtypes, shapes and values), in name order; ``get``
    returns one tensor by name, so a file's tensors can be read one at a time."""
    h = hashlib.sha256()
    for name in sorted(names):
        t = get(name).detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 of a module's parameters and buffers (see :func:`tensors_sha256`);
    independent of the file format they were loaded from."""
    state = module.state_dict()
    return tensors_sha256(state, state.__getitem__)


_TRACKED = (
    "robustops",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "mlxtend",
    "safetensors",
    "pydantic",
)


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Versions of Python, the platform and the packages a result depends on, and the CPU."""
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
    }
    for pkg in _TRACKED:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    env["torch_threads"] = str(torch.get_num_threads())
    return env
