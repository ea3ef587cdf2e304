"""The evaluation suite and its versioned result schema."""

from robustops.evaluation.certification import CertificationResult
from robustops.evaluation.masking import AuditCheck, AuditResult, audit_gradient_masking
from robustops.evaluation.result import (
    SCHEMA_VERSION,
    AdversarialExample,
    AttackFigures,
    ExampleEdit,
    LatencyFigures,
    SamplesRecord,
    StochasticRecord,
    SuiteCalibration,
    SuiteResult,
    ThreatCalibration,
    ThreatResult,
)
from robustops.evaluation.suite import (
    ProgressEvent,
    SuiteOptions,
    SuiteRecord,
    SuiteThreat,
    run_suite,
    verify,
)

__all__ = [
    "SCHEMA_VERSION",
    "AdversarialExample",
    "AttackFigures",
    "AuditCheck",
    "AuditResult",
    "CertificationResult",
    "ExampleEdit",
    "LatencyFigures",
    "ProgressEvent",
    "SamplesRecord",
    "StochasticRecord",
    "SuiteCalibration",
    "SuiteOptions",
    "SuiteRecord",
    "SuiteResult",
    "SuiteThreat",
    "ThreatCalibration",
    "ThreatResult",
    "audit_gradient_masking",
    "run_suite",
    "verify",
]
