"""The evaluation suite and its versioned result schema."""

from robustops.evaluation.result import (
    SCHEMA_VERSION,
    AttackFigures,
    SamplesRecord,
    SuiteCalibration,
    SuiteResult,
    ThreatCalibration,
    ThreatResult,
)
from robustops.evaluation.suite import ProgressEvent, SuiteThreat, run_suite

__all__ = [
    "SCHEMA_VERSION",
    "AttackFigures",
    "ProgressEvent",
    "SamplesRecord",
    "SuiteCalibration",
    "SuiteResult",
    "SuiteThreat",
    "ThreatCalibration",
    "ThreatResult",
    "run_suite",
]
