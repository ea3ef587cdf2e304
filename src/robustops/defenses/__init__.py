"""Defenses: temperature calibration, randomized smoothing and attack-in-progress detection."""

from robustops.defenses.calibration import (
    FitOn,
    TemperatureFit,
    TemperatureScaled,
    fit_temperature,
    fit_temperature_on,
)
from robustops.defenses.detection import (
    ACTIONS,
    Action,
    Decision,
    DetectionPolicy,
    DetectorConfig,
    Fingerprinter,
    QueryDetector,
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
    "ACTIONS",
    "Action",
    "CertificationResult",
    "Decision",
    "DetectionPolicy",
    "DetectorConfig",
    "Fingerprinter",
    "FitOn",
    "QueryDetector",
    "SmoothedClassifier",
    "TemperatureFit",
    "TemperatureScaled",
    "certify_dataset",
    "fit_temperature",
    "fit_temperature_on",
    "plot_certified_accuracy",
]
