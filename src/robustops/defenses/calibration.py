"""Temperature scaling as a defense (Guo et al. 2017): :class:`TemperatureScaled` divides a
model's logits by one scalar ``T``, and :func:`fit_temperature_on` fits ``T`` on held-out clean,
adversarial (made here by an attack) or mixed inputs.

Fitting on adversarial (or mixed clean + adversarial) held-out inputs keeps confidence honest
under attack too: a model fitted on clean data alone tends to stay confident on the inputs an
attacker crafted. The calibration math itself (ECE, Brier, NLL, reliability bins, the fit of
``T`` on logits) lives in :mod:`robustops.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from robustops.attacks import Attack
from robustops.evaluation.metrics import (
    FitOn,
    TemperatureFit,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from robustops.models.classifier import eval_mode, predict_logits, resolve_device
from robustops.text.models import TextClassifier, predict_text_logits

__all__ = ["FitOn", "TemperatureFit", "TemperatureScaled", "fit_temperature", "fit_temperature_on"]


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: same predictions, recalibrated confidence.

    ``temperature`` is a buffer, so it is saved with the weights (safetensors) and moves with
    ``.to(device)``.
    """

    temperature: Tensor

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: Tensor) -> Tensor:
        """Scaled logits ``(N, K)``."""
        out: Tensor = self.model(x) / self.temperature
        return out


def fit_temperature_on(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
    labels: Tensor,
    *,
    fit_on: FitOn = "mix",
    attack: Attack | None = None,
    targets: Tensor | None = None,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> TemperatureFit:
    """Fit a temperature for ``model`` on held-out ``inputs`` / ``labels`` ``(N,)``: tensors
    ``(N, ...)`` with an ``nn.Module``, or texts with a text classifier and a text attack.

    Args:
        fit_on: ``"clean"`` (the inputs), ``"adversarial"`` (``attack``'s outputs on them) or
            ``"mix"`` (both, concatenated).
        attack: needed unless ``fit_on="clean"``; run against the uncalibrated model.
        targets: ``(N,)`` target classes when the attack's threat is targeted.

    A module is evaluated with every submodule in eval mode; each submodule's mode is restored
    afterwards.
    """
    if fit_on != "clean" and attack is None:
        raise ValueError(f"fit_on={fit_on!r} needs an attack to make adversarial inputs")
    with eval_mode(model):
        parts: list[Tensor] = []
        n_clean = n_adv = 0
        if fit_on in ("clean", "mix"):
            parts.append(_logits(model, inputs, batch_size, device))
            n_clean = len(inputs)
        if fit_on in ("adversarial", "mix") and attack is not None:
            adv = _adversarial(model, attack, inputs, labels, targets, batch_size, device)
            parts.append(_logits(model, adv, batch_size, device))
            n_adv = len(inputs)
    logits = torch.cat(parts)
    y = labels.cpu().repeat(len(parts))
    temperature = fit_temperature(logits, y)
    return TemperatureFit(
        temperature=temperature,
        fit_on=fit_on,
        n_clean=n_clean,
        n_adversarial=n_adv,
        attack=attack.name if attack is not None and n_adv else None,
        attack_params=attack.params() if attack is not None and n_adv else None,
        threat=attack.threat.name if attack is not None and n_adv else None,
        nll_before=negative_log_likelihood(logits, y),
        nll_after=negative_log_likelihood(logits / temperature, y),
        ece_before=expected_calibration_error(logits, y),
        ece_after=expected_calibration_error(logits / temperature, y),
    )


def _logits(
    model: nn.Module | TextClassifier,
    inputs: Tensor | Sequence[str],
    batch_size: int,
    device: str | torch.device | None,
) -> Tensor:
    """``(N, K)`` CPU logits of tensors (an ``nn.Module``) or texts (a text classifier)."""
    if isinstance(inputs, Tensor):
        assert isinstance(model, nn.Module)
        return predict_logits(model, inputs, batch_size, device)
    assert not isinstance(model, nn.Module)
    return predict_text_logits(model, inputs, batch_size)


def _adversarial(
    model: nn.Module | TextClassifier,
    attack: Attack,
    inputs: Tensor | Sequence[str],
    labels: Tensor,
    targets: Tensor | None,
    batch_size: int,
    device: str | torch.device | None,
) -> Tensor | list[str]:
    """``attack``'s outputs on ``inputs``, batch by batch (tensors back on the CPU)."""
    if attack.threat.modality == "text":
        if isinstance(inputs, Tensor) or isinstance(model, nn.Module):
            raise TypeError(f"text attack {attack.name!r} needs texts and a text classifier")
        texts: list[str] = attack(model, inputs, labels.cpu(), targets=targets).adversarial
        return texts
    if not isinstance(inputs, Tensor) or not isinstance(model, nn.Module):
        raise TypeError(f"attack {attack.name!r} needs tensor inputs and an nn.Module")
    dev = resolve_device(model, device)
    advs = []
    for i in range(0, inputs.shape[0], batch_size):
        t = targets[i : i + batch_size].to(dev) if targets is not None else None
        res = attack(
            model,
            inputs[i : i + batch_size].to(dev),
            labels[i : i + batch_size].to(dev),
            targets=t,
        )
        advs.append(res.adversarial.cpu())
    return torch.cat(advs)
