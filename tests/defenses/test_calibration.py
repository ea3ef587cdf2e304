"""Temperature scaling: recovers a known temperature, lowers held-out NLL, keeps predictions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustops import ThreatModel
from robustops.attacks import build_attack
from robustops.data import Dataset
from robustops.defenses import TemperatureScaled, fit_temperature_on
from robustops.evaluation.metrics import fit_temperature, negative_log_likelihood
from robustops.models import SmallCNN, load_weights, predict_logits, save_weights, small_cnn


class _Scaled(nn.Module):
    """An overconfident copy of a model: logits multiplied by ``factor``."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x) * self.factor
        return out


def test_fit_recovers_a_known_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=gen, dtype=torch.float64) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=gen).squeeze(1)  # calibrated at T=1
    assert fit_temperature(z * 3.0, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(z / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_temperature_lowers_nll_on_held_out_data(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    overconfident = _Scaled(trained_cnn, 5.0).eval()
    fit_x, fit_y = mnist.x_test[500:1000], mnist.y_test[500:1000]
    test_x, test_y = mnist.x_test[:500], mnist.y_test[:500]
    fit = fit_temperature_on(overconfident, fit_x, fit_y, fit_on="clean")
    assert fit.n_clean == 500 and fit.n_adversarial == 0 and fit.attack is None
    assert 2.0 < fit.temperature < 12.0
    assert fit.nll_after < fit.nll_before
    logits = predict_logits(overconfident, test_x)
    before = negative_log_likelihood(logits, test_y)
    after = negative_log_likelihood(logits / fit.temperature, test_y)
    assert after < 0.8 * before, (before, after)


def test_fitting_on_adversarial_inputs_softens_more(trained_cnn: SmallCNN, mnist: Dataset) -> None:
    x, y = mnist.x_test[500:700], mnist.y_test[500:700]
    threat = ThreatModel(name="linf-0.1", norm="linf", epsilon=0.1)
    pgd = build_attack("pgd", threat, steps=10, seed=0)
    clean = fit_temperature_on(trained_cnn, x, y, fit_on="clean")
    mix = fit_temperature_on(trained_cnn, x, y, fit_on="mix", attack=pgd)
    adv = fit_temperature_on(trained_cnn, x, y, fit_on="adversarial", attack=pgd)
    assert mix.n_clean == 200 and mix.n_adversarial == 200
    assert mix.attack == "pgd" and mix.threat == "linf-0.1"
    # Attacked inputs are confidently wrong: a higher temperature fits them.
    assert clean.temperature < mix.temperature < adv.temperature
    with pytest.raises(ValueError, match="needs an attack"):
        fit_temperature_on(trained_cnn, x, y, fit_on="mix")


def test_temperature_scaled_keeps_predictions_and_saves(
    trained_cnn: SmallCNN, mnist: Dataset, tmp_path
) -> None:
    scaled = TemperatureScaled(trained_cnn, 2.5).eval()
    x = mnist.x_test[:100]
    with torch.no_grad():
        assert torch.equal(scaled(x).argmax(1), trained_cnn(x).argmax(1))
        assert torch.allclose(scaled(x) * 2.5, trained_cnn(x), atol=1e-5)
    path = tmp_path / "scaled.safetensors"
    save_weights(scaled, path)
    fresh = TemperatureScaled(small_cnn(seed=1), 1.0)
    load_weights(fresh, path)
    assert float(fresh.temperature) == 2.5
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaled(trained_cnn, 0.0)
