"""The attack contract: configured once, called as ``attack(model, inputs, labels)``.

An attack holds its threat and hyper-parameters only; each call is independent and
deterministic (its random generator is re-seeded from ``seed`` on every call).
Attacks work in the model's input space; bounds come from the threat.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustops._util import make_generator
from robustops.errors import SpecError
from robustops.threats import Knowledge, ThreatModel

__all__ = [
    "Attack",
    "AttackResult",
    "ModelFn",
    "frozen_parameters",
    "is_adversarial",
    "perturbation_norm",
    "project",
    "random_start",
]

ModelFn = Callable[[Tensor], Tensor]
"""A model: maps inputs ``(N, ...)`` to logits (or log-probabilities) ``(N, K)``."""

_KNOWLEDGE_RANK: dict[str, int] = {"decision-based": 0, "score-based": 1, "white-box": 2}


@dataclass(frozen=True)
class AttackResult:
    """What one attack call produced, one entry per input sample.

    Attributes:
        adversarial: ``(N, ...)`` adversarial inputs, same shape, dtype and device as the inputs;
            each inside the threat's epsilon ball around its input and inside its bounds.
        success: ``(N,)`` bool; verified by re-predicting ``adversarial`` (untargeted: the
            prediction differs from the label; targeted: it equals the target).
        queries: ``(N,)`` int64; model evaluations spent on each sample (a forward+backward
            pass counts as one), excluding the final verification pass.
        perturbation: ``(N,)`` float; ``||adversarial - input||`` in the threat's norm.
        predictions: ``(N,)`` int64; the model's label for each adversarial input.
    """

    adversarial: Tensor
    success: Tensor
    queries: Tensor
    perturbation: Tensor
    predictions: Tensor

    def __len__(self) -> int:
        return int(self.success.shape[0])


def perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of ``delta`` ``(N, ...)``: ``(N,)`` float."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def _eps_as(eps: float | Tensor, ref: Tensor) -> Tensor:
    """Epsilon as a tensor broadcastable against ``ref`` ``(N, ...)``."""
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    return e.view(-1, *([1] * (ref.dim() - 1))) if e.dim() == 1 else e


def project(x_adv: Tensor, x: Tensor, threat: ThreatModel, eps: float | Tensor | None = None) -> Tensor:
    """Project ``x_adv`` onto the threat's ball around ``x`` intersected with its bounds.

    Exact in the input's floating-point type: afterwards ``perturbation_norm(result - x)`` is
    ``<= eps`` when evaluated in that type and every entry lies in ``threat.bounds``.
    ``eps`` overrides ``threat.epsilon`` (a float or an ``(N,)`` tensor of per-sample radii).
    """
    low, high = threat.bounds
    radius = threat.epsilon if eps is None else eps
    e = _eps_as(radius, x)
    if threat.norm == "linf":
        out = torch.minimum(torch.maximum(x_adv, x - e), x + e).clamp_(low, high)
        # x + e is rounded; nudge the few entries it pushed one ulp outside the ball back in.
        for _ in range(4):
            over = (out - x).abs() > e
            if not bool(over.any()):
                break
            out = torch.where(over, torch.nextafter(out, x), out)
        return out
    delta = x_adv - x
    n = x.shape[0]
    e_flat = e.reshape(-1) if e.dim() else e.expand(n)
    if e_flat.numel() == 1:
        e_flat = e_flat.expand(n)
    for _ in range(8):
        norms = delta.flatten(1).norm(p=2, dim=1)
        factor = torch.where(
            norms > e_flat, e_flat / norms.clamp_min(1e-30) * (1.0 - 1e-6), torch.ones_like(norms)
        )
        delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
        out = (x + delta).clamp_(low, high)
        delta = out - x
        if bool((delta.flatten(1).norm(p=2, dim=1) <= e_flat).all()):
            return out
        delta = delta * (1.0 - 1e-5)
    return (x + delta).clamp_(low, high)


def random_start(x: Tensor, threat: ThreatModel, gen: torch.Generator, scale: float = 1.0) -> Tensor:
    """A random point of the ball of radius ``scale * epsilon`` around ``x``, projected.

    L∞: uniform in the cube. L2: uniform direction, radius ``eps * u**(1/d)`` (uniform in the ball).
    """
    eps = threat.epsilon * scale
    if threat.norm == "linf":
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        return project(x + eps * noise, x, threat)
    direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    d = x[0].numel()
    radius = eps * torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return project(x + radius.view(-1, *([1] * (x.dim() - 1))) * direction, x, threat)


def is_adversarial(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """``(N,)`` bool: untargeted, the prediction differs from ``labels``; targeted, equals ``targets``."""
    pred = logits.argmax(dim=1)
    return pred == targets if targets is not None else pred != labels


@contextlib.contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
    """Temporarily stop gradients to a module's parameters (attacks need input gradients only)."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Attack(ABC):
    """Base of every attack. Subclasses set ``name`` and ``knowledge`` and implement ``_run``.

    Args:
        threat: the budget and goal (norm, epsilon, bounds, targeted, query budget).
        seed: seeds the attack's generator, re-created on each call so calls are reproducible.
    """

    name: ClassVar[str] = ""
    knowledge: ClassVar[Knowledge] = "white-box"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(self, threat: ThreatModel, *, seed: int = 0) -> None:
        if not isinstance(threat, ThreatModel):
            raise SpecError.single("threat", f"expected a ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise SpecError.single(
                "threat.norm", f"attack {self.name!r} supports norms {list(self.norms)}, not {threat.norm!r}"
            )
        if _KNOWLEDGE_RANK[self.knowledge] > _KNOWLEDGE_RANK[threat.knowledge]:
            raise SpecError.single(
                "threat.knowledge",
                f"attack {self.name!r} needs {self.knowledge} access but the threat grants {threat.knowledge}",
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise SpecError.single("seed", f"must be an int, got {seed!r}")
        self.threat = threat
        self.seed = seed

    @staticmethod
    def _check_positive(name: str, value: float, *, integer: bool = False, allow_zero: bool = False) -> None:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
            kind = "int" if integer else "number"
            bound = ">= 0" if allow_zero else "> 0"
            raise SpecError.single(name, f"must be a {kind} {bound}, got {value!r}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as stored at construction (for results and reports)."""
        return {k: v for k, v in vars(self).items() if k != "threat" and not k.endswith("_")}

    def __call__(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, *, targets: Tensor | None = None
    ) -> AttackResult:
        """Attack ``inputs`` ``(N, ...)`` (inside the threat's bounds) with true ``labels`` ``(N,)``.

        ``targets`` ``(N,)`` is required when the threat is targeted and refused otherwise.
        The model's train/eval mode is left as the caller set it.
        """
        x, y, t = self._check_call(model, inputs, labels, targets)
        gen = make_generator(self.seed, device=x.device)
        with frozen_parameters(model):
            adv, queries = self._run(model, x, y, t, gen)
            adv = project(adv.detach(), x, self.threat)
            with torch.no_grad():
                logits = model(adv)
        return AttackResult(
            adversarial=adv,
            success=is_adversarial(logits, y, t),
            queries=queries.to(torch.int64),
            perturbation=perturbation_norm(adv - x, self.threat.norm),
            predictions=logits.argmax(dim=1),
        )

    def _check_call(
        self, model: ModelFn, inputs: Tensor, labels: Tensor, targets: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if not callable(model):
            raise SpecError.single("model", "must be callable (a torch.nn.Module returning logits)")
        if self.knowledge == "white-box" and getattr(model, "differentiable", True) is False:
            raise SpecError.single("model", f"attack {self.name!r} needs gradients; this model has none")
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
            raise SpecError.single("inputs", "must be a floating-point tensor of shape (N, ...)")
        if not isinstance(labels, Tensor) or labels.shape != inputs.shape[:1]:
            raise SpecError.single("labels", f"must be a tensor of shape ({inputs.shape[0]},)")
        low, high = self.threat.bounds
        if inputs.numel() and (float(inputs.min()) < low or float(inputs.max()) > high):
            raise SpecError.single("inputs", f"values must lie in the threat bounds {self.threat.bounds}")
        if self.threat.targeted:
            if targets is None or not isinstance(targets, Tensor) or targets.shape != labels.shape:
                raise SpecError.single("targets", "a targeted threat needs targets of the labels' shape")
            targets = targets.to(device=inputs.device, dtype=torch.int64)
        elif targets is not None:
            raise SpecError.single("targets", "given, but the threat is untargeted")
        return inputs.detach(), labels.to(device=inputs.device, dtype=torch.int64), targets

    @abstractmethod
    def _run(
        self, model: ModelFn, x: Tensor, y: Tensor, targets: Tensor | None, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return adversarial inputs ``(N, ...)`` and queries per sample ``(N,)``."""
