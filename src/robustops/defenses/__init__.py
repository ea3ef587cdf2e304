"""Defenses: temperature calibration, randomized smoothing, and OOD scores with conformal
abstention."""

from robustops.defenses.calibration import (
    FitOn,
    TemperatureFit,
    TemperatureScaled,
    fit_temperature,
    fit_temperature_on,
)
from robustops.defenses.ood import (
    Abstainer,
    ConformalThreshold,
    Decision,
    DecisionBatch,
    MahalanobisFit,
    OODDetector,
    OODScoreName,
    conformal_threshold,
    energy_score,
    fit_mahalanobis,
    min_calibration_size,
    msp_score,
    ood_auroc,
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
    "Abstainer",
    "CertificationResult",
    "ConformalThreshold",
    "Decision",
    "DecisionBatch",
    "FitOn",
    "MahalanobisFit",
    "OODDetector",
    "OODScoreName",
    "SmoothedClassifier",
    "TemperatureFit",
    "TemperatureScaled",
    "certify_dataset",
    "conformal_threshold",
    "energy_score",
    "fit_mahalanobis",
    "fit_temperature",
    "fit_temperature_on",
    "min_calibration_size",
    "msp_score",
    "ood_auroc",
    "plot_certified_accuracy",
]
