"""Defenses: temperature calibration, randomized smoothing, attack-in-progress detection, and
OOD scores with conformal abstention."""

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
    DetectionPolicy,
    DetectorConfig,
    Fingerprinter,
    QueryDecision,
    QueryDetector,
)
from robustops.defenses.ood import (
    AbstainDecision,
    AbstainDecisionBatch,
    Abstainer,
    ConformalThreshold,
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
    "ACTIONS",
    "AbstainDecision",
    "AbstainDecisionBatch",
    "Abstainer",
    "Action",
    "CertificationResult",
    "ConformalThreshold",
    "DetectionPolicy",
    "DetectorConfig",
    "Fingerprinter",
    "FitOn",
    "MahalanobisFit",
    "OODDetector",
    "OODScoreName",
    "QueryDecision",
    "QueryDetector",
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
