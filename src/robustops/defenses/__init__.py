"""Defenses: temperature calibration and randomized smoothing."""

from robustops.defenses.calibration import (
    FitOn,
    TemperatureFit,
    TemperatureScaled,
    fit_temperature,
    fit_temperature_on,
)
from robustops.defenses.smoothing import (
    ABSTAIN,
    CertificationResult,
    SmoothedClassifier,
    certify_dataset,
    plot_certified_accuracy,
)

__all__ = [
    "ABSTAIN",
    "CertificationResult",
    "FitOn",
    "SmoothedClassifier",
    "TemperatureFit",
    "TemperatureScaled",
    "certify_dataset",
    "fit_temperature",
    "fit_temperature_on",
    "plot_certified_accuracy",
]
