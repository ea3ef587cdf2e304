"""Defenses: temperature calibration and randomized smoothing."""

from robustops.defenses.calibration import (
    FitOn,
    TemperatureFit,
    TemperatureScaled,
    fit_temperature,
    fit_temperature_on,
)

__all__ = [
    "FitOn",
    "TemperatureFit",
    "TemperatureScaled",
    "fit_temperature",
    "fit_temperature_on",
]
